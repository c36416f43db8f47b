"""The synthetic data's oracle: the exact posterior of the latent sentiment given the inputs and
the noise the generator planted (docs/data.md, "The oracle").

Given the per-sample noise scales sigma_im (the generator's `noise_scale` key), the signal
strengths a_m, the valid lengths and which frames a condition kept, the synthetic model is a
linear-Gaussian model in the latent sentiment s_i and the speaker offset b, so the posterior of
s_i is Gaussian with a closed-form variance. Its variance is the best uncertainty any model of
these inputs could report: ranking a model's errors by it gives the reference that a learned
uncertainty is compared with.

Derivation, one modality m of one sample (drop i, m). Project each kept frame t on the two
planted directions (orthonormal, so the projected noises are independent N(0, sigma^2)):

    y^u_t = a s c_t + b_u + sigma e_t,     y^v_t = a s d_t + b_v + sigma e'_t,

with c_t = cos(pi tau_t), d_t = sin(pi tau_t) on signal-carrying frames and c_t = d_t = 0 on
the text's [CLS]/[SEP] (their known vectors subtracted), and b_u, b_v ~ N(0, beta^2),
beta = speaker_scale. Integrating b out, y^u ~ N(a s c, Sigma) with Sigma = sigma^2 I + beta^2 1 1^T
over the n kept frames, and Sigma^{-1} = (I - beta^2 1 1^T / (sigma^2 + n beta^2)) / sigma^2. So
modality m contributes the Fisher information and score

    I_m = a^2 / sigma^2 * (sum_t (c_t^2 + d_t^2) - beta^2 ((sum_t c_t)^2 + (sum_t d_t)^2) / (sigma^2 + n beta^2))
    g_m = a / sigma^2 * (c.y^u + d.y^v - beta^2 ((sum c)(sum y^u) + (sum d)(sum y^v)) / (sigma^2 + n beta^2))

(sums over the kept frames; c_t^2 + d_t^2 = 1 on signal frames). The modalities are
independent given s (independent noise and offsets), and the prior is s ~ N(0, lambda^2),
lambda = label_scale, so

    Var(s | x) = 1 / (1 / lambda^2 + sum_m I_m),     E(s | x) = Var(s | x) * sum_m g_m.

A modality a condition removes contributes nothing; a frame condition removes the dropped
frames from the sums. Deliberate simplifications: the offset of a speaker is shared by its
clips (an oracle that pooled a speaker's clips could do slightly better; this one sees one
utterance, as a model does), and the rare `-inf` audio entry (zeroed by the loader) is ignored.
"""
from __future__ import annotations

import numpy as np

from casd.data.missing import EvalCondition, condition_keep_masks
from casd.data.mmsa import Split, split_from_mmsa
from casd.data.synthetic import SyntheticConfig, planted_structure, signal_pattern
from casd.modalities import MODALITIES

__all__ = ["sentiment_posterior", "oracle_variance", "oracle_mae", "signal_positions"]


def signal_positions(lengths: np.ndarray, max_len: int, text: bool,
                     turning: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The generator's pattern coefficients (a, b) [N, L] (casd.data.synthetic.signal_pattern):
    the text's first and last valid positions ([CLS], [SEP]) carry none."""
    return signal_pattern(lengths, max_len, (1, 1) if text else (0, 0), turning)


def _check(raw: dict, config: SyntheticConfig) -> None:
    if "noise_scale" not in raw:
        raise ValueError("the oracle needs the synthetic generator's `noise_scale` key; "
                         "it exists for synthetic data only")
    if min(config.noise) <= 0 or config.label_scale <= 0:
        raise ValueError("the oracle needs noise > 0 and label_scale > 0 (otherwise the posterior "
                         "is degenerate)")


def sentiment_posterior(raw: dict, config: SyntheticConfig, condition: EvalCondition | None = None,
                        *, with_mean: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """(E[s | x], Var[s | x]) per sample [N] of one raw synthetic split under `condition`
    (None: complete inputs). `config` must be the one that generated `raw`. With
    ``with_mean=False`` only the variance is computed (it needs no features), mean is None.
    """
    _check(raw, config)
    split: Split = split_from_mmsa(raw)
    if condition is None:
        keeps = tuple(np.arange(x.shape[1])[None, :] < lengths[:, None]
                      for x, lengths in ((split.text, split.text_lengths), (split.audio, split.audio_lengths),
                                         (split.vision, split.vision_lengths)))
    else:
        keeps = condition_keep_masks(split, condition)
    structure = planted_structure(config) if with_mean else None
    sigma = raw["noise_scale"].astype(np.float64)  # [N, 3]
    beta2 = config.speaker_scale ** 2
    precision = np.full(split.num_samples, 1.0 / config.label_scale ** 2)
    score = np.zeros(split.num_samples)
    for m, name in enumerate(MODALITIES):
        x = getattr(split, name)
        lengths = getattr(split, f"{name}_lengths")
        keep = keeps[m].astype(np.float64)
        c, d = signal_positions(lengths, x.shape[1], text=(m == 0), turning=config.turning)
        c, d = c * keep, d * keep
        n = keep.sum(1)
        sum_c, sum_d = c.sum(1), d.sum(1)
        var = sigma[:, m] ** 2
        shrink = beta2 / (var + n * beta2)  # what the unknown speaker offset costs
        a = config.signal[m]
        precision += a ** 2 / var * ((c ** 2 + d ** 2).sum(1) - shrink * (sum_c ** 2 + sum_d ** 2))
        if with_mean:
            x = x.astype(np.float64).copy()
            if m == 0:  # subtract the known [CLS]/[SEP] vectors
                rows = np.arange(split.num_samples)
                x[:, 0] -= structure.cls
                x[rows, split.text_lengths - 1] -= structure.sep
            y_u, y_v = np.einsum("nlf,jf->jnl", x, structure.directions[m].astype(np.float64)) * keep
            score += a / var * ((c * y_u).sum(1) + (d * y_v).sum(1)
                                - shrink * (sum_c * y_u.sum(1) + sum_d * y_v.sum(1)))
    variance = 1.0 / precision
    return (variance * score if with_mean else None), variance


def oracle_variance(raw: dict, config: SyntheticConfig, condition: EvalCondition | None = None) -> np.ndarray:
    """Var[s | x] per sample [N]: the oracle's uncertainty under `condition` (higher = less sure)."""
    return sentiment_posterior(raw, config, condition, with_mean=False)[1]


def oracle_mae(raw: dict, config: SyntheticConfig, condition: EvalCondition | None = None,
               reliability_blind: bool = False) -> float:
    """MAE of the posterior mean E[s | x] against the labels: how well the best model could do.

    ``reliability_blind``: the same posterior with every sample's noise scale replaced by its
    modality's root-mean-square scale over the split, i.e. the best fusion that does not know
    which sample is reliable. The gap between the two is the gain that detecting reliability can
    buy (the easy-encoder variant of the study asks how much of it a model gets).
    """
    if reliability_blind:
        sigma = raw["noise_scale"].astype(np.float64)
        raw = {**raw, "noise_scale": np.broadcast_to(np.sqrt((sigma ** 2).mean(0)), sigma.shape)}
    mean, _ = sentiment_posterior(raw, config, condition)
    return float(np.abs(mean - split_from_mmsa(raw).labels).mean())
