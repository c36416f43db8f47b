"""Checkpoints (casd.checkpoint): old ones still load and resume, bad ones fail with one clear message.

The fixture ``fixtures/format1/casd_epoch1_of_2.pt`` was written by casd before RunConfig
(commit c659f09, checkpoint format 1) with the command in ``fixtures/format1/expected.json``,
which also records what that casd printed: casd.predict's outputs from this checkpoint and the
finished 2-epoch run's results. It was made on another machine, so numbers are compared with
a small tolerance here (CPU kernels may round differently); a change of behaviour (another
random stream, another formula) moves them by orders of magnitude more.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from casd.checkpoint import FORMAT, check_data_compatible, load_model, read_checkpoint, recorded_synthetic
from casd.data import generate_synthetic, split_from_mmsa
from casd.errors import CheckpointError
from casd.model import CASDModel
from casd.predict import main as predict
from casd.train import main as train

FIXTURE = Path(__file__).parent / "fixtures" / "format1"
OLD = FIXTURE / "casd_epoch1_of_2.pt"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
# The old run was the first formulation (formulation §8): its flags reproduce it.
FIRST = ["--no-frame-scale", "--likelihood", "point", "--tau", "1", "--tau-rows", "1", "--lambda-cd", "0.01",
         "--distill", "mixture", "--no-cd-per-dim", "--task-input", "samples", "--missing-rate", "0.7",
         "--task-weights", "confidence"]
ARGS = ["--synthetic-samples", "48", "24", "32", "--epochs", "2", "--hidden", "8", "--heads", "2",
        "--embed-dim", "4", "--batch-size", "16", "--threads", "1", "--no-progress", "--lr", "3e-3", *FIRST]


def test_old_checkpoint_loads_from_str_and_pathlike_and_predicts_as_it_did(tmp_path):
    model, checkpoint = load_model(str(OLD))
    assert isinstance(model, CASDModel) and not model.training and checkpoint["format"] == 1
    assert load_model(OLD)[1]["model_kind"] == "casd"
    out = tmp_path / "p.json"
    assert predict(["--checkpoint", str(OLD), "--synthetic", "--condition", "modality_ta", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["predictions"]
    expected = EXPECTED["predict_modality_ta"]["rows"]
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    # The old casd called ubar "confidence"; it is the same number under its new name.
    for key, old_key in (("prediction", "prediction"), ("uncertainty", "confidence")):
        np.testing.assert_allclose([r[key] for r in rows], [r[old_key] for r in expected], rtol=1e-5, atol=1e-6)
    weights = [[r[f"weight_{c}"] for c in ("t", "a", "v", "ta", "tv", "av", "tav")] for r in rows]
    np.testing.assert_allclose(weights, [r["weights"] for r in expected], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_old_checkpoint_resumes_deterministically_from_the_old_weights(tmp_path):
    """Epoch 1 by the old casd, epoch 2 by this one. The old run's epoch 2 is not reproduced:
    issue 8 changed the sampler's noise stream (keyed Philox instead of torch.randn), so the
    second epoch draws other, equally distributed noise. What must hold: the old epoch is
    carried verbatim, the run finishes in the current format, and resuming the same file
    twice gives the same numbers (the resumed state, not luck, decides them)."""
    old = EXPECTED["run"]
    reports = []
    for name in ("first", "second"):
        run = tmp_path / name
        run.mkdir()
        shutil.copy(OLD, run / "last.pt")
        shutil.copy(OLD, run / "best.pt")  # after epoch 1 of the old run, epoch 1 was its best
        assert train([*ARGS, "--out", str(run), "--resume"]) == 0
        report = json.loads((run / "results.json").read_text())
        assert len(report["history"]) == 2
        for key, value in old["history"][0].items():
            assert report["history"][0][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
        for values in report["test"]["frame"]["metrics"].values():
            assert all(v is None or np.isfinite(v) for v in values)
        assert read_checkpoint(run / "last.pt")["format"] == FORMAT  # written in the current format
        reports.append(report)
    first, second = reports
    assert [{k: v for k, v in h.items() if "time" not in k and "second" not in k} for h in first["history"]] == \
        [{k: v for k, v in h.items() if "time" not in k and "second" not in k} for h in second["history"]]
    assert first["test"]["frame"]["metrics"] == second["test"]["frame"]["metrics"]


def test_resuming_an_old_checkpoint_with_other_settings_names_them(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(OLD, out / "last.pt")
    assert train([*ARGS, "--out", str(out), "--resume", "--lr", "1e-2", "--weight-decay", "0.1", "--tau", "0.5",
                  "--noise", "sample"]) == 2
    err = capsys.readouterr().err
    for line in ("train.weight_decay: checkpoint 0.01, now 0.1", "objective.tau: checkpoint 1.0, now 0.5",
                 "objective.noise: checkpoint 'batch', now 'sample'"):
        assert line in err
    assert "train.progress" not in err and "device" not in err  # free to differ
    assert "train.lr: checkpoint" not in err  # may change on resume (casd.checkpoint.RESUME_SAFE)
    assert err.count("\n") == 1 and sorted(p.name for p in out.iterdir()) == ["last.pt"]  # refused: nothing written


def test_unusable_checkpoints_fail_with_a_clear_message(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "torn.pt").write_bytes(OLD.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "torn.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a casd.train checkpoint .*'model_kind'"):
        read_checkpoint(tmp_path / "foreign.pt")
    future = {**torch.load(OLD, weights_only=True), "format": FORMAT + 1}
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="update casd"):
        read_checkpoint(tmp_path / "future.pt")
    wrong = torch.load(OLD, weights_only=True)
    wrong["model_config"] = {**wrong["model_config"], "hidden": 16, "heads": 2}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "wrong.pt")


def test_data_compatibility_needs_no_command_line():
    metadata = read_checkpoint(OLD)["metadata"]
    raw = generate_synthetic(recorded_synthetic(metadata))["test"]
    split = split_from_mmsa(raw, "regression")
    assert check_data_compatible(split, metadata, has_labels=True) == []
    with pytest.raises(CheckpointError, match="--task: given 'classification'"):
        check_data_compatible(split, metadata, True, task="classification")
    short = split.replace(text=split.text[:, :20], text_lengths=np.minimum(split.text_lengths, 20), text_bert=None)
    assert "sequence lengths" in check_data_compatible(short, metadata, True)[0]
