"""The input-reliability statistics and the log σ shift they give (casd.reliability)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from casd.calibration import CalibrationConfig, calibrate_uncertainty
from casd.data import SyntheticConfig, TrainingMissingness, generate_synthetic, split_from_mmsa
from casd.data.loader import SplitDataset
from casd.metrics import spearman
from casd.modalities import COMBINATIONS, MODALITIES
from casd.model import CASDModel, ModelConfig
from casd.reliability import NUM_STATISTICS, ReliabilityShift, input_statistics

DIMS = (5, 3, 6)  # odd widths


def random_batch(generator: torch.Generator, rows: int = 7, lengths=(9, 11, 6)) -> dict[str, torch.Tensor]:
    """Features of random loudness, random valid lengths (some 0), random dropped (zero) frames."""
    batch = {}
    for name, width, max_len in zip(MODALITIES, DIMS, lengths):
        loud = torch.exp(torch.randn(rows, max_len, 1, generator=generator))
        x = torch.randn(rows, max_len, width, generator=generator, dtype=torch.float64) * loud
        x[torch.rand(rows, max_len, generator=generator) < 0.3] = 0.0  # dropped frames
        valid = torch.randint(0, max_len + 1, (rows,), generator=generator)
        valid[0] = max_len
        x[1] = 0.0  # a sample with this modality absent altogether
        batch[name], batch[f"{name}_lengths"] = x.float(), valid
    return batch


def expected_statistics(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """The docstring's r_m, sample by sample, in float64."""
    rows = batch["text"].shape[0]
    out = np.zeros((rows, len(MODALITIES), NUM_STATISTICS))
    for m, name in enumerate(MODALITIES):
        x = batch[name].double().numpy()
        for b in range(rows):
            length = int(batch[f"{name}_lengths"][b])
            kept = [t for t in range(length) if np.any(x[b, t] != 0)]
            if not kept:
                continue
            loudness = [np.log(np.sqrt(np.mean(x[b, t] ** 2)) + 1e-3) for t in kept]
            out[b, m] = (len(kept) / length, np.mean(loudness), len(kept) ** -0.5)
    return out


def test_statistics_match_a_direct_computation():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch = random_batch(generator)
    statistics = input_statistics(batch)
    assert statistics.shape == (7, len(MODALITIES), NUM_STATISTICS) and statistics.dtype == torch.float32
    np.testing.assert_allclose(statistics.double().numpy(), expected_statistics(batch), rtol=1e-5, atol=1e-5)
    assert torch.all(statistics[1] == 0)  # nothing kept: no statistics


def test_each_component_sees_only_its_own_modalities():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    shift = ReliabilityShift()
    with torch.no_grad():
        shift.weight.normal_(generator=generator)
        shift.bias.normal_(generator=generator)
    batch = random_batch(generator)
    before = shift(batch)
    for m, name in enumerate(MODALITIES):
        louder = {**batch, name: batch[name] * 3.0}  # every kept frame 3x louder: loudness + log 3
        changed = (shift(louder) - before).abs().amax(dim=0) > 1e-4
        # sample 1 has no frame of any modality: only samples with kept frames can move
        assert changed.tolist() == [m in combo for combo in COMBINATIONS], name


def laplace_model() -> CASDModel:
    return CASDModel(ModelConfig(feature_dims=DIMS, hidden=8, heads=2, embed_dim=4, likelihood="laplace"))


def test_the_zero_shift_leaves_the_model_as_it_was():
    torch.manual_seed(torch.seed() % 2**31)
    model = laplace_model().eval()
    batch = random_batch(torch.Generator().manual_seed(3))
    batch["present"] = torch.ones(7, 3, dtype=torch.bool)
    with torch.no_grad():
        mixture = model(batch)
        _, log_sigma, _ = model.head(model.combine(model.modality_vectors(batch)))
    torch.testing.assert_close(mixture.log_sigma, log_sigma, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.reliability.parameters())


def test_a_state_dict_from_before_the_shift_loads_as_no_shift():
    model = laplace_model()
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("reliability.")}
    with torch.no_grad():
        model.reliability.weight.fill_(0.5)
        model.reliability.bias.fill_(-1.0)
    model.load_state_dict(old)  # strict
    assert torch.all(model.reliability.weight == 0) and torch.all(model.reliability.bias == 0)


def test_calibrating_the_shift_learns_that_louder_inputs_err_more():
    """Errors planted proportional to each sample's text loudness: the calibrated u must rank them.

    f is made 0 (the predictor's last layer zeroed), so each component's error is |y| = s_b |e_b| with
    s_b the factor the sample's text is scaled by; the Laplace NLL's optimum is log b = log s_b + const,
    and log s_b is the text's mean log frame scale up to a constant."""
    torch.manual_seed(torch.seed() % 2**31)
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    raw = generate_synthetic(SyntheticConfig(num_train=4, num_valid=192, num_test=4, text_dim=5, audio_dim=3,
                                             vision_dim=6))
    split = split_from_mmsa(raw["valid"])
    scale = np.exp(rng.uniform(np.log(0.2), np.log(1.2), split.num_samples))
    labels = np.clip(scale * rng.laplace(size=split.num_samples), -3, 3).astype(np.float32)
    text = (split.text / np.sqrt((split.text ** 2).mean(-1, keepdims=True) + 1e-12)) * scale[:, None, None]
    split = dataclasses.replace(split, text=text.astype(np.float32), labels=labels)
    model = laplace_model().eval()
    with torch.no_grad():
        model.predictor[-1].weight.zero_()
        model.predictor[-1].bias.zero_()

    def ranking() -> float:
        with torch.no_grad():
            u = model.predict(SplitDataset(split).tensors).uncertainty.numpy()
        return spearman(u, scale)

    assert abs(ranking()) < 0.5  # the network does not see loudness (no frame scale): the shift must
    report = calibrate_uncertainty(model, split, TrainingMissingness("mixed", 0.5),
                                   CalibrationConfig(epochs=30, lr=0.05), "regression", torch.device("cpu"), seed=1)
    assert report["valid_nll_after"] < report["valid_nll_before"]
    assert ranking() > 0.9


def test_only_a_laplace_model_has_a_shift_and_fits_are_named():
    point = CASDModel(ModelConfig(feature_dims=DIMS, hidden=8, heads=2, embed_dim=4, likelihood="point"))
    assert not hasattr(point, "reliability")
    with pytest.raises(ValueError, match="likelihood='laplace'"):
        point.uncertainty_parameters("reliability")
    with pytest.raises(ValueError, match="fit must be one of"):
        laplace_model().uncertainty_parameters("everything")
