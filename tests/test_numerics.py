"""The trainer's non-finite guard, and resuming a run with changed safe settings.

A training step whose loss or gradients are not finite is skipped (no optimiser step, no
schedule step) and counted; ``train.max_bad_steps`` of them in a row stop the run with one line
that says how to go on (``--resume`` with a lower ``--lr``), which then works: the learning
rate, epochs, patience and the bad-step limit may change on resume (casd.checkpoint.RESUME_SAFE),
nothing else. Faults are injected into the real objective (tests/faults.py).
"""
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from casd.checkpoint import run_record
from casd.distributed import DistContext
from casd.evaluate import validation_conditions
from casd.flags import config_from_argv
from casd.serialize import to_dict
from casd.train import build_model_and_objective, describe_data, load_splits, main as train
from casd.data import validate_splits
from casd.errors import DivergenceError
from casd.trainer import Trainer

import faults

# 32 training rows in batches of 16: two steps per epoch.
TINY = ["--synthetic-samples", "32", "16", "16", "--hidden", "8", "--heads", "2", "--embed-dim", "4",
        "--batch-size", "16", "--no-progress", "--threads", "1"]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def adam_steps(checkpoint: dict) -> set[int]:
    return {int(state["step"]) for state in checkpoint["optimizer"]["state"].values()}


def test_non_finite_losses_and_gradients_are_skipped_and_counted(monkeypatch, tmp_path):
    faults.install(monkeypatch, lambda call, rank: {1: "gradients", 2: "loss"}.get(call))
    out = tmp_path / "run"
    assert train([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    assert [h["skipped_steps"] for h in results(out)["history"]] == [1, 1]
    last = torch.load(out / "last.pt", weights_only=True)
    assert adam_steps(last) == {2} and last["scheduler"]["last_epoch"] == 2  # 4 steps, 2 taken
    assert last["state"]["bad_steps"] == 2 and last["state"]["bad_steps_in_a_row"] == 0
    assert all(torch.isfinite(w).all() for w in last["model"].values())  # one NaN step would spoil them all
    log = (out / "train.log").read_text()
    assert "step skipped, non-finite gradients" in log and "step skipped, non-finite loss" in log


def test_a_run_stops_after_max_bad_steps_in_a_row_and_resumes_with_a_lower_lr(monkeypatch, tmp_path, capsys):
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert train([*TINY, "--epochs", "3", "--out", str(reference)]) == 0
    capsys.readouterr()

    # From the second epoch on every backward overflows: stopped after 2 such steps in a row.
    with monkeypatch.context() as patch:
        faults.install(patch, lambda call, rank: "gradients" if call >= 2 else None)
        assert train([*TINY, "--epochs", "3", "--max-bad-steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("casd.train: error: epoch 2: 2 training steps in a row"), err
    assert "train.max_bad_steps = 2" in err[0] and f"--resume --out {out} and a lower --lr (now 0.001)" in err[0]
    assert not (out / "results.json").exists()
    assert torch.load(out / "last.pt", weights_only=True)["state"]["epoch"] == 1

    # Resumed with half the learning rate (and a laxer limit): the change is logged and applied.
    assert train([*TINY, "--epochs", "3", "--max-bad-steps", "5", "--out", str(out), "--resume", "--lr", "5e-4"]) == 0
    log = (out / "train.log").read_text()
    assert "--resume: train.lr changed from 0.001 to 0.0005" in log
    assert "--resume: train.max_bad_steps changed from 2 to 5" in log
    a, b = results(reference)["history"], results(out)["history"]
    drop_time = lambda h: {k: v for k, v in h.items() if k != "seconds"}  # noqa: E731
    assert drop_time(b[0]) == drop_time(a[0])  # epoch 1 is the checkpoint's, untouched
    for old, new in zip(a[1:], b[1:]):  # same schedule, half the peak
        assert new["lr"] == pytest.approx(old["lr"] / 2, rel=1e-12, abs=1e-15)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["config"]["train"]["lr"] == 5e-4 and last["optimizer"]["param_groups"][0]["initial_lr"] == 5e-4
    assert results(out)["config"]["train"]["lr"] == 5e-4

    # A finished run may train for more epochs; fewer than it has done is refused.
    assert train([*TINY, "--epochs", "4", "--out", str(out), "--resume", "--lr", "5e-4"]) == 0
    longer = results(out)["history"]
    assert len(longer) == 4 and [drop_time(h) for h in longer[:3]] == [drop_time(h) for h in b]
    capsys.readouterr()
    assert train([*TINY, "--epochs", "2", "--out", str(out), "--resume", "--lr", "5e-4"]) == 2
    assert "--epochs 2: the run in" in capsys.readouterr().err and (out / "results.json").exists()


def test_an_epoch_without_a_finite_step_stops_the_run(monkeypatch, tmp_path, capsys):
    faults.install(monkeypatch, lambda call, rank: "loss")
    out = tmp_path / "run"
    assert train([*TINY, "--epochs", "2", "--out", str(out)]) == 2  # 2 steps per epoch, limit 20
    err = capsys.readouterr().err
    assert "epoch 1: every training step had a non-finite loss or gradients (2 skipped)" in err
    assert "rerun with a lower --lr" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "train.log"]  # no checkpoint, no results


# --- pieces ---------------------------------------------------------------------------------------------
def make_trainer(tmp_path: Path, *argv: str, fault=None) -> Trainer:
    config = config_from_argv([*TINY, "--out", str(tmp_path), *argv])
    splits, source, _ = load_splits(config)
    meta = describe_data(config, source, validate_splits(splits, "mosi", "regression", source))
    torch.manual_seed(0)
    model, objective = build_model_and_objective(config, meta)
    if fault is not None:
        objective = faults.Faulty(objective, fault)
    return Trainer(model, objective, splits["train"], splits["valid"], validation_conditions(1111), config.train,
                   "mosi", "regression", torch.device("cpu"), tmp_path, run_record(to_dict(config), model, meta), "MAE")


def test_fp16_loss_scaler_steps_are_skipped_once(tmp_path):
    """With a GradScaler (fp16), an overflowing backward lowers the scale as the scaler's own
    skip would, a NaN loss keeps it, and neither steps the optimiser or counts twice."""
    trainer = make_trainer(tmp_path, "--synthetic-samples", "48", "16", "16",  # three steps
                           fault=lambda call: {0: "gradients", 1: "loss"}.get(call))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    record = trainer.train_epoch(1)
    assert record["skipped_steps"] == 2 and trainer.state.bad_steps == 2 and trainer.state.bad_steps_in_a_row == 0
    assert trainer.scaler.get_scale() == 512.0  # halved once: by the overflow, not by the NaN loss
    assert adam_steps({"optimizer": trainer.optimizer.state_dict()}) == {1}
    assert trainer.scheduler.last_epoch == 1


@dataclass(frozen=True)
class OtherRank(DistContext):
    """Rank 0 of two; the other rank's (loss bad, gradients bad) flags are ``other``."""

    other: tuple[float, float] = (0.0, 0.0)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor + torch.tensor(self.other, dtype=tensor.dtype)


def test_every_rank_skips_a_step_that_is_bad_on_any_rank(tmp_path):
    trainer = make_trainer(tmp_path)
    finite, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    for other, local_loss, local_norm, expected in [((0, 0), finite, finite, None), ((0, 1), finite, finite, "gradients"),
                                                    ((1, 0), finite, finite, "loss"), ((0, 0), nan, finite, "loss"),
                                                    ((0, 0), finite, torch.tensor(math.inf), "gradients")]:
        trainer.context = OtherRank(0, 2, other=other)
        assert trainer._non_finite(local_loss, local_norm) == expected, (other, local_loss, local_norm)


def test_non_finite_predictions_stop_the_run_with_advice(tmp_path):
    """Weights can stay finite while the forward pass overflows (a too high --lr): validation
    says so in one line instead of failing inside the metrics."""
    trainer = make_trainer(tmp_path)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.fill_(3e38)
    with pytest.raises(DivergenceError, match=r"outputs under frame_0.0 are not finite for 16 of 16 samples.*--lr"):
        trainer.validate()


def test_a_raised_patience_wakes_an_early_stopped_run(tmp_path):
    trainer = make_trainer(tmp_path, "--patience", "5")
    trainer.state.epochs_without_improvement, trainer.state.stopped_early = 2, True
    trainer._apply_resume_changes([("train.patience", 2, 5)])
    assert not trainer.state.stopped_early
    trainer._apply_resume_changes([])  # nothing changed: nothing touched
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.scheduler.get_last_lr()[0]


@pytest.mark.slow
def test_two_processes_skip_a_step_that_is_bad_on_one_rank(monkeypatch, tmp_path):
    """torchrun, 2 CPU processes: NaN gradients on rank 1 only at the second step; both ranks
    skip it, and the run equals a single-process run with that step spoilt."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import faults, casd.train\n"
        "faults.install(None, lambda call, rank: 'gradients' if call == 1 and rank == int(sys.argv[1]) else None)\n"
        "sys.exit(casd.train.main(sys.argv[2:]))\n")
    args = [*TINY, "--epochs", "2", "--synthetic-samples", "48", "16", "16", "--dropout", "0", "--noise", "sample"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver), "1",
               *args, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    faults.install(monkeypatch, lambda call, rank: "gradients" if call == 1 else None)
    assert train([*args, "--out", str(tmp_path / "single")]) == 0
    ddp, one = results(tmp_path / "ddp")["history"], results(tmp_path / "single")["history"]
    assert [h["skipped_steps"] for h in ddp] == [h["skipped_steps"] for h in one] == [1, 0]
    for a, b in zip(ddp, one):
        for key in ("train_total", "valid_score", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert adam_steps(last) == {5} and all(torch.isfinite(w).all() for w in last["model"].values())
