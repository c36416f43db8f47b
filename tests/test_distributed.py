"""Distributed training: N processes compute what one process computes at the same global batch.

The unit tests check the pieces in one process (sharding, sample-keyed noise (casd.sampler),
the loss scaling and the global-batch L_cd row weights (casd.distillation), against the
full-batch gradient); the end-to-end test
runs ``torchrun --nproc_per_node=2 -m casd.train`` on the CPU (gloo) and compares it with a
single-process run.

Tolerance of the end-to-end comparison, and why: the two runs differ only in float rounding
(matmuls over 16 vs 32 rows, DDP's gradient all-reduce), so per-epoch losses and validation
scores agree to ~1e-7 relative and test predictions to ~1e-6; we assert 1e-5. Parameters are
compared at 1e-4: the attention key bias has an exactly zero true gradient (softmax is
invariant to it), so AdamW turns its rounding noise into lr-sized steps that change no output.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from casd.distillation import ComponentDistillation, GlobalBatchDistillation, distillation_loss
from casd.distributed import DistContext, loss_scale
from casd.layers import ConsistencyDistillationLoss
from casd.sampler import Sampler, row_keys
from casd.model import CASDModel, ModelConfig
from casd.objective import CASDObjective, ObjectiveConfig
from casd.train import main as train_main

DIMS = (12, 5, 7)


def random_batch(batch: int, generator: torch.Generator) -> dict:
    out = {}
    for name, dim, length in zip(("text", "audio", "vision"), DIMS, (9, 13, 11)):
        out[name] = torch.randn(batch, length, dim, generator=generator)
        out[f"{name}_lengths"] = torch.randint(1, length + 1, (batch,), generator=generator)
    out["present"] = torch.ones(batch, 3, dtype=torch.bool)
    out["labels"] = 6 * torch.rand(batch, generator=generator) - 3
    out["index"] = torch.randperm(1000, generator=generator)[:batch]
    return out


def test_shards_are_contiguous_near_equal_and_cover_every_row():
    for rows in (0, 1, 5, 31, 32, 33):
        for world in (1, 2, 3, 4):
            slices = [DistContext(r, world).shard(rows) for r in range(world)]
            covered = np.concatenate([np.arange(rows)[s] for s in slices])
            assert covered.tolist() == list(range(rows))
            sizes = [s.stop - s.start for s in slices]
            assert max(sizes) - min(sizes) <= 1 and sizes == DistContext(0, world).shard_sizes(rows)


def test_row_keyed_noise_does_not_depend_on_the_batch_around_a_row():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    model = CASDModel(ModelConfig(DIMS, hidden=16, heads=2, embed_dim=6, dropout=0.0))
    mixture = model(random_batch(10, gen))
    index = torch.randperm(10_000, generator=gen)[:10]
    sampler = Sampler(3, noise="sample")
    full = sampler(mixture, row_keys(77, 1, index))
    rows = torch.tensor([7, 2, 5])  # another batch composition and order
    torch.testing.assert_close(sampler(mixture[rows], row_keys(77, 1, index[rows])), full[rows], rtol=0, atol=0)
    assert not torch.allclose(sampler(mixture, row_keys(78, 1, index)), full)  # another epoch: other noise
    with pytest.raises(ValueError, match="row keys"):  # every forward needs one key per row
        sampler(mixture)
    with pytest.raises(ValueError, match="row keys"):
        sampler(mixture, row_keys(77, 1, index[:3]))
    keys = torch.cat([row_keys(5, 0, np.arange(4096)), row_keys(5, 1, np.arange(4096))])
    assert keys.dtype == torch.int64 and (keys >= 0).all() and keys.unique().numel() == 8192
    # The "batch" strategy takes its key from torch's generator and refuses row keys.
    with pytest.raises(ValueError, match="row keys"):
        Sampler(3, noise="batch")(mixture, row_keys(77, 1, index))
    torch.manual_seed(5)
    batch_noise = Sampler(3, noise="batch")(mixture)
    torch.manual_seed(5)
    torch.testing.assert_close(Sampler(3, noise="batch")(mixture), batch_noise, rtol=0, atol=0)


@dataclass(frozen=True)
class RecordedRanks(DistContext):
    """A rank of a simulated job: all_gather returns every rank's values, computed beforehand."""

    gathered: torch.Tensor | None = None

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        torch.testing.assert_close(tensor, self.gathered[self.rank])  # this rank's own entry
        return self.gathered


@pytest.mark.parametrize("mode", ["mixture", "component"])
def test_shard_losses_average_to_the_global_batch_gradient(mode):
    """Scaled shard losses (loss_scale), averaged as DDP does, give the full-batch gradient,
    including L_cd's global-batch row weights; with per-shard row weights they would not.
    Both forms of L_cd (formulation §4): the mixture KL and the per-component KL."""
    tau, rows, cut = 0.1, 11, 6  # uneven shards: 6 and 5 rows
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    model = CASDModel(ModelConfig(DIMS, hidden=16, heads=2, embed_dim=6, dropout=0.0, tau=tau))
    teacher = random_batch(rows, gen)
    present = torch.rand(rows, 3, generator=gen) < 0.5
    present[torch.arange(rows), torch.randint(0, 3, (rows,), generator=gen)] = True
    student = {**teacher, "present": present}
    objective = CASDObjective(ObjectiveConfig(num_samples=3, lambda_cd=10.0, tau=tau, tau_rows=tau, noise="sample",
                                              distill=mode, cd_per_dim=False, task_input="samples"))
    local = ConsistencyDistillationLoss if mode == "mixture" else ComponentDistillation
    assert type(objective.distill) is local  # one process: no global-batch rescaling
    assert type(distillation_loss(tau, context=RecordedRanks(0, 2), mode=mode)) is (
        GlobalBatchDistillation if mode == "mixture" else ComponentDistillation)
    if mode == "component":  # the per-component KL is zero on modality-only differences (hard mask)
        student["text"] = teacher["text"] * (torch.rand(rows, teacher["text"].shape[1], 1, generator=gen) > 0.5)
    params = [p for p in model.parameters()]

    def gradient(rows_: slice, distill, scale: float) -> list[torch.Tensor]:
        objective.distill = distill
        part = lambda batch: {k: v[rows_] for k, v in batch.items()}  # noqa: E731
        loss = objective(model, part(teacher), part(student), noise_seed=3).total * scale
        return torch.autograd.grad(loss, params, allow_unused=True)

    full = gradient(slice(0, rows), local(tau), 1.0)
    shards = [slice(0, cut), slice(cut, rows)]
    with torch.no_grad():
        ubar = [model({k: v[s] for k, v in teacher.items()}).mean_uncertainty() for s in shards]
    gathered = torch.stack([torch.stack([torch.logsumexp(-u / tau, 0), torch.tensor(float(len(u)))]) for u in ubar])

    def averaged(global_weights: bool) -> list[torch.Tensor]:
        total = None
        for rank, rows_ in enumerate(shards):
            context = RecordedRanks(rank, 2, gathered=gathered)
            if mode == "component":
                distill = ComponentDistillation(tau, context=context) if global_weights else ComponentDistillation(tau)
            else:
                distill = GlobalBatchDistillation(tau, context=context) if global_weights else ConsistencyDistillationLoss(tau)
            grads = gradient(rows_, distill, loss_scale(rows_.stop - rows_.start, rows, context))
            grads = [torch.zeros_like(p) if g is None else g / 2 for g, p in zip(grads, params)]  # DDP: mean
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
        return total

    full = [torch.zeros_like(p) if g is None else g for g, p in zip(full, params)]
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    reference = flat(full)
    error = (flat(averaged(True)) - reference).abs().max() / reference.abs().max()
    assert error < 1e-5, f"relative gradient error {error:.2e}"
    local_error = (flat(averaged(False)) - reference).abs().max() / reference.abs().max()
    # The tolerance separates right from wrong: per-shard row weights miss it by far.
    assert local_error > 1e-4, f"per-shard row weights should change the gradient ({local_error:.2e})"


# --- end to end: torchrun, 2 CPU processes (gloo) vs 1 process -------------------------------
E2E_ARGS = ["--synthetic-samples", "89", "40", "48", "--epochs", "3", "--hidden", "16", "--heads", "2",
            "--embed-dim", "8", "--batch-size", "32", "--dropout", "0", "--lambda-cd", "1", "--tau", "0.5",
            "--missing-rate", "0.5", "--lr", "3e-3", "--no-progress", "--noise", "sample",
            "--threads", "1"]  # 89 rows: last batch 25 -> shards 13 + 12


@pytest.mark.slow
def test_two_process_run_matches_single_process_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "casd.train", *E2E_ARGS, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert train_main([*E2E_ARGS, "--out", str(tmp_path / "single")]) == 0

    ddp, single = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("ddp", "single"))
    assert ddp["config"]["record"]["world_size"] == 2 and single["config"]["record"]["world_size"] == 1
    assert len(ddp["history"]) == len(single["history"]) == 3
    for a, b in zip(ddp["history"], single["history"]):
        for key in ("train_total", "train_task_teacher", "train_task_student", "train_distillation", "valid_score"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    assert max(abs(h["train_distillation"]) for h in single["history"]) > 1e-4  # L_cd is part of the comparison
    assert ddp["selection"]["best_epoch"] == single["selection"]["best_epoch"]
    pa, pb = np.load(tmp_path / "ddp" / "predictions.npz"), np.load(tmp_path / "single" / "predictions.npz")
    assert sorted(pa.files) == sorted(pb.files)
    for key in pa.files:
        if key != "ids":
            np.testing.assert_allclose(pa[key], pb[key], rtol=1e-5, atol=1e-5, err_msg=key)
    for name, values in single["test"]["frame"]["metrics"].items():
        np.testing.assert_allclose(ddp["test"]["frame"]["metrics"][name], values, atol=1e-4, err_msg=name)
    wa = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    for key in wb:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-4, msg=key)
    # Only rank 0 wrote files and logged.
    assert "rank 1" not in (tmp_path / "ddp" / "train.log").read_text()
