"""validate_splits / validate_split: every data problem is one DataError line at load, before a model."""
import pickle

import numpy as np
import pytest

import casd.flags
import casd.train
from casd.data.errors import InvalidDataError
from casd.data.mmsa import SPLITS, Split, load_mmsa, split_from_mmsa
from casd.data.synthetic import SyntheticConfig, generate_synthetic
from casd.data.validate import LABEL_RANGES, MAX_CLASSES, DataDescription, validate_split, validate_splits
from casd.errors import ConfigError, DataError

import pickle_forge

SOURCE = "data.pkl"


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Split]:
    raw = generate_synthetic(SyntheticConfig(seed=2, num_train=40, num_valid=12, num_test=16))
    return {name: split_from_mmsa(raw[name]) for name in SPLITS}


@pytest.fixture(scope="module")
def classes() -> dict[str, Split]:
    raw = generate_synthetic(SyntheticConfig(seed=3, num_train=40, num_valid=12, num_test=16))
    return {name: split_from_mmsa(raw[name], "classification") for name in SPLITS}


def refused(splits, what, dataset="mosi", task="regression", error=InvalidDataError) -> str:
    with pytest.raises(error, match=what) as info:
        validate_splits(splits, dataset, task, SOURCE)
    message = str(info.value)
    assert isinstance(info.value, DataError if error is InvalidDataError else ConfigError)
    assert "\n" not in message and len(message) < 400, message
    return message


def with_split(splits, name, **changes) -> dict[str, Split]:
    return {**splits, name: splits[name].replace(**changes)}


def test_good_data_are_described(synthetic, classes):
    description = validate_splits(synthetic, "mosi", "regression", SOURCE)
    train = synthetic["train"]
    assert description == DataDescription(
        feature_dims=train.feature_dims, seq_lens=train.seq_lens, sizes={"train": 40, "valid": 12, "test": 16},
        label_range=(float(train.labels.min()), float(train.labels.max())))
    assert description.as_meta()["label_range"] == [float(train.labels.min()), float(train.labels.max())]
    assert validate_splits(synthetic, None, "regression", SOURCE).label_range == description.label_range
    described = validate_splits(classes, "mosi", "classification", SOURCE)
    assert described.num_classes == 3 and described.as_meta()["num_classes"] == 3
    assert "label_range" not in described.as_meta()


def test_sims_with_mosi_range_labels_is_refused(synthetic):
    # The synthetic labels, like MOSI's, span [-3, 3]: scored as SIMS they are out of range.
    message = refused(synthetic, r"data\.pkl split 'train': 'regression_labels' has \d+ label\(s\) outside "
                      r"\[-1, 1\], the range of --dataset sims", dataset="sims")
    assert "mosi [-3, 3]" in message
    assert validate_splits(synthetic, "mosei", "regression", SOURCE)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize("value, what", [(np.nan, "non-finite"), (np.inf, "non-finite"), (3.5, r"outside \[-3, 3\]"),
                                         (-7.0, r"sample 1 is -7")])
def test_bad_labels_in_any_split_are_refused(synthetic, split, value, what):
    labels = synthetic[split].labels.copy()
    labels[1] = value
    refused(with_split(synthetic, split, labels=labels), rf"data\.pkl split '{split}': 'regression_labels'.*{what}")


def test_sims_unimodal_labels_are_checked_too(synthetic):
    train = synthetic["train"]
    good = np.clip(train.labels / 3, -1, 1)
    extra = {"regression_labels_T": good.copy(), "regression_labels_A": good.copy()}
    extra["regression_labels_A"][4] = 1.5
    splits = {name: s.replace(labels=np.clip(s.labels / 3, -1, 1)) for name, s in synthetic.items()}
    splits["train"] = splits["train"].replace(extra_labels=extra)
    refused(splits, r"split 'train': 'regression_labels_A' has 1 label\(s\) outside \[-1, 1\]", dataset="sims")
    extra["regression_labels_A"][4] = 0.5
    assert validate_splits(splits, "sims", "regression", SOURCE).label_range[1] <= 1


def test_feature_width_mismatch_is_refused(synthetic):
    test = synthetic["test"]
    wider = test.replace(audio=np.concatenate([test.audio, test.audio[:, :, :1]], axis=2))
    refused(with_split(synthetic, "test", audio=wider.audio),
            r"split 'test': feature widths \(text, audio, vision\) \(\d+, 17, \d+\) differ from train's \(\d+, 16, \d+\)")


def test_empty_and_missing_splits_are_refused(synthetic):
    refused({**synthetic, "valid": synthetic["valid"].subset([])}, r"split 'valid': the split has no samples")
    refused({"train": synthetic["train"], "test": synthetic["test"]}, r"data\.pkl: missing split\(s\) \['valid'\]")


@pytest.mark.parametrize("modality", ["text", "audio", "vision"])
def test_a_modality_without_frames_is_refused(synthetic, modality):
    split = synthetic["test"]
    n, _, width = getattr(split, modality).shape
    empty = {modality: np.zeros((n, 0, width), np.float32), f"{modality}_lengths": np.zeros(n, np.int64)}
    if modality == "text":
        empty["text_bert"] = None
    refused(with_split(synthetic, "test", **empty), rf"split 'test': '{modality}' has shape \[{n}, 0, {width}\]")


def test_class_ids_are_checked_against_train(classes):
    labels = classes["train"].labels.copy()
    labels[0] = 10**6
    message = refused(with_split(classes, "train", labels=labels), r"split 'train': 'classification_labels' has 1 "
                      rf"class id\(s\) outside \[0, {MAX_CLASSES}\) \(sample 0 is 1000000\)", task="classification")
    assert "MAX_CLASSES" in message
    labels = classes["test"].labels.copy()
    labels[2] = 3  # train has classes 0, 1, 2
    refused(with_split(classes, "test", labels=labels),
            r"split 'test': .*outside \[0, 3\) \(sample 2 is 3\); train has classes 0..2", task="classification")
    labels[2] = -1
    refused(with_split(classes, "test", labels=labels), r"outside \[0, 3\)", task="classification")
    single = {name: s.replace(labels=np.zeros_like(s.labels)) for name, s in classes.items()}
    refused(single, "a single class", task="classification")
    floats = with_split(classes, "valid", labels=classes["valid"].labels.astype(np.float32))
    refused(floats, "integer class ids", task="classification")


def test_unknown_dataset_is_a_config_error(synthetic):
    refused(synthetic, "--dataset 'iemocap'", dataset="iemocap", error=ConfigError)


def test_validate_split_for_new_data():
    split = split_from_mmsa(pickle_forge.mmsa_file(seed=1)["test"], "classification")
    validate_split(split, "new.pkl split 'test'", "mosi", "classification", num_classes=3)
    with pytest.raises(InvalidDataError, match=r"new\.pkl split 'test'.*outside \[0, 2\)"):
        validate_split(split.replace(labels=np.full_like(split.labels, 2)), "new.pkl split 'test'", "mosi",
                       "classification", num_classes=2)
    validate_split(split.replace(labels=np.full_like(split.labels, 7)), "new.pkl", "mosi", "classification",
                   num_classes=2, labelled=False)  # placeholder labels of unlabelled data are not checked


def test_load_mmsa_checks_all_splits_and_the_data_set_kind(tmp_path):
    data = pickle_forge.mmsa_file(seed=4)
    path = tmp_path / "mosi.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert load_mmsa(path, dataset="mosi")["train"].num_samples == 4
    assert np.abs(data["train"]["regression_labels"]).max() > 1  # MOSI-like labels
    with pytest.raises(InvalidDataError, match=rf"{path} split 'train': 'regression_labels'.*--dataset sims"):
        load_mmsa(path, dataset="sims")
    data["test"]["vision"] = data["test"]["vision"][:, :, :1]
    path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(InvalidDataError, match=rf"{path} split 'test': feature widths"):
        load_mmsa(path)


@pytest.fixture
def no_model(monkeypatch):
    """Any model construction fails the test: the data must be refused before."""
    def build(*args, **kwargs):
        raise AssertionError("a model was built")
    monkeypatch.setattr(casd.train, "build_model_and_objective", build)


def test_train_refuses_sims_with_mosi_labels_before_a_model(no_model, tmp_path, capsys):
    code = casd.train.main(["--dataset", "sims", "--synthetic-samples", "30", "8", "8", "--out", str(tmp_path / "run"),
                            "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "synthetic(seed=0) split 'train': 'regression_labels'" in err and "--dataset sims" in err


def test_train_refuses_class_label_1e6_before_a_model(no_model, tmp_path, capsys):
    data = pickle_forge.mmsa_file(seed=5)
    data["train"]["classification_labels"][1] = 1e6
    path = tmp_path / "iemocap.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    code = casd.train.main(["--data", str(path), "--task", "classification", "--out", str(tmp_path / "run"),
                            "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{path} split 'train': 'classification_labels'" in err and "1000000" in err


def test_label_ranges_cover_the_cli_choices():
    choices = next(a.choices for a in casd.flags.build_parser()._actions if a.dest == "dataset")
    assert set(choices) == set(LABEL_RANGES)
