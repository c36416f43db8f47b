"""A second MSA model built on the drop-in CASD layers: per-modality BiLSTMs, fused late.

    python examples/late_fusion_lstm.py [--fused] [--epochs N]

CASD (casd/model.py) encodes each modality with a Transformer and mean pooling. Here each
modality gets a bidirectional LSTM over its packed sequence instead, and its final hidden
states are h_m. Everything after h_m is casd.layers, unchanged:

    h [B,3,H] -> CombinationEmbedding -> StudentTHead -> ConfidenceMixture -> StudentTSampler
              -> predictor;  L = L_task(teacher) + L_task(student) + lambda_cd * L_cd

The model satisfies casd.objective.MixtureModel (forward -> StudentTMixture, a ``predictor``),
so casd.objective.CASDObjective, the objective casd.train uses for CASD, trains it.
``--fused`` runs the sampler and L_cd through the Triton kernels (CUDA, or the CPU interpreter).
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from casd.data import (SyntheticConfig, TrainingMissingness, apply_condition, batch_to, batches_from_split,
                       evaluation_conditions, generate_synthetic, make_loader, split_from_mmsa)
from casd.kernels import StudentTMixture
from casd.kernels.runtime import triton_ops
from casd.layers import CombinationEmbedding, ConfidenceMixture, StudentTHead
from casd.metrics import compute_metrics
from casd.modalities import MODALITIES, component_availability
from casd.objective import CASDObjective, ObjectiveConfig

REPORTED = ("frame_0.0", "frame_0.5", "modality_t", "modality_av")  # names from evaluation_conditions()


class LSTMEncoder(nn.Module):
    """Frames [B, L, F] with valid lengths [B] -> h [B, H]: the last states of a BiLSTM."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)  # modalities and speakers differ in feature scale
        self.lstm = nn.LSTM(in_dim, hidden // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packing stops each direction at the row's own length, so padding never reaches h
        # (a length-0 row is read as one zero frame).
        packed = pack_padded_sequence(self.norm(x), lengths.clamp_min(1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n [2, B, H/2], already back in batch order
        return torch.cat([h_n[0], h_n[1]], dim=-1)


class LateFusionLSTM(nn.Module):
    def __init__(self, feature_dims: tuple[int, int, int], hidden: int = 32, embed_dim: int = 16):
        super().__init__()
        self.encoders = nn.ModuleList(LSTMEncoder(dim, hidden) for dim in feature_dims)
        self.combine = CombinationEmbedding(hidden)
        self.head = StudentTHead(hidden, embed_dim)
        self.mixture = ConfidenceMixture(tau=1.0)
        self.predictor = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> StudentTMixture:
        """p(z | x): one Student-t component per modality combination, weighted by confidence."""
        h = torch.stack([enc(batch[m], batch[f"{m}_lengths"]) for m, enc in zip(MODALITIES, self.encoders)], 1)
        mu, log_sigma, nu = self.head(self.combine(h))
        # Absent modalities still give an h_m (zeros in, something out); the mixture drops
        # every combination that needs one, so it never influences the prediction.
        return self.mixture(mu, log_sigma, nu, component_availability(batch["present"]))

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y_hat = sum_k pi_k f(mu_k) -> [B]."""
        mixture = self(batch)
        return (mixture.weights * self.predictor(mixture.mu).squeeze(-1)).sum(1)


def train(model, objective, split, epochs: int, device, batch_size=32, lr=3e-3, seed=0) -> None:
    dataset = batches_from_split(split)  # tensors once, not once per epoch
    missingness = TrainingMissingness("mixed", 0.5)  # student view: random frame or modality dropout
    shuffle, missing = torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(dataset) // batch_size)
    # Decay to 0 so the final weights do not hinge on one large late step.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        start, sums = time.perf_counter(), {}
        for teacher in make_loader(dataset, batch_size, shuffle=True, generator=shuffle):
            teacher = batch_to(teacher, device)
            losses = objective(model, teacher, missingness.apply(teacher, missing))
            optimizer.zero_grad()
            losses.total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # heavy-tailed noise: rare huge steps
            optimizer.step()
            schedule.step()
            sums = {k: sums.get(k, 0.0) + v / steps_per_epoch for k, v in losses.as_floats().items()}
        print(f"epoch {epoch + 1}/{epochs}  " + "  ".join(f"{k} {v:.3f}" for k, v in sums.items())
            + f"  ({time.perf_counter() - start:.1f} s)")


@torch.no_grad()
def evaluate(model, split, device, names=REPORTED) -> dict[str, dict[str, float]]:
    """MMSA metrics on `split` under the named recorded test conditions."""
    model.eval()
    results = {}
    for condition in evaluation_conditions():
        if condition.name in names:
            seen, present = apply_condition(split, condition)
            preds = torch.cat([model.predict(batch_to(batch, device)).cpu()
                               for batch in make_loader(seen, 256, shuffle=False, present=present)])
            results[condition.name] = compute_metrics(preds.numpy(), seen.labels, "mosi", "regression")
    model.train()
    return results


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fused", action="store_true", help="Triton backend for the sampler and L_cd")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, nargs=2, default=(600, 300), metavar=("TRAIN", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="small tensors: one CPU thread is fastest")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.fused:
        if device.type == "cpu":
            warnings.warn("--fused without a GPU runs the kernels in Triton's CPU interpreter: "
                          "correct but several times slower than the torch backend", RuntimeWarning)
        # Pick compiled vs interpreted kernels now: torch.optim imports triton, after which
        # the interpreter can no longer be switched on.
        triton_ops(device)
    torch.manual_seed(args.seed)  # the sampler draws its noise seeds from torch's default generator

    # No model selection here (fixed epochs), so the validation split is a token one sample.
    raw = generate_synthetic(SyntheticConfig(seed=args.seed, num_train=args.samples[0], num_valid=1,
                                             num_test=args.samples[1]))
    train_split, test_split = split_from_mmsa(raw["train"]), split_from_mmsa(raw["test"])
    model = LateFusionLSTM(tuple(getattr(train_split, m).shape[2] for m in MODALITIES)).to(device)
    # 4 samples per component, lambda_cd = 0.1, tau = 1, one noise seed per step (casd.objective).
    backend = "triton" if args.fused else "torch"
    objective = CASDObjective(ObjectiveConfig(num_samples=4, lambda_cd=0.1, backend=backend))
    train(model, objective, train_split, args.epochs, device, seed=args.seed)

    results = evaluate(model, test_split, device)
    print(f"{'test condition':<14} {'Corr':>6} {'MAE':>6} {'Acc2':>6} {'Acc7':>6}")
    for name, m in results.items():
        print(f"{name:<14} {m['Corr']:6.3f} {m['MAE']:6.3f} {m['Non0_acc_2']:6.3f} {m['Mult_acc_7']:6.3f}")
    return results


if __name__ == "__main__":
    main()
