"""The CASD head on an MMSA model: confidence-weighted fusion of its Feature_t / Feature_a / Feature_v.

    python examples/mmsa_casd_head.py [--fused] [--epochs N]

Every model of MMSA (thuiar/MMSA: LF_DNN, TFN, LMF, MISA, Self-MM, ...) is called as
``model(text, audio, vision)`` and returns a dict with its prediction ``M`` and its
per-modality representations ``Feature_t``, ``Feature_a``, ``Feature_v`` (and the fused
``Feature_f``). Those three vectors are what casd's combination layer takes, so CASD's head
replaces the model's own fusion without touching its encoders:

    backbone(text, audio, vision) -> Feature_t [B,Ht], Feature_a [B,Ha], Feature_v [B,Hv]
      -> one Linear each to a common width H -> h [B, 3, H]
      -> CombinationEmbedding -> StudentTHead -> ConfidenceMixture -> p(z | x), a Student-t
         mixture over the 7 modality combinations, weighted by confidence
      -> predictor f(z);  trained by casd.objective.CASDObjective (teacher + student views,
         consistency distillation), prediction y = sum_k pi_k f(mu_k) with its uncertainty

``MMSAStyleModel`` below stands for the MMSA model: a small late-fusion network in the mould of
MMSA's LF_DNN (an LSTM over the text, mean-pooled sub-networks for audio and vision), with
MMSA's call signature and output dict (audio and vision are passed as (features, lengths), as
Self-MM takes them). Any model with that interface drops in for it. ``--fused`` runs the
sampler and L_cd through the Triton kernels (casd.layers.set_backend).
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
from casd.layers import CombinationEmbedding, ConfidenceMixture, StudentTHead, set_backend
from casd.metrics import compute_metrics
from casd.modalities import component_availability
from casd.objective import CASDObjective, ObjectiveConfig

REPORTED = ("frame_0.0", "frame_0.5", "modality_t", "modality_av")  # names from evaluation_conditions()
FEATURE_KEYS = ("Feature_t", "Feature_a", "Feature_v")  # MMSA's names, in casd.modalities order


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, L, F] frames, valid lengths [B] -> [B, F], the mean over each row's valid frames."""
    valid = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)
    return (x * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)


class MMSAStyleModel(nn.Module):
    """An MMSA-style model: ``forward(text, (audio, lengths), (vision, lengths))`` -> MMSA's dict."""

    def __init__(self, feature_dims: tuple[int, int, int], text_out: int = 24, audio_hidden: int = 12,
                 video_hidden: int = 12, fusion: int = 24):
        super().__init__()
        text_in, audio_in, video_in = feature_dims
        self.feature_widths = (text_out, audio_hidden, video_hidden)  # of Feature_t, Feature_a, Feature_v
        self.text_lstm = nn.LSTM(text_in, text_out, batch_first=True)
        self.audio_subnet = nn.Sequential(nn.LayerNorm(audio_in), nn.Linear(audio_in, audio_hidden), nn.ReLU())
        self.video_subnet = nn.Sequential(nn.LayerNorm(video_in), nn.Linear(video_in, video_hidden), nn.ReLU())
        self.fusion = nn.Sequential(nn.Linear(text_out + audio_hidden + video_hidden, fusion), nn.ReLU(),
                                    nn.Linear(fusion, 1))

    def forward(self, text: torch.Tensor, audio: tuple[torch.Tensor, torch.Tensor],
                vision: tuple[torch.Tensor, torch.Tensor], text_lengths: torch.Tensor | None = None) -> dict:
        if text_lengths is None:
            text_lengths = torch.full(text.shape[:1], text.shape[1], device=text.device)
        packed = pack_padded_sequence(text, text_lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        text_h = self.text_lstm(packed)[1][0][-1]  # the last hidden state [B, text_out]
        audio_h = self.audio_subnet(masked_mean(*audio))
        video_h = self.video_subnet(masked_mean(*vision))
        fusion_h = torch.cat([text_h, audio_h, video_h], dim=-1)
        return {"M": self.fusion(fusion_h), "Feature_t": text_h, "Feature_a": audio_h, "Feature_v": video_h,
                "Feature_f": fusion_h}


class CASDHead(nn.Module):
    """CASD's head on any MMSA model's Feature_t/a/v (a casd.objective.MixtureModel)."""

    def __init__(self, backbone: nn.Module, feature_widths: tuple[int, int, int], hidden: int = 32,
                 embed_dim: int = 16, output_dim: int = 1):
        super().__init__()
        self.backbone = backbone
        # MMSA models give each modality its own width; the combination layer needs one.
        self.project = nn.ModuleList(nn.Linear(width, hidden) for width in feature_widths)
        self.combine = CombinationEmbedding(hidden)
        self.head = StudentTHead(hidden, embed_dim)
        self.mixture = ConfidenceMixture(tau=1.0)
        self.predictor = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, output_dim))

    def forward(self, batch: dict[str, torch.Tensor]) -> StudentTMixture:
        features = self.backbone(batch["text"], (batch["audio"], batch["audio_lengths"]),
                                 (batch["vision"], batch["vision_lengths"]), batch["text_lengths"])
        h = torch.stack([project(features[key]) for project, key in zip(self.project, FEATURE_KEYS)], dim=1)
        mu, log_sigma, nu = self.head(self.combine(h))
        # An absent modality still has a Feature_x (the backbone saw zeros); every combination
        # that needs it gets weight 0, so it never reaches the prediction.
        return self.mixture(mu, log_sigma, nu, component_availability(batch["present"]))

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(y_hat = sum_k pi_k f(mu_k) [B], its uncertainty ubar [B]: higher = less sure)."""
        mixture = self(batch)
        return (mixture.weights * self.predictor(mixture.mu).squeeze(-1)).sum(1), mixture.mean_uncertainty()


def train(model: CASDHead, objective: CASDObjective, split, epochs: int, device, batch_size: int = 32,
          lr: float = 3e-3, seed: int = 0) -> None:
    dataset = batches_from_split(split)
    missingness = TrainingMissingness("mixed", 0.7)  # the student view: frame or modality dropout
    shuffle, missing = torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = -(-len(dataset) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    model.train()
    for epoch in range(epochs):
        start, sums = time.perf_counter(), {}
        for teacher in make_loader(dataset, batch_size, shuffle=True, generator=shuffle):
            teacher = batch_to(teacher, device)
            losses = objective(model, teacher, missingness.apply(teacher, missing))
            optimizer.zero_grad()
            losses.total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            sums = {k: sums.get(k, 0.0) + v / steps for k, v in losses.as_floats().items()}
        print(f"epoch {epoch + 1}/{epochs}  " + "  ".join(f"{k} {v:.3f}" for k, v in sums.items())
              + f"  ({time.perf_counter() - start:.1f} s)")


@torch.no_grad()
def evaluate(model: CASDHead, split, device, names=REPORTED) -> dict[str, dict[str, float]]:
    """MMSA metrics and the mean uncertainty under the named recorded test conditions."""
    model.eval()
    results = {}
    for condition in evaluation_conditions():
        if condition.name in names:
            seen, present = apply_condition(split, condition)
            loader = make_loader(seen, 256, shuffle=False, present=present)
            outputs = [model.predict(batch_to(batch, device)) for batch in loader]
            preds, ubar = (torch.cat(parts).cpu() for parts in zip(*outputs))
            results[condition.name] = {**compute_metrics(preds.numpy(), seen.labels, "mosi", "regression"),
                                       "mean_uncertainty": float(ubar.mean())}
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
        triton_ops(device)  # pick compiled vs interpreted kernels before torch.optim imports triton
    torch.manual_seed(args.seed)

    raw = generate_synthetic(SyntheticConfig(seed=args.seed, num_train=args.samples[0], num_valid=1,
                                             num_test=args.samples[1]))
    train_split, test_split = split_from_mmsa(raw["train"]), split_from_mmsa(raw["test"])
    backbone = MMSAStyleModel(train_split.feature_dims)
    model = CASDHead(backbone, backbone.feature_widths).to(device)
    objective = CASDObjective(ObjectiveConfig(num_samples=4, lambda_cd=0.1))
    if args.fused:
        set_backend(objective, "triton")  # the objective holds the sampler and L_cd
    train(model, objective, train_split, args.epochs, device, seed=args.seed)

    results = evaluate(model, test_split, device)
    print(f"{'test condition':<14} {'Corr':>6} {'MAE':>6} {'Acc2':>6} {'ubar':>6}")
    for name, m in results.items():
        print(f"{name:<14} {m['Corr']:6.3f} {m['MAE']:6.3f} {m['Non0_acc_2']:6.3f} {m['mean_uncertainty']:6.3f}")
    return results


if __name__ == "__main__":
    main()
