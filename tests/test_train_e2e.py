"""End to end: `python -m casd.train` learns on synthetic data, and only from the real labels."""
import json

import numpy as np
import pytest

from casd.data import SyntheticConfig, generate_synthetic
from casd.train import main

SMALL = ["--synthetic-samples", "600", "150", "300", "--epochs", "8", "--hidden", "32",
         "--lr", "3e-3", "--batch-size", "32", "--no-progress", "--threads", "1"]


def train(tmp_path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    assert main([*SMALL, "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_training_learns_real_labels_and_not_shuffled_ones(tmp_path):
    real = train(tmp_path, "real")
    corr = real["test"]["frame"]["metrics"]["Corr"]
    # A constant predictor has no correlation; a shuffled-label model ~ N(0, 1/sqrt(300)).
    assert corr[0] > 0.6, f"clean test correlation {corr[0]:.3f}"
    assert real["test"]["modality"]["combinations"]["tav"]["Corr"] > 0.6
    assert real["history"][-1]["train_task_teacher"] < real["history"][0]["train_task_teacher"] - 0.2

    # Same data, train/valid labels permuted, loaded through the MMSA pickle path.
    raw = generate_synthetic(SyntheticConfig(num_train=600, num_valid=150, num_test=300))
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        raw[split]["regression_labels"] = rng.permutation(raw[split]["regression_labels"])
    import pickle

    path = tmp_path / "shuffled.pkl"
    path.write_bytes(pickle.dumps(raw))
    shuffled = train(tmp_path, "shuffled", "--data", str(path))
    shuffled_corr = np.nan_to_num(shuffled["test"]["frame"]["metrics"]["Corr"][0])
    assert abs(shuffled_corr) < 0.25, f"shuffled-label model correlates {shuffled_corr:.3f}"
    assert corr[0] > abs(shuffled_corr) + 0.4


def test_outputs_are_complete_and_consistent(tmp_path):
    out = tmp_path / "tiny"
    args = ["--synthetic-samples", "96", "48", "64", "--epochs", "2", "--hidden", "16", "--heads", "2",
            "--embed-dim", "8", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    for name in ("config.json", "train.log", "best.pt", "last.pt", "results.json", "results.txt",
                 "predictions.npz", "robustness.png", "robustness.pdf"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "results.json").read_text())
    assert report["test"]["frame"]["rates"] == pytest.approx([r / 10 for r in range(10)])
    assert sorted(report["test"]["modality"]["combinations"]) == sorted(["t", "a", "v", "ta", "tv", "av", "tav"])
    # Saved predictions reproduce the reported metrics.
    from casd.metrics import regression_metrics

    saved = np.load(out / "predictions.npz")
    recomputed = regression_metrics(saved["frame_0.5/output"], saved["labels"], "mosi")
    assert recomputed["MAE"] == pytest.approx(report["test"]["frame"]["metrics"]["MAE"][5])
    assert saved["modality_a/weights"][:, [0, 2, 3, 4, 5, 6]].max() == 0  # only {a} available


def test_missing_data_file_exits_with_a_clear_message(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pkl" in capsys.readouterr().err
