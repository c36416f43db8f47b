"""Resume: a training run killed with SIGKILL after an epoch's checkpoint, then continued with
``--resume``, ends bitwise where the uninterrupted run ends (CPU, one thread).

What must survive the kill, and is checked by the bitwise comparison: the weights, AdamW's
moments and step counts, the LR schedule position, the early-stopping state, the best score and
best.pt (written before last.pt), and every random stream (all re-seeded from (seed, epoch)).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from casd.train import main

# Dropout on and 120 rows in batches of 32 (a partial last batch): every random stream is live.
ARGS = ["--synthetic-samples", "120", "48", "64", "--epochs", "7", "--hidden", "16", "--heads", "2",
        "--embed-dim", "8", "--batch-size", "32", "--lr", "3e-3", "--patience", "3", "--no-progress",
        "--threads", "1"]
KILL_AFTER_EPOCH = 2


def kill_after_checkpoint(out, epoch: int) -> None:
    """Start a real run in a subprocess and SIGKILL it once epoch ``epoch`` is checkpointed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "casd.train", *ARGS, "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "train.log"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            # The epoch line is logged after last.pt has been (atomically) replaced.
            if log.exists() and f"INFO epoch {epoch} " in log.read_text():
                break
            time.sleep(0.01)
        assert process.poll() is None, f"run ended before it could be killed: {process.stderr.read()[-2000:]}"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, capsys):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main([*ARGS, "--out", str(reference)]) == 0

    kill_after_checkpoint(interrupted, KILL_AFTER_EPOCH)
    assert not (interrupted / "results.json").exists()
    killed_at = torch.load(interrupted / "last.pt", weights_only=True)["state"]["epoch"]
    assert KILL_AFTER_EPOCH <= killed_at < 7

    # Resuming with a flag that changes the trajectory is refused, naming the flag (the learning
    # rate, epochs, patience and bad-step limit may change: tests/test_numerics.py).
    assert main([*ARGS, "--out", str(interrupted), "--resume", "--weight-decay", "0.1"]) == 2
    assert "train.weight_decay: checkpoint 0.01, now 0.1" in capsys.readouterr().err

    assert main([*ARGS, "--out", str(interrupted), "--resume"]) == 0
    a, b = (json.loads((run / "results.json").read_text()) for run in (reference, interrupted))
    drop_time = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert drop_time(b["history"]) == drop_time(a["history"])  # losses, scores, lr: exactly equal
    assert b["selection"] == a["selection"] and b["test"] == a["test"]
    pa, pb = np.load(reference / "predictions.npz"), np.load(interrupted / "predictions.npz")
    for key in pa.files:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)
    for name in ("best.pt", "last.pt"):
        wa = torch.load(reference / name, weights_only=True)
        wb = torch.load(interrupted / name, weights_only=True)
        for key in wa["model"]:
            assert torch.equal(wa["model"][key], wb["model"][key]), (name, key)
        assert wa["state"]["best_epoch"] == wb["state"]["best_epoch"]
        opt_a, opt_b = wa["optimizer"]["state"], wb["optimizer"]["state"]
        assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
        assert wa["scheduler"]["last_epoch"] == wb["scheduler"]["last_epoch"]

    # Resuming a finished run trains nothing more.
    assert main([*ARGS, "--out", str(interrupted), "--resume"]) == 0
    again = json.loads((interrupted / "results.json").read_text())
    assert len(again["history"]) == len(a["history"]) and again["test"] == a["test"]
