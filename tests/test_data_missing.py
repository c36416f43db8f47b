"""Missingness: MMSA generate_m agreement, the 17 evaluation conditions, training views."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from casd.data.loader import SplitDataset
from casd.data.missing import (UNK_ID, EvalCondition, TrainingMissingness, apply_condition,
                               draw_kept_modalities, evaluation_conditions, frame_missing,
                               modality_missing)
from casd.data.mmsa import split_from_mmsa
from casd.data.synthetic import SyntheticConfig, generate_synthetic
from casd.modalities import COMBINATION_NAMES, MODALITIES, presence_from_name


def mmsa_generate_m(modality, input_mask, input_len, missing_rate, missing_seed, mode="text"):
    """A literal re-implementation of MMSA's MMDataset.generate_m (TFR-Net / LNLN)."""
    if mode == "text":
        input_len = np.argmin(input_mask, axis=1)
    elif mode in ("audio", "vision"):
        input_mask = np.array([np.array([1] * length + [0] * (modality.shape[1] - length)) for length in input_len])
    np.random.seed(missing_seed)
    missing_mask = (np.random.uniform(size=input_mask.shape) > missing_rate) * input_mask
    if mode == "text":
        for i, instance in enumerate(missing_mask):
            instance[0] = instance[input_len[i] - 1] = 1
        modality_m = missing_mask * modality + (100 * np.ones_like(modality)) * (input_mask - missing_mask)
    else:
        modality_m = missing_mask.reshape(modality.shape[0], modality.shape[1], 1) * modality
    return modality_m, input_len, input_mask, missing_mask


@pytest.fixture(scope="module")
def split():
    config = SyntheticConfig(seed=21, num_train=40, num_valid=2, num_test=2, text_len=10,
                             audio_len=12, vision_len=9, min_len_fraction=0.2)
    split = split_from_mmsa(generate_synthetic(config)["train"])
    assert (split.text_lengths == 10).any() and (split.text_lengths < 10).any()  # argmin quirk covered
    return split


@pytest.fixture
def global_numpy_state():
    state = np.random.get_state()
    yield
    np.random.set_state(state)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("seed", [(1111, 2222, 3333), 7])
def test_frame_missing_matches_mmsa_generate_m(split, rate, seed, global_numpy_state):
    seeds = seed if isinstance(seed, tuple) else (seed,) * 3
    before = {k: getattr(split, k).copy() for k in ("text", "text_bert", "audio", "vision")}
    out = frame_missing(split, rate, seed)

    ids, text_len, _, text_keep = mmsa_generate_m(split.text_bert[:, 0, :], split.text_bert[:, 1, :], None,
                                                  rate, seeds[0], mode="text")
    audio, *_ = mmsa_generate_m(split.audio, None, split.audio_lengths, rate, seeds[1], mode="audio")
    vision, *_ = mmsa_generate_m(split.vision, None, split.vision_lengths, rate, seeds[2], mode="vision")
    np.testing.assert_array_equal(out.text_bert[:, 0, :], ids)
    np.testing.assert_array_equal(out.text_bert[:, 1:, :], split.text_bert[:, 1:, :])  # mask row unchanged
    np.testing.assert_array_equal(out.text, split.text * text_keep[..., None])
    np.testing.assert_array_equal(out.audio, audio)
    np.testing.assert_array_equal(out.vision, vision)
    for name in MODALITIES:  # lengths unchanged, as MMSA
        np.testing.assert_array_equal(getattr(out, f"{name}_lengths"), getattr(split, f"{name}_lengths"))
    for key, value in before.items():  # the input split is untouched
        np.testing.assert_array_equal(getattr(split, key), value)


def test_without_text_bert_the_text_mask_comes_from_lengths(split):
    with_ids = frame_missing(split, 0.5, (3, 4, 5))
    without = frame_missing(split.replace(text_bert=None), 0.5, (3, 4, 5))
    assert without.text_bert is None
    np.testing.assert_array_equal(without.text, with_ids.text)
    np.testing.assert_array_equal(without.audio, with_ids.audio)


def test_rate_zero_is_identity_and_rate_one_keeps_only_cls_sep(split):
    same = frame_missing(split, 0.0, 5)
    for key in ("text", "text_bert", "audio", "vision"):
        np.testing.assert_array_equal(getattr(same, key), getattr(split, key))
    gone = frame_missing(split, 1.0, 5)
    assert not gone.audio.any() and not gone.vision.any()
    rows = np.arange(split.num_samples)
    last = split.text_lengths - 1
    kept = np.any(gone.text != 0, axis=2)
    assert kept.sum() == 2 * split.num_samples  # only [CLS] and [SEP] rows
    assert kept[:, 0].all() and kept[rows, last].all()
    inner = (np.arange(10)[None, :] > 0) & (np.arange(10)[None, :] < last[:, None])
    assert np.all(gone.text_bert[:, 0, :][inner] == UNK_ID)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.9])
def test_frame_drop_fraction_and_first_last_text_kept(split, rate):
    rows = np.arange(split.num_samples)
    kept_fractions = []
    for seed in range(5):
        out = frame_missing(split, rate, (seed, seed + 100, seed + 200))
        np.testing.assert_array_equal(out.text[:, 0], split.text[:, 0])
        np.testing.assert_array_equal(out.text[rows, split.text_lengths - 1], split.text[rows, split.text_lengths - 1])
        valid = np.arange(split.audio.shape[1])[None, :] < split.audio_lengths[:, None]
        kept_fractions.append(np.any(out.audio != 0, axis=2)[valid].mean())
    assert abs(np.mean(kept_fractions) - (1 - rate)) < 0.06


def test_modality_missing_zeroes_absent_modalities(split):
    for name in COMBINATION_NAMES:
        out, present = modality_missing(split, name)
        expected = np.asarray(presence_from_name(name))
        assert present.dtype == bool and present.shape == (split.num_samples, 3)
        assert np.all(present == expected)
        for m, modality in enumerate(MODALITIES):
            if expected[m]:
                np.testing.assert_array_equal(getattr(out, modality), getattr(split, modality))
            else:
                assert not getattr(out, modality).any() and getattr(split, modality).any()
        if not expected[0]:
            assert not out.text_bert[:, 0, :].any()


def test_evaluation_conditions_are_the_17_recorded_ones(split):
    conditions = evaluation_conditions(base_seed=1000)
    assert [c.name for c in conditions] == [f"frame_{k / 10:.1f}" for k in range(10)] + \
        [f"modality_{n}" for n in COMBINATION_NAMES]
    frames = conditions[:10]
    assert [c.rate for c in frames] == [k / 10 for k in range(10)]
    seeds = [s for c in frames for s in c.seed]
    assert len(set(seeds)) == 30 and min(seeds) == 1000
    assert evaluation_conditions(1000) == conditions and evaluation_conditions(1) != conditions
    out, present = apply_condition(split, frames[4])
    np.testing.assert_array_equal(out.audio, frame_missing(split, 0.4, frames[4].seed).audio)
    assert present.all()
    out, present = apply_condition(split, conditions[10 + COMBINATION_NAMES.index("av")])
    assert not out.text.any() and np.all(present == [False, True, True])


# ---- input validation ---------------------------------------------------------------------

bad_rates = st.one_of(st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=1 + 1e-9),
                      st.just(float("nan")), st.just(float("inf")), st.text(max_size=3), st.none())
unknown_names = st.text(max_size=6).filter(lambda s: s not in COMBINATION_NAMES + ("frame", "modality", "mixed"))


@settings(max_examples=40, deadline=None)
@given(rate=bad_rates)
def test_rates_outside_unit_interval_are_rejected(split, rate):
    with pytest.raises(ValueError, match="rate must be a real number in"):
        frame_missing(split, rate, 0)
    with pytest.raises(ValueError, match="rate must be a real number in"):
        TrainingMissingness("frame", rate)
    with pytest.raises(ValueError, match="rate must be a real number in"):
        EvalCondition("x", "frame", rate=rate, seed=(0, 1, 2))


@settings(max_examples=40, deadline=None)
@given(name=unknown_names)
def test_unknown_protocols_and_combinations_are_rejected(split, name):
    with pytest.raises(ValueError, match="unknown modality combination"):
        modality_missing(split, name)
    with pytest.raises(ValueError, match="unknown training protocol"):
        TrainingMissingness(name, 0.5)
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        EvalCondition("x", name, rate=0.1, seed=(0, 1, 2))
    with pytest.raises(ValueError, match="unknown modality combination"):
        EvalCondition("x", "modality", combination=name)


@pytest.mark.parametrize("seed", [-1, 2**32, (1, 2), (1, 2, 3.5), True])
def test_bad_seeds_are_rejected(split, seed):
    with pytest.raises(ValueError, match="seed must be"):
        frame_missing(split, 0.5, seed)


# ---- training views (torch) ---------------------------------------------------------------

def _batch(split, device, seed=0):
    rng = np.random.default_rng(seed)
    present = rng.random((split.num_samples, 3)) > 0.3
    present[~present.any(axis=1), 1] = True
    batch = SplitDataset(split, present)[list(range(split.num_samples))]
    return {k: v.to(device) for k, v in batch.items()}


def _generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("protocol", ["frame", "modality", "mixed"])
@pytest.mark.parametrize("rate", [0.0, 0.6, 1.0])
def test_training_view_keeps_input_and_one_modality(split, device, protocol, rate):
    batch = _batch(split, device)
    snapshot = {k: v.clone() for k, v in batch.items()}
    student = TrainingMissingness(protocol, rate).apply(batch, _generator(device, 3))
    assert set(student) == set(batch)
    for key, value in snapshot.items():
        assert torch.equal(batch[key], value), key  # the teacher view is untouched
    present = student["present"]
    assert present.dtype == torch.bool and present.any(dim=1).all()
    assert not (present & ~batch["present"]).any()  # never revives an absent modality
    for m, name in enumerate(MODALITIES):
        assert not student[name][~present[:, m]].any()
        assert student[name].data_ptr() != batch[name].data_ptr()
        for key in ("text_lengths", "labels", "index"):
            assert torch.equal(student[key], batch[key])
    if rate == 0.0:  # nothing dropped beyond what the teacher already lacks
        assert torch.equal(present, batch["present"])
        for m, name in enumerate(MODALITIES):
            assert torch.equal(student[name], batch[name] * batch["present"][:, m, None, None])


def test_training_view_is_reproducible(split, device):
    batch = _batch(split, device)
    policy = TrainingMissingness("mixed", 0.7)
    a, b = policy.apply(batch, _generator(device, 5)), policy.apply(batch, _generator(device, 5))
    c = policy.apply(batch, _generator(device, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_frame_protocol_rates_and_text_ends(split, device):
    batch = _batch(split, device)
    batch["present"] = torch.ones_like(batch["present"])
    rows = torch.arange(split.num_samples, device=device)
    last = batch["text_lengths"] - 1
    kept = []
    for seed in range(20):
        student = TrainingMissingness("frame", 0.8).apply(batch, _generator(device, seed))
        assert torch.equal(student["present"], batch["present"])
        assert torch.equal(student["text"][:, 0], batch["text"][:, 0])
        assert torch.equal(student["text"][rows, last], batch["text"][rows, last])
        valid = torch.arange(batch["vision"].shape[1], device=device)[None, :] < batch["vision_lengths"][:, None]
        kept.append((student["vision"] != 0).any(dim=2)[valid].float().mean().item())
    assert abs(np.mean(kept) - 0.6) < 0.05  # per-sample rate ~ U(0, 0.8): expected drop 0.4


def test_mixed_protocol_uses_both_kinds(split, device):
    batch = _batch(split, device)
    batch["present"] = torch.ones_like(batch["present"])
    student = TrainingMissingness("mixed", 0.9).apply(batch, _generator(device, 0))
    modality_rows = ~student["present"].all(dim=1)
    frame_rows = (student["audio"] != batch["audio"]).any(dim=(1, 2)) & student["present"].all(dim=1)
    assert modality_rows.any() and frame_rows.any()


def test_kept_modalities_follow_the_conditional_law(device):
    n = 20000
    present = torch.ones(n, 3, dtype=torch.bool, device=device)
    kept = draw_kept_modalities(present, 0.5, _generator(device, 0))
    sizes = kept.sum(dim=1).float()
    # drop each with p = 1/2 given >= 1 kept: |S| = 1, 2, 3 with probability 3/7, 3/7, 1/7
    for size, probability in ((1, 3 / 7), (2, 3 / 7), (3, 1 / 7)):
        assert abs((sizes == size).float().mean().item() - probability) < 0.015
    assert abs(kept.float().mean(dim=0) - kept.float().mean()).max() < 0.02  # symmetric in modalities
    partial = torch.tensor([[True, False, True]] * 4000, device=device)
    assert torch.equal(draw_kept_modalities(partial, 0.0, _generator(device, 1)), partial)
    single = draw_kept_modalities(partial, 1.0, _generator(device, 1))
    assert torch.all(single.sum(dim=1) == 1) and not single[:, 1].any()
    assert abs(single[:, 0].float().mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="at least one present"):
        draw_kept_modalities(torch.zeros(2, 3, dtype=torch.bool, device=device), 0.5, _generator(device, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_generator_on_wrong_device_is_rejected(split):
    batch = _batch(split, torch.device("cuda"))
    with pytest.raises(ValueError, match="generator is on"):
        TrainingMissingness().apply(batch, torch.Generator().manual_seed(0))
