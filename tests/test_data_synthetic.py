"""The synthetic data set: MMSA format, determinism, and planted structure that is learnable.

Learnability is checked without the main model: closed-form ridge regression on pooled
features of one modality (fit on train, scored on test).
"""

import numpy as np
import pytest

from casd.data.mmsa import SPLITS, split_from_mmsa
from casd.data.synthetic import CLS_ID, SEP_ID, SyntheticConfig, generate_synthetic, main

MMSA_KEYS = {"text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths",
             "regression_labels", "id", "raw_text"}
MODALITY_NAMES = ("text", "audio", "vision")


@pytest.fixture(scope="module")
def raw():
    return generate_synthetic(SyntheticConfig())


@pytest.fixture(scope="module")
def splits(raw):
    return {name: split_from_mmsa(raw[name]) for name in SPLITS}


def _pool(x, lengths, weight=None):
    valid = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float64)
    if weight is not None:
        valid = valid * weight
    return (x * valid[..., None]).sum(axis=1) / np.maximum(lengths, 1)[:, None]


def _cos_weight(x, lengths):
    tau = (np.arange(x.shape[1])[None, :] + 0.5) / np.maximum(lengths, 1)[:, None]
    return np.cos(np.pi * tau)


def _ridge_predict(train_x, train_y, test_x, lam=10.0):
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    design = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    w = np.linalg.solve(design.T @ design + lam * np.eye(design.shape[1]), design.T @ train_y)
    return np.c_[(test_x - mean) / std, np.ones(len(test_x))] @ w


def _features(split, name, temporal=False):
    x, lengths = getattr(split, name), getattr(split, f"{name}_lengths")
    pooled = _pool(x, lengths)
    return np.c_[pooled, _pool(x, lengths, _cos_weight(x, lengths))] if temporal else pooled


def _corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_mmsa_format_and_sizes(raw, splits):
    config = SyntheticConfig()
    assert set(raw) == set(SPLITS)
    for name in SPLITS:
        n = config.split_sizes[name]
        assert MMSA_KEYS <= set(raw[name])
        assert raw[name]["text"].shape == (n, config.text_len, config.text_dim)
        assert raw[name]["text_bert"].shape == (n, 3, config.text_len)
        assert raw[name]["audio"].shape == (n, config.audio_len, config.audio_dim)
        assert raw[name]["vision"].shape == (n, config.vision_len, config.vision_dim)
        assert raw[name]["noise_scale"].shape == (n, 3)
        assert splits[name].num_samples == n
    # text_dim is the largest, sequences short enough for a CPU job
    assert config.text_dim > max(config.audio_dim, config.vision_dim)
    assert max(config.text_len, config.audio_len, config.vision_len) <= 40


def test_labels_look_like_mosi(raw):
    labels = np.concatenate([raw[name]["regression_labels"] for name in SPLITS])
    assert labels.min() >= -3 and labels.max() <= 3
    assert 0.02 < np.mean(labels == 0) < 0.2  # some exact zeros (Has0 vs Non0 metrics differ)
    grid = labels * SyntheticConfig().annotators  # mean of integer ratings
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)
    assert len(np.unique(labels)) > 20 and 0.35 < np.mean(labels > 0) < 0.65
    assert np.all(raw["train"]["classification_labels"] == np.sign(raw["train"]["regression_labels"]) + 1)


def test_lengths_tokens_and_padding(raw, splits):
    train, split = raw["train"], splits["train"]
    for name in MODALITY_NAMES:
        lengths = getattr(split, f"{name}_lengths")
        assert len(np.unique(lengths)) > 5  # lengths vary per sample
        x = getattr(split, name)
        beyond = np.arange(x.shape[1])[None, :] >= lengths[:, None]
        assert np.all(x[beyond] == 0)  # zero padding after the valid length
    rows = np.arange(split.num_samples)
    ids = train["text_bert"][:, 0, :]
    assert np.all(ids[:, 0] == CLS_ID) and np.all(ids[rows, split.text_lengths - 1] == SEP_ID)
    np.testing.assert_array_equal(split.text_lengths, train["text_bert"][:, 1, :].sum(axis=1))
    assert len(set(train["id"])) == split.num_samples
    speakers = [{i.split("$_$")[0] for i in raw[name]["id"]} for name in SPLITS]
    assert not (speakers[0] & speakers[1]) and not (speakers[0] & speakers[2])  # speaker-disjoint


def test_some_audio_is_minus_inf_like_real_files(raw):
    audio = np.concatenate([raw[name]["audio"] for name in SPLITS])
    assert 0 < np.isneginf(audio).any(axis=(1, 2)).sum() < 0.1 * len(audio)
    assert np.isfinite(raw["train"]["text"]).all() and np.isfinite(raw["train"]["vision"]).all()
    clean = generate_synthetic(SyntheticConfig(num_train=50, num_valid=5, num_test=5, neg_inf_fraction=0.0))
    assert not np.isneginf(clean["train"]["audio"]).any()


def test_same_seed_same_arrays_different_seed_different():
    small = dict(num_train=60, num_valid=10, num_test=10)
    a, b = generate_synthetic(SyntheticConfig(seed=11, **small)), generate_synthetic(SyntheticConfig(seed=11, **small))
    c = generate_synthetic(SyntheticConfig(seed=12, **small))
    for name in SPLITS:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])
    assert not np.array_equal(a["train"]["text"], c["train"]["text"])
    assert not np.array_equal(a["test"]["regression_labels"], c["test"]["regression_labels"])
    # Each split draws from its own stream: resizing the test split leaves train unchanged.
    d = generate_synthetic(SyntheticConfig(seed=11, num_train=60, num_valid=10, num_test=30))
    np.testing.assert_array_equal(a["train"]["audio"], d["train"]["audio"])


def test_text_alone_is_learnable_and_strongest(splits):
    train, test = splits["train"], splits["test"]
    corr = {name: _corr(_ridge_predict(_features(train, name), train.labels, _features(test, name)), test.labels)
            for name in MODALITY_NAMES}
    assert corr["text"] > 0.45, corr
    assert corr["text"] > corr["audio"] + 0.05 and corr["text"] > corr["vision"] + 0.05, corr
    assert min(corr["audio"], corr["vision"]) > 0.2, corr  # weaker, still informative
    fused_train = np.concatenate([_features(train, n) for n in MODALITY_NAMES], axis=1)
    fused_test = np.concatenate([_features(test, n) for n in MODALITY_NAMES], axis=1)
    fused = _corr(_ridge_predict(fused_train, train.labels, fused_test), test.labels)
    assert fused > corr["text"] + 0.03, (fused, corr)  # the other modalities add information


def test_signal_is_temporal_not_in_one_frame(splits):
    train, test = splits["train"], splits["test"]
    pooled = _corr(_ridge_predict(_features(train, "text"), train.labels, _features(test, "text")), test.labels)
    temporal = _corr(_ridge_predict(_features(train, "text", True), train.labels,
                                    _features(test, "text", True)), test.labels)
    assert temporal > pooled + 0.05, (temporal, pooled)  # the time course carries signal

    def middle_frame(split):
        return split.text[np.arange(split.num_samples), split.text_lengths // 2]

    single = _corr(_ridge_predict(middle_frame(train), train.labels, middle_frame(test)), test.labels)
    assert single < 0.6 * pooled, (single, pooled)  # one frame has low SNR


def test_noise_level_predicts_per_modality_error(raw, splits):
    """Confidence is informative: a modality's predictor is much worse on its noisiest samples."""
    train, test = splits["train"], splits["test"]
    for m, name in enumerate(MODALITY_NAMES):
        prediction = _ridge_predict(_features(train, name), train.labels, _features(test, name))
        sigma = raw["test"]["noise_scale"][:, m]
        quiet, loud = sigma <= np.quantile(sigma, 0.25), sigma >= np.quantile(sigma, 0.75)
        corr_quiet = _corr(prediction[quiet], test.labels[quiet])
        corr_loud = _corr(prediction[loud], test.labels[loud])
        assert corr_quiet > corr_loud + 0.2, (name, corr_quiet, corr_loud)
        error = np.abs(prediction - test.labels)
        assert error[loud].mean() > 1.1 * error[quiet].mean(), name
    # the noise scales are heavy-tailed and independent across modalities
    scales = raw["train"]["noise_scale"]
    assert np.all(np.quantile(scales, 0.99, axis=0) > 3 * np.median(scales, axis=0))
    assert np.abs(np.corrcoef(np.log(scales).T)[np.triu_indices(3, 1)]).max() < 0.15


@pytest.mark.parametrize("bad", [dict(num_train=0), dict(text_len=2), dict(audio_dim=1),
                                 dict(neg_inf_fraction=1.5), dict(noise_dof=0.0),
                                 dict(signal=(1.0, 0.5)), dict(noise=(1.0, -1.0, 1.0))])
def test_config_rejects_bad_knobs(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_cli_writes_a_loadable_file(tmp_path, capsys):
    from casd.data.mmsa import load_mmsa

    out = tmp_path / "syn.pkl"
    main(["--out", str(out), "--seed", "4", "--num-train", "30", "--num-valid", "6", "--num-test", "8",
          "--signal", "1.0", "0.2", "0.1"])
    assert "wrote" in capsys.readouterr().out
    splits = load_mmsa(out)
    assert [splits[n].num_samples for n in SPLITS] == [30, 6, 8]
    expected = split_from_mmsa(generate_synthetic(SyntheticConfig(seed=4, num_train=30, num_valid=6, num_test=8,
                                                                  signal=(1.0, 0.2, 0.1)))["train"])
    np.testing.assert_array_equal(splits["train"].audio, expected.audio)
