"""Diagnostics of the confidence weights of a study's CASD runs, on the validation split.

``python -m casd.study --diagnose`` writes diagnostics.md/.json: how peaked the weights pi are,
how they move under missing modalities, whether the mixture beats plain averaging, and
whether the uncertainty tracks the noise the synthetic generator planted in each modality.
Nothing here looks at test data.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from casd.checkpoint import load_model, recorded_synthetic
from casd.config import EvalConfig
from casd.data import apply_condition, batch_to, evaluation_conditions, generate_synthetic, make_loader, split_from_mmsa
from casd.evaluate import VALID_SEED_OFFSET
from casd.metrics import spearman
from casd.modalities import COMBINATION_NAMES, MODALITIES

__all__ = ["DIAGNOSTIC_CONDITIONS", "confidence_diagnostics", "write_diagnostics"]

DIAGNOSTIC_CONDITIONS = ("frame_0.0", "frame_0.5", "frame_0.9", "modality_ta", "modality_tv", "modality_av")


@torch.no_grad()
def confidence_diagnostics(run_dir: Path, split_name: str = "valid") -> dict:
    """What the confidence weights of the CASD model in ``run_dir/best.pt`` do on the synthetic
    data's ``split_name`` split (validation by default: nothing here looks at test data).

    - ``u_spread``: max - min over components of the mean uncertainty u_k (nats per dimension);
      with tau = 1 a spread of 0.2 gives weights within ~20 % of uniform;
    - ``max_weight``: mean over samples of max_k pi_k (uniform over 7 components: 1/7);
    - ``mae``: MAE of the mixture sum_k pi_k f(mu_k), of the plain mean of the 7 components'
      predictions, and of the {t,a,v} component alone, all inputs present;
    - ``rho_noise``: Spearman correlation of u of each single-modality component with the noise
      scale the generator planted in that modality (positive: noisier -> less confident);
    - ``weights``: mean pi per component under a few evaluation conditions.
    """
    model, checkpoint = load_model(run_dir / "best.pt", torch.device("cpu"))
    metadata = checkpoint["metadata"]
    synthetic = recorded_synthetic(metadata)
    if checkpoint["model_kind"] != "casd" or metadata["task"] != "regression" or synthetic is None:
        raise ValueError(f"{run_dir}: diagnostics need a CASD regression model trained on the synthetic data")
    raw = generate_synthetic(synthetic)[split_name]
    split = split_from_mmsa(raw, "regression")

    def mixture_of(degraded, present=None):
        batch = batch_to(next(iter(make_loader(degraded, degraded.num_samples, shuffle=False, present=present))), "cpu")
        return model(batch)

    mixture = mixture_of(split)
    u = mixture.component_uncertainty()  # [N, K]
    outputs = model.predictor(mixture.mu).float().squeeze(-1)  # [N, K]: each component's prediction
    labels = torch.as_tensor(split.labels)
    mae = lambda p: float((p - labels).abs().mean())  # noqa: E731
    # The run's validation seeds, at every frame rate (model selection uses only some of them).
    eval_seed = checkpoint["config"]["evaluation"]["seed"] if checkpoint["format"] > 1 else EvalConfig.seed
    conditions = {c.name: c for c in evaluation_conditions(eval_seed + VALID_SEED_OFFSET)}
    weights = {}
    for name in DIAGNOSTIC_CONDITIONS:
        weights[name] = mixture_of(*apply_condition(split, conditions[name])).weights.mean(0).tolist()
    u_mean = u.mean(0)
    return {
        "u_spread": float(u_mean.max() - u_mean.min()),
        "max_weight": float(mixture.weights.max(1).values.mean()),
        "mae": {"mixture": mae((mixture.weights * outputs).sum(1)), "uniform_mean": mae(outputs.mean(1)),
                "tav_component": mae(outputs[:, COMBINATION_NAMES.index("tav")])},
        "rho_noise": {m[0]: spearman(u[:, i].numpy(), raw["noise_scale"][:, i])
                      for i, m in enumerate(MODALITIES)},
        "weights": weights,
    }


def write_diagnostics(out: Path, variants: list[str], folders: dict[str, Path]) -> None:
    """diagnostics.json/.md for the runs ``out/<variant>/<folder>`` (CASD-kind variants only);
    ``folders`` maps each run's label ("1111", or "0/1111" with data seeds) to its folder."""
    runs = {v: {key: confidence_diagnostics(out / v / folder) for key, folder in folders.items()} for v in variants}
    (out / "diagnostics.json").write_text(json.dumps(runs, indent=2))
    mean = lambda values: f"{np.mean(values):.3f}"  # noqa: E731
    lines = ["# Confidence-weight diagnostics (validation split)", "",
             "Means over runs (seeds); see `casd.study.confidence_diagnostics` for the definitions.", "",
             "| variant | u spread | mean max π (1/7 = 0.143) | MAE mixture | MAE plain mean | MAE {t,a,v} alone "
             "| ρ(u_t, σ_t) | ρ(u_a, σ_a) | ρ(u_v, σ_v) |", "|---|" + "---|" * 8]
    for v, per_seed in runs.items():
        d = list(per_seed.values())
        lines.append(f"| {v} | {mean([x['u_spread'] for x in d])} | {mean([x['max_weight'] for x in d])} | "
                     + " | ".join(mean([x["mae"][k] for x in d]) for k in ("mixture", "uniform_mean", "tav_component"))
                     + " | " + " | ".join(mean([x["rho_noise"][m] for x in d]) for m in "tav") + " |")
    lines += ["", "Mean weight π per component under missing modalities:", "",
              "| variant | condition | " + " | ".join(COMBINATION_NAMES) + " |", "|---|---|" + "---|" * len(COMBINATION_NAMES)]
    for v, per_seed in runs.items():
        for name in DIAGNOSTIC_CONDITIONS:
            w = np.mean([x["weights"][name] for x in per_seed.values()], axis=0)
            lines.append(f"| {v} | {name} | " + " | ".join(f"{x:.2f}" for x in w) + " |")
    (out / "diagnostics.md").write_text("\n".join(lines) + "\n")
