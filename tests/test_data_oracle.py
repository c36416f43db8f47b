"""The synthetic oracle (casd.data.oracle) against Monte Carlo of the generator itself.

If Var(s | x) and E(s | x) are the exact Gaussian posterior, the standardised residual
(s - E(s | x)) / sqrt(Var(s | x)) of samples drawn by the generator has unit variance overall
and within every band of the oracle's variance: that checks the formula against the
generative model, condition by condition, with no second implementation of it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from casd.data import evaluation_conditions, generate_synthetic, split_from_mmsa
from casd.data.missing import condition_keep_masks, frame_keep_masks, frame_missing
from casd.data.oracle import oracle_mae, oracle_variance, sentiment_posterior
from casd.data.synthetic import SyntheticConfig, planted_structure

CONDITIONS = {c.name: c for c in evaluation_conditions(7)}
BASE = SyntheticConfig(num_train=4, num_valid=4, num_test=3000, neg_inf_fraction=0.0)


@pytest.fixture(scope="module", params=[(0.3, True), (2.0, True), (0.3, False)],
                ids=["speaker0.3", "speaker2.0", "easy-encoder"])
def generated(request):
    speaker_scale, turning = request.param
    config = dataclasses.replace(BASE, speaker_scale=speaker_scale, turning=turning)
    return config, generate_synthetic(config)["test"]


@pytest.mark.parametrize("condition", [None, "frame_0.5", "frame_0.9", "modality_t", "modality_av"])
def test_posterior_is_calibrated_against_the_generator(generated, condition):
    config, raw = generated
    mean, variance = sentiment_posterior(raw, config, CONDITIONS.get(condition))
    z2 = (raw["latent_sentiment"] - mean) ** 2 / variance
    # mean of 3000 chi^2_1 draws: sd sqrt(2 / 3000) = 0.026; per quartile 0.052
    assert z2.mean() == pytest.approx(1.0, abs=0.1)
    quartile = np.digitize(variance, np.quantile(variance, [0.25, 0.5, 0.75]))
    for q in range(4):
        assert z2[quartile == q].mean() == pytest.approx(1.0, abs=0.2), f"quartile {q}"
    # the oracle is informative: its posterior mean beats the prior by far
    assert np.mean((raw["latent_sentiment"] - mean) ** 2) < 0.75 * config.label_scale ** 2


def test_leaving_out_the_speaker_offset_is_miscalibrated():
    """The MC check has teeth: the same formula without the offset term fails it."""
    config = dataclasses.replace(BASE, speaker_scale=2.0)
    raw = generate_synthetic(config)["test"]
    mean, variance = sentiment_posterior(raw, dataclasses.replace(config, speaker_scale=0.0))
    assert np.mean((raw["latent_sentiment"] - mean) ** 2 / variance) > 3.0


def test_variance_orders_the_conditions():
    config = BASE
    raw = generate_synthetic(config)["test"]
    full = oracle_variance(raw, config)
    by_rate = [oracle_variance(raw, config, CONDITIONS[f"frame_{r:.1f}"]).mean() for r in (0.0, 0.3, 0.6, 0.9)]
    assert np.all(np.diff(by_rate) > 0), by_rate  # more frames dropped, less known
    np.testing.assert_allclose(oracle_variance(raw, config, CONDITIONS["modality_tav"]), full)
    # fewer modalities never help, sample by sample
    tv = oracle_variance(raw, config, CONDITIONS["modality_tv"])
    assert np.all(oracle_variance(raw, config, CONDITIONS["modality_t"]) >= tv - 1e-12)
    assert np.all(tv >= full - 1e-12)
    # the variance alone (no features) equals the one computed with the mean
    np.testing.assert_allclose(sentiment_posterior(raw, config, CONDITIONS["frame_0.5"])[1],
                               oracle_variance(raw, config, CONDITIONS["frame_0.5"]))
    # a noisier modality is less informative: text alone, by text noise
    text_only = oracle_variance(raw, config, CONDITIONS["modality_t"])
    rho = np.corrcoef(np.argsort(np.argsort(text_only)), np.argsort(np.argsort(raw["noise_scale"][:, 0])))[0, 1]
    assert rho > 0.8


def test_oracle_bad_input():
    config = BASE
    raw = dict(generate_synthetic(dataclasses.replace(config, num_test=5))["test"])
    with pytest.raises(ValueError, match="noise > 0"):
        oracle_variance(raw, dataclasses.replace(config, noise=(0.0, 1.0, 1.0)))
    del raw["noise_scale"]
    with pytest.raises(ValueError, match="noise_scale"):
        oracle_variance(raw, config)


def test_planted_structure_matches_the_data():
    config = dataclasses.replace(BASE, num_test=50, speaker_scale=0.0, noise=(1e-6, 1e-6, 1e-6))
    raw = generate_synthetic(config)["test"]
    structure = planted_structure(config)
    # noise-free text frame 0 is exactly [CLS]; frames lie in the planted 2-D subspace
    np.testing.assert_allclose(raw["text"][:, 0], np.broadcast_to(structure.cls, (50, config.text_dim)), atol=1e-4)
    audio = raw["audio"][:, 0]
    projection = audio @ structure.directions[1].T @ structure.directions[1]
    np.testing.assert_allclose(projection, audio, atol=1e-4)


def test_keep_masks_match_the_degraded_inputs():
    split = split_from_mmsa(generate_synthetic(dataclasses.replace(BASE, num_test=200))["test"])
    condition = CONDITIONS["frame_0.6"]
    degraded = frame_missing(split, condition.rate, condition.seed)
    for keep, name in zip(frame_keep_masks(split, condition.rate, condition.seed), ("text", "audio", "vision")):
        nonzero = np.abs(getattr(degraded, name)).sum(-1) > 0
        np.testing.assert_array_equal(keep, nonzero)
    for keep, name in zip(condition_keep_masks(split, CONDITIONS["modality_av"]), ("text", "audio", "vision")):
        if name == "text":
            assert not keep.any()
        else:
            lengths = getattr(split, f"{name}_lengths")
            np.testing.assert_array_equal(keep.sum(1), lengths)


def test_oracle_mae_and_what_reliability_is_worth():
    config = dataclasses.replace(BASE, num_test=1500)
    raw = generate_synthetic(config)["test"]
    mean, _ = sentiment_posterior(raw, config)
    full = oracle_mae(raw, config)
    assert full == pytest.approx(float(np.abs(mean - split_from_mmsa(raw).labels).mean()))
    blind = oracle_mae(raw, config, reliability_blind=True)
    assert blind > full + 0.05  # knowing which sample is noisy is worth a lot on this data
    assert oracle_mae(raw, config, CONDITIONS["frame_0.9"]) > full  # and so are the frames
