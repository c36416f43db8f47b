"""The easy-encoder variant (issue 11, docs/study.md): non-turning synthetic data + a linear encoder.

On the default data the sentiment direction turns over the frames, so the mean frame is not a
sufficient statistic and only a temporal encoder can find the signal. With ``turning=False``
the mean valid frame is one, and ``--encoder linear`` reads it out linearly: whether CASD then
reaches the oracle's gain is a question about the fusion, not about the encoder.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from casd.data import SyntheticConfig, generate_synthetic, split_from_mmsa
from casd.data.synthetic import signal_pattern
from casd.encoders import ModalityEncoder, log_frame_scale
from casd.flags import config_from_argv
from casd.model import CASDModel, ModelConfig
from test_data_synthetic import _corr, _features, _ridge_predict

EASY = SyntheticConfig(turning=False)


@pytest.fixture(scope="module")
def both():
    return {turning: generate_synthetic(dataclasses.replace(SyntheticConfig(), turning=turning))
            for turning in (True, False)}


def test_only_the_pattern_changes(both):
    """Same labels, noise scales, lengths and speakers: the variant is paired with the default data."""
    for split in ("train", "valid", "test"):
        turning, easy = both[True][split], both[False][split]
        for key in ("regression_labels", "latent_sentiment", "noise_scale", "audio_lengths", "vision_lengths"):
            np.testing.assert_array_equal(turning[key], easy[key])
        assert not np.array_equal(turning["text"], easy["text"])


def test_signal_pattern_constant_or_turning():
    lengths = np.array([5, 8, 3])
    a, b = signal_pattern(lengths, 8, inner=(1, 1), turning=False)
    carries = (np.arange(8)[None] >= 1) & (np.arange(8)[None] < lengths[:, None] - 1)
    np.testing.assert_array_equal(a, carries.astype(float))
    assert not b.any()
    a, b = signal_pattern(lengths, 8, inner=(1, 1), turning=True)
    np.testing.assert_allclose(a ** 2 + b ** 2, carries.astype(float), atol=1e-12)  # unit direction where it carries
    assert (a[carries] > 0).any() and (a[carries] < 0).any()  # it turns: u_m first, -u_m at the end


def test_the_mean_frame_suffices_only_without_turning(both):
    """A ridge readout of the mean text frame gets what a temporal readout gets on the easy data,
    and far less on the turning data (where a cos-weighted pool is needed)."""
    corr = {}
    for turning, raw in both.items():
        train, test = split_from_mmsa(raw["train"]), split_from_mmsa(raw["test"])
        pooled = _corr(_ridge_predict(_features(train, "text"), train.labels, _features(test, "text")), test.labels)
        temporal = _corr(_ridge_predict(_features(train, "text", True), train.labels,
                                        _features(test, "text", True)), test.labels)
        corr[turning] = (pooled, temporal)
    easy_pooled, easy_temporal = corr[False]
    assert easy_pooled > easy_temporal - 0.02, corr
    assert easy_pooled > corr[True][0] + 0.05, corr


def test_linear_encoder_is_a_linear_readout_of_the_mean_valid_frame():
    torch.manual_seed(0)
    encoder = ModalityEncoder(6, 5, 1, 1, 0.0, frame_scale=True, kind="linear")
    x = torch.randn(4, 7, 6)
    lengths = torch.tensor([7, 3, 1, 5])
    x[1, 3:] = 1e6  # padding must not leak into the pool
    x[2, 1:] = 3e5
    x[3, 5:] = -1e6
    frames = torch.cat([x, log_frame_scale(x)], -1)
    expected = torch.stack([encoder.project(frames[b, :n].mean(0)) for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(encoder(x, lengths), expected)


def test_encoder_kind_builds_and_is_checked():
    config = ModelConfig(feature_dims=(6, 4, 5), encoder="linear", hidden=8, heads=2)
    model = CASDModel(config)
    assert all(enc.kind == "linear" and not hasattr(enc, "temporal") for enc in model.encoders)
    with pytest.raises(ValueError, match="encoder must be one of"):
        ModelConfig(feature_dims=(6, 4, 5), encoder="lstm")


def test_flags_select_the_variant():
    config = config_from_argv(["--no-synthetic-turning", "--encoder", "linear"])
    assert config.data.synthetic.turning is False and config.model.encoder == "linear"
    default = config_from_argv([])
    assert default.data.synthetic.turning is True and default.model.encoder == "transformer"


def test_the_data_command_writes_the_variant(tmp_path):
    from casd.data.synthetic import _parser
    args = _parser().parse_args(["--out", str(tmp_path / "x.pkl"), "--no-turning"])
    assert args.turning is False
    assert _parser().parse_args(["--out", str(tmp_path / "x.pkl")]).turning is True
    with pytest.raises(ValueError, match="turning must be a bool"):
        SyntheticConfig(turning="false")
