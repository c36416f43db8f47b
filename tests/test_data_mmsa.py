"""MMSA pickles -> Split (MMSA data_loader semantics), and the torch batches built from a Split."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from casd.data.loader import BATCH_KEYS, SplitDataset, batch_to, batches_from_split, make_loader
from casd.data.mmsa import SPLITS, Split, load_mmsa, split_from_mmsa
from casd.data.errors import InvalidDataError
from casd.data.synthetic import SyntheticConfig, generate_synthetic, write_synthetic
from casd.errors import DataError


def _bert(rng, lengths, max_len):
    ids = rng.integers(1000, 30000, size=(len(lengths), max_len)).astype(np.float64)
    mask = (np.arange(max_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
    ids *= mask
    return np.stack([ids, mask, np.zeros_like(mask)], axis=1)


def _unaligned(rng, n=6, lt=7, la=9, lv=5, sims=False):
    text_lengths = rng.integers(1, lt + 1, size=n)
    text = rng.standard_normal((n, lt, 4)) * (np.arange(lt)[None, :, None] < text_lengths[:, None, None])
    audio = rng.standard_normal((n, la, 3)).astype(np.float64)
    audio[0, 1, 2] = audio[n - 1, 0, 0] = -np.inf  # as in real COVAREP features
    raw = {
        "text": text.astype(np.float32), "text_bert": _bert(rng, text_lengths, lt),
        "audio": audio, "vision": rng.standard_normal((n, lv, 2)).astype(np.float32),
        "audio_lengths": [int(v) for v in rng.integers(1, la + 1, size=n)],  # MMSA stores lists
        "vision_lengths": rng.integers(1, lv + 1, size=n),
        "regression_labels": rng.uniform(-3, 3, size=(n, 1)).astype(np.float32),
        "classification_labels": rng.integers(0, 3, size=n).astype(np.float64),
        "id": np.array([f"v{i}$_${i % 3}" for i in range(n)], dtype=object),
        "raw_text": np.array([f"utterance {i}" for i in range(n)]),
    }
    if sims:
        for m in "TAV":
            raw[f"regression_labels_{m}"] = rng.uniform(-1, 1, size=n)
    return raw, text_lengths


def _write(tmp_path, splits, name="feat.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(splits, protocol=4))
    return path


def test_unaligned_file_matches_mmsa_semantics(tmp_path):
    rng = np.random.default_rng(0)
    raws = {name: _unaligned(rng, sims=True) for name in SPLITS}
    splits = load_mmsa(_write(tmp_path, {k: v[0] for k, v in raws.items()}))
    assert list(splits) == list(SPLITS)
    for name, (raw, text_lengths) in raws.items():
        split = splits[name]
        assert split.text.dtype == split.audio.dtype == split.vision.dtype == np.float32
        expected_audio = raw["audio"].astype(np.float32)
        expected_audio[expected_audio == -np.inf] = 0
        np.testing.assert_array_equal(split.audio, expected_audio)
        assert np.isfinite(split.audio).all()
        np.testing.assert_array_equal(split.text_lengths, text_lengths)
        np.testing.assert_array_equal(split.audio_lengths, raw["audio_lengths"])
        np.testing.assert_array_equal(split.vision_lengths, raw["vision_lengths"])
        assert split.labels.dtype == np.float32 and split.labels.shape == (6,)
        np.testing.assert_array_equal(split.labels, raw["regression_labels"][:, 0])
        assert sorted(split.extra_labels) == [f"regression_labels_{m}" for m in "ATV"]
        np.testing.assert_allclose(split.extra_labels["regression_labels_T"], raw["regression_labels_T"], rtol=1e-6)
        assert split.ids.tolist() == raw["id"].tolist() and split.raw_text[2] == "utterance 2"
        assert split.text_bert.shape == (6, 3, 7) and split.feature_dims == (4, 3, 2)
        assert split.seq_lens == (7, 9, 5)


def test_classification_labels_are_class_ids(tmp_path):
    raw, _ = _unaligned(np.random.default_rng(1))
    split = split_from_mmsa(raw, task="classification")
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.labels, raw["classification_labels"].astype(np.int64))
    raw["classification_labels"] = raw["classification_labels"] + 0.5
    with pytest.raises(InvalidDataError, match="integral"):
        split_from_mmsa(raw, task="classification")
    with pytest.raises(ValueError, match="unknown task"):
        split_from_mmsa(raw, task="ranking")


def test_aligned_lengths_come_from_the_text_mask():
    rng = np.random.default_rng(2)
    raw, text_lengths = _unaligned(rng, lt=8, la=8, lv=8)
    del raw["audio_lengths"], raw["vision_lengths"]  # aligned files: MMSA sums the text mask
    split = split_from_mmsa(raw)
    np.testing.assert_array_equal(split.audio_lengths, text_lengths)
    np.testing.assert_array_equal(split.vision_lengths, text_lengths)


def test_text_lengths_without_bert_use_the_last_nonzero_row():
    rng = np.random.default_rng(3)
    raw, text_lengths = _unaligned(rng, n=5, lt=8, la=8, lv=8)
    del raw["text_bert"], raw["audio_lengths"], raw["vision_lengths"]
    raw["text"][0, :, :] = 0
    raw["text"][1, :, :] = 0
    raw["text"][1, [0, 4], :] = rng.standard_normal((2, 4))  # an inner zero row is not the end
    expected = text_lengths.copy()
    expected[0], expected[1] = 0, 5
    split = split_from_mmsa(raw)
    np.testing.assert_array_equal(split.text_lengths, expected)
    np.testing.assert_array_equal(split.audio_lengths, expected)


@pytest.mark.parametrize("key, index, value, what", [
    ("audio_lengths", 0, 50, r"'audio_lengths' must hold whole numbers in \[0, 9\] .*; 1 do not \(sample 0: 50\)"),
    ("vision_lengths", 1, -3, r"'vision_lengths' must hold whole numbers in \[0, 5\] .*\(sample 1: -3\)"),
    ("vision_lengths", 2, 2.5, r"'vision_lengths'.*\(sample 2: 2.5\)"),
    ("vision_lengths", 0, np.nan, r"'vision_lengths'.*\(sample 0: nan\)"),
])
def test_lengths_outside_the_padded_length_are_refused(key, index, value, what):
    raw, _ = _unaligned(np.random.default_rng(4), la=9, lv=5)
    raw[key] = np.asarray(raw[key], dtype=np.float64)
    raw[key][index] = value
    with pytest.raises(InvalidDataError, match=r"^split: " + what):
        split_from_mmsa(raw)


def test_errors_name_file_split_and_key(tmp_path):
    rng = np.random.default_rng(5)
    good = {name: _unaligned(rng)[0] for name in SPLITS}

    def refused(data, name, what):
        path = _write(tmp_path, data, name)
        with pytest.raises(InvalidDataError, match=what) as info:
            load_mmsa(path)
        assert isinstance(info.value, DataError) and str(info.value).startswith(str(path))
        assert "\n" not in str(info.value)

    refused({"train": good["train"], "test": good["test"]}, "nosplit.pkl", r"nosplit\.pkl: missing split.*'valid'")
    refused([good["train"]], "list.pkl", r"list\.pkl: expected a dict of splits")

    broken = {k: dict(v) for k, v in good.items()}
    del broken["valid"]["vision"]
    refused(broken, "nokey.pkl", r"nokey\.pkl split 'valid': missing key 'vision'")

    broken = {k: dict(v) for k, v in good.items()}
    broken["test"]["regression_labels"] = broken["test"]["regression_labels"][:4]
    refused(broken, "count.pkl", r"count\.pkl split 'test'.*disagree.*regression_labels")

    broken = {k: dict(v) for k, v in good.items()}
    broken["train"]["audio"] = broken["train"]["audio"][:, :, 0]
    refused(broken, "rank.pkl", r"rank\.pkl split 'train'.*'audio'.*rank 3")

    raw = dict(good["train"])
    del raw["audio_lengths"]  # unaligned (La != Lt) without lengths: cannot be derived
    with pytest.raises(InvalidDataError, match="audio_lengths"):
        split_from_mmsa(raw)

    raw = dict(good["train"])
    raw["vision"] = raw["vision"].copy()
    raw["vision"][0, 0, 0] = np.nan
    with pytest.raises(InvalidDataError, match="'vision'.*non-finite"):
        split_from_mmsa(raw)
    assert split_from_mmsa(raw, nan_to_zero=True).vision[0, 0, 0] == 0


def _refused_split(raw, what, task="regression"):
    with pytest.raises(InvalidDataError, match=what) as info:
        split_from_mmsa(raw, task, where="f.pkl split 'train'")
    message = str(info.value)
    assert message.startswith("f.pkl split 'train': ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("change, what", [
    (lambda raw: raw.update(vision=np.zeros((6, 0, 2), np.float32)), r"'vision' has shape \[6, 0, 2\].*L >= 1"),
    (lambda raw: raw.update(audio=np.zeros((6, 9, 0))), r"'audio' has shape \[6, 9, 0\].*F >= 1"),
    (lambda raw: raw.update(text=np.zeros((0, 7, 4)), text_bert=np.zeros((0, 3, 7))), "no samples"),
    (lambda raw: raw.update(audio=np.array(["a"] * 6)), r"'audio' must hold numbers, got dtype <U1"),
    (lambda raw: raw.update(vision=[[[1.0]], [[1.0, 2.0]]]), "'vision' is not an array"),
    (lambda raw: raw.update(audio=np.full((6, 9, 3), 1e300)), "'audio' holds 162 non-finite"),
    (lambda raw: raw["regression_labels"].__setitem__((2, 0), np.nan),
     r"'regression_labels' must hold finite labels; 1 do not \(sample 2: nan\)"),
    (lambda raw: raw["regression_labels"].__setitem__((0, 0), np.inf), r"finite labels; 1 do not \(sample 0: inf\)"),
    (lambda raw: raw.update(regression_labels_T=np.full(6, np.nan)), "'regression_labels_T' must hold finite"),
    (lambda raw: raw["text_bert"].__setitem__((0, 1, 0), 2.0), "attention mask.*only 0 and 1"),
    (lambda raw: raw.update(id=np.array([object()] * 6)), None),
    (lambda raw: raw.pop("id"), "missing key 'id'"),
    (lambda raw: raw.update(regression_labels=np.zeros((6, 2))), r"must be \[N\] or \[N, 1\]"),
])
def test_split_problems_are_one_line_data_errors(change, what):
    raw, _ = _unaligned(np.random.default_rng(8))
    raw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in raw.items()}
    change(raw)
    if what is None:  # ids of arbitrary objects become strings, as MMSA's astype(str) would
        assert split_from_mmsa(raw).ids.dtype.kind == "U"
    else:
        _refused_split(raw, what)


@pytest.mark.parametrize("value, what", [(0.5, r"integral class ids; 1 do not \(sample 3: 0.5\)"),
                                         (np.nan, "finite labels"), (1e300, "integral class ids")])
def test_class_ids_must_be_whole_numbers(value, what):
    raw, _ = _unaligned(np.random.default_rng(9))
    raw["classification_labels"] = raw["classification_labels"].copy()
    raw["classification_labels"][3] = value
    _refused_split(raw, what, task="classification")


def test_subset_keeps_rows_together():
    raw, _ = _unaligned(np.random.default_rng(6), sims=True)
    split = split_from_mmsa(raw)
    rows = np.array([4, 1])
    part = split.subset(rows)
    assert part.num_samples == 2 and part.ids.tolist() == [split.ids[4], split.ids[1]]
    np.testing.assert_array_equal(part.audio, split.audio[rows])
    np.testing.assert_array_equal(part.text_bert, split.text_bert[rows])
    np.testing.assert_array_equal(part.extra_labels["regression_labels_A"],
                                  split.extra_labels["regression_labels_A"][rows])
    with pytest.raises(ValueError, match="audio_lengths"):
        split.replace(audio_lengths=split.audio_lengths[:3])


def test_synthetic_file_reads_back_through_the_restricted_loader(tmp_path):
    config = SyntheticConfig(seed=7, num_train=40, num_valid=10, num_test=12)
    path = tmp_path / "synthetic.pkl"
    write_synthetic(config, path)
    loaded = load_mmsa(path)
    direct = {name: split_from_mmsa(raw) for name, raw in generate_synthetic(config).items()}
    for name in SPLITS:
        for field in ("text", "audio", "vision", "text_lengths", "audio_lengths", "vision_lengths", "labels", "ids"):
            np.testing.assert_array_equal(getattr(loaded[name], field), getattr(direct[name], field))
    assert loaded["train"].num_samples == 40 and loaded["test"].num_samples == 12


# ---- torch side -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split() -> Split:
    return split_from_mmsa(generate_synthetic(SyntheticConfig(seed=3, num_train=50, num_valid=4, num_test=4))["train"])


def test_items_collate_with_default_collate_into_the_batch_dict(split):
    dataset = batches_from_split(split)
    assert isinstance(dataset, SplitDataset) and len(dataset) == 50
    batch = default_collate([dataset[i] for i in (7, 3, 11)])
    assert tuple(batch) == BATCH_KEYS
    assert batch["text"].shape == (3, *split.text.shape[1:]) and batch["text"].dtype == torch.float32
    assert batch["audio_lengths"].dtype == torch.int64 and batch["labels"].dtype == torch.float32
    assert batch["present"].dtype == torch.bool and batch["present"].all()
    assert batch["index"].tolist() == [7, 3, 11]
    np.testing.assert_array_equal(batch["vision"].numpy(), split.vision[[7, 3, 11]])
    np.testing.assert_array_equal(batch["labels"].numpy(), split.labels[[7, 3, 11]])
    fetched = dataset[[7, 3, 11]]  # the batched fast path gives the same dict
    assert all(torch.equal(batch[key], fetched[key]) for key in BATCH_KEYS)


def test_loader_covers_the_split_once_and_shuffles_reproducibly(split):
    def order(seed):
        loader = make_loader(split, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
        batches = list(loader)
        assert [len(b["index"]) for b in batches] == [16, 16, 16, 2]
        for b in batches:
            np.testing.assert_array_equal(b["text"].numpy(), split.text[b["index"].numpy()])
        return torch.cat([b["index"] for b in batches]).tolist()

    assert sorted(order(0)) == list(range(50))
    assert order(0) == order(0) and order(0) != order(1)
    sequential = make_loader(batches_from_split(split), batch_size=20, shuffle=False)
    assert torch.cat([b["index"] for b in sequential]).tolist() == list(range(50))


def test_loader_present_sampler_and_device(split, device):
    rng = np.random.default_rng(0)
    present = rng.random((50, 3)) > 0.5
    present[~present.any(axis=1), 0] = True
    loader = make_loader(split, batch_size=8, shuffle=False, present=present, sampler=[5, 9, 2])
    (batch,) = list(loader)
    assert batch["index"].tolist() == [5, 9, 2]
    np.testing.assert_array_equal(batch["present"].numpy(), present[[5, 9, 2]])
    moved = batch_to(batch, device)
    assert all(v.device.type == device.type for v in moved.values()) and batch["text"].device.type == "cpu"
    with pytest.raises(ValueError, match="sampler"):
        make_loader(split, batch_size=8, shuffle=True, sampler=[1])
    with pytest.raises(ValueError, match="present must be"):
        make_loader(split, batch_size=8, shuffle=False, present=present[:3])
    with pytest.raises(ValueError, match="at least one modality"):
        make_loader(split, batch_size=8, shuffle=False, present=np.zeros((50, 3), bool))
