"""`python -m casd.predict` and `casd.load(path).predict(...)`: per-sample outputs of a checkpoint, its
compatibility checks and conditions."""
import csv
import json
import pickle

import numpy as np
import pytest
import torch

import casd
from casd.data import SyntheticConfig, generate_synthetic
from casd.errors import CheckpointError, ConfigError, DataError
from casd.inference import TrainedModel
from casd.modalities import COMBINATION_NAMES
from casd.predict import main as predict
from casd.predictions import read_predictions
from casd.train import main as train

TINY = ["--synthetic-samples", "96", "48", "64", "--epochs", "2", "--hidden", "16", "--heads", "2",
        "--embed-dim", "8", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    assert train([*TINY, "--out", str(root / "casd")]) == 0
    assert train([*TINY, "--out", str(root / "late_fusion"), "--model", "late_fusion"]) == 0
    return root


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("condition", ["frame_0.5", "modality_ta"])
def test_predictions_reproduce_the_training_runs_test_outputs(runs, tmp_path, condition):
    out = tmp_path / "p.csv"
    assert predict(["--checkpoint", str(runs / "casd" / "best.pt"), "--synthetic", "--condition", condition,
                    "--out", str(out)]) == 0
    rows = read_csv(out)
    saved = read_predictions(runs / "casd" / "predictions.npz")
    assert [r["id"] for r in rows] == saved["ids"].tolist()
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], saved[f"{condition}/output"], rtol=1e-6)
    np.testing.assert_allclose([float(r["uncertainty"]) for r in rows], saved[f"{condition}/uncertainty"], rtol=1e-6)
    weights = np.array([[float(r[f"weight_{c}"]) for c in COMBINATION_NAMES] for r in rows])
    np.testing.assert_allclose(weights, saved[f"{condition}/weights"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose([float(r["label"]) for r in rows], saved["labels"], rtol=1e-6)
    if condition == "modality_ta":  # only {t}, {a}, {t,a} are available
        assert weights[:, [2, 4, 5, 6]].max() == 0 and weights[:, [0, 1, 3]].min() > 0


def test_json_output_records_the_training_setup_and_metrics(runs, tmp_path):
    out = tmp_path / "p.json"
    assert predict(["--checkpoint", str(runs / "casd" / "last.pt"), "--synthetic", "--split", "valid",
                    "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["trained_on"] == {"source": "synthetic(seed=0)", "dataset": "mosi", "task": "regression",
                                    "feature_dims": [64, 16, 24], "missing_protocol": "mixed", "missing_rate": 0.9}
    assert report["condition"] == "none" and len(report["predictions"]) == 48
    predictions = np.array([p["prediction"] for p in report["predictions"]])
    labels = np.array([p["label"] for p in report["predictions"]])
    assert report["metrics"]["MAE"] == pytest.approx(np.abs(predictions - labels).mean(), rel=1e-5)


def test_late_fusion_checkpoint_has_no_uncertainty_and_one_used_combination(runs, tmp_path):
    out = tmp_path / "p.json"
    assert predict(["--checkpoint", str(runs / "late_fusion" / "best.pt"), "--synthetic",
                    "--condition", "modality_av", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model_kind"] == "late_fusion"
    for p in report["predictions"]:
        assert p["uncertainty"] is None
        assert [p[f"weight_{c}"] for c in COMBINATION_NAMES] == [0, 0, 0, 0, 0, 1, 0]


def write_other_data(path, **changes) -> None:
    """An MMSA-format file of one split, with other feature sizes, and no labels."""
    raw = generate_synthetic(SyntheticConfig(num_train=4, num_valid=4, num_test=12, **changes))["test"]
    del raw["regression_labels"]
    path.write_bytes(pickle.dumps(raw))


def test_mismatching_data_is_refused_naming_every_difference(runs, tmp_path, capsys):
    path = tmp_path / "other.pkl"
    write_other_data(path, audio_dim=5, vision_dim=35)
    assert predict(["--checkpoint", str(runs / "casd" / "best.pt"), "--data", str(path), "--dataset", "sims"]) == 2
    err = capsys.readouterr().err
    assert "audio feature dimension: data 5, checkpoint 16" in err
    assert "vision feature dimension: data 35, checkpoint 24" in err
    assert "--dataset: given 'sims'" in err and "text feature" not in err
    assert predict(["--checkpoint", str(runs / "casd" / "best.pt"), "--data", str(path),
                    "--condition", "frame_0.55"]) == 2
    assert "unknown condition 'frame_0.55'" in capsys.readouterr().err
    assert predict(["--checkpoint", str(tmp_path / "none.pt"), "--synthetic"]) == 2


def test_unlabelled_new_data_gets_predictions_without_labels(runs, tmp_path, capsys):
    path, out = tmp_path / "new.pkl", tmp_path / "p.csv"
    write_other_data(path, seed=5, text_len=20)  # other samples, shorter text: allowed
    assert predict(["--checkpoint", str(runs / "casd" / "best.pt"), "--data", str(path), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert len(rows) == 12 and "label" not in rows[0]
    assert all(np.isfinite(float(r["prediction"])) and np.isfinite(float(r["uncertainty"])) for r in rows)
    assert "sequence lengths" in capsys.readouterr().err


# --- the Python API: casd.load(path).predict(data, condition) -----------------------------------
def test_load_from_a_str_path_reproduces_the_runs_test_outputs(runs):
    trained = casd.load(str(runs / "casd" / "best.pt"))
    assert isinstance(trained, TrainedModel) and trained.kind == "casd" and not trained.model.training
    saved = read_predictions(runs / "casd" / "predictions.npz")
    test_split = trained.synthetic_split("test")
    for condition in ("frame_0.5", "modality_tv"):
        result = trained.predict(test_split, condition)
        assert result.condition == condition and result.ids.tolist() == saved["ids"].tolist()
        for key in ("output", "uncertainty", "weights"):
            np.testing.assert_allclose(getattr(result, key), saved[f"{condition}/{key}"], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(result.labels, saved["labels"])
        assert result.metrics["MAE"] == pytest.approx(np.abs(result.output - result.labels).mean(), rel=1e-5)
    by_path = casd.load(runs / "casd" / "best.pt").predict(test_split, "frame_0.5")  # PathLike too
    np.testing.assert_array_equal(by_path.output, trained.predict(test_split, "frame_0.5").output)


def test_predict_takes_feature_arrays_with_defaults_for_lengths_ids_and_labels(runs):
    trained = casd.load(str(runs / "casd" / "best.pt"))
    raw = trained.synthetic_split("test")
    full = {"text": torch.as_tensor(raw["text"]), "audio": raw["audio"], "vision": raw["vision"],
            "text_bert": raw["text_bert"], "labels": raw["regression_labels"]}
    result = trained.predict(full)  # no condition: every frame of every modality
    assert result.ids.tolist() == [str(i) for i in range(len(raw["text"]))]
    reference = trained.predict(dict(raw, audio_lengths=np.full(len(raw["audio"]), raw["audio"].shape[1]),
                                     vision_lengths=np.full(len(raw["vision"]), raw["vision"].shape[1])))
    np.testing.assert_array_equal(result.output, reference.output)  # lengths default to the padded length
    assert result.metrics == reference.metrics and result.uncertainty.shape == (len(raw["text"]),)
    unlabelled = trained.predict({k: v for k, v in full.items() if k != "labels"}, "modality_t")
    assert unlabelled.labels is None and unlabelled.metrics is None
    assert unlabelled.weights[:, 1:].max() == 0  # only {t} is available


def test_pickles_and_other_models_through_the_api(runs, tmp_path):
    path = tmp_path / "new.pkl"
    write_other_data(path, seed=5, text_len=20)
    result = casd.load(str(runs / "casd" / "best.pt")).predict(str(path), "frame_0.3")
    assert len(result.output) == 12 and result.labels is None and any("sequence lengths" in n for n in result.notes)
    late = casd.load(str(runs / "late_fusion" / "best.pt"))
    assert np.isnan(late.predict(late.synthetic_split("valid")).uncertainty).all()


def test_api_errors_are_user_errors_naming_the_problem(runs, tmp_path):
    trained = casd.load(str(runs / "casd" / "best.pt"))
    raw = trained.synthetic_split("test")
    with pytest.raises(CheckpointError, match="audio feature dimension: data 5, checkpoint 16"):
        trained.predict(dict(raw, audio=raw["audio"][:, :, :5]))
    with pytest.raises(CheckpointError, match="--dataset: given 'sims'"):
        trained.predict(raw, dataset="sims")
    with pytest.raises(ConfigError, match="unknown condition 'frame_0.55'"):
        trained.predict(raw, "frame_0.55")
    with pytest.raises(DataError, match="missing 'vision'"):
        trained.predict({"text": raw["text"], "audio": raw["audio"]})
    with pytest.raises(DataError, match="none.pkl: no such file"):
        trained.predict(str(tmp_path / "none.pkl"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        casd.load(str(tmp_path / "none.pt"))
