"""predictions.npz (casd.predictions): the quantity is called ``uncertainty``; files that call it
``confidence`` (written before the rename) read the same."""
import numpy as np
import pytest
import torch

from casd.data import evaluation_conditions
from casd.errors import DataError
from casd.evaluate import ConditionResult
from casd.model import Prediction
from casd.predictions import condition_names, read_predictions, save_predictions


def results(rng, n=6):
    labels = rng.normal(size=n).astype(np.float32)
    return [ConditionResult(condition, {"MAE": 0.0}, output=rng.normal(size=n).astype(np.float32),
                            uncertainty=rng.normal(size=n).astype(np.float32),
                            weights=rng.dirichlet(np.ones(7), size=n).astype(np.float32), labels=labels)
            for condition in evaluation_conditions()[:3]]


def test_round_trip_names_the_quantity_uncertainty(tmp_path):
    rng = np.random.default_rng(0)
    written = results(rng)
    save_predictions(tmp_path / "p.npz", written, np.array([f"id{i}" for i in range(6)]))
    read = read_predictions(tmp_path / "p.npz")
    assert condition_names(read) == [r.condition.name for r in written]
    for r in written:
        for key in ("output", "uncertainty", "weights"):
            np.testing.assert_array_equal(read[f"{r.condition.name}/{key}"], getattr(r, key))
    assert not any(key.endswith("/confidence") for key in read)
    assert read["ids"].tolist() == [f"id{i}" for i in range(6)]


def test_files_of_the_old_layout_read_with_the_new_name(tmp_path):
    ubar = np.array([0.3, 1.2, -0.4], dtype=np.float32)
    np.savez_compressed(tmp_path / "old.npz", ids=np.array(["a", "b", "c"]), labels=np.zeros(3),
                        **{"frame_0.0/output": np.ones(3), "frame_0.0/confidence": ubar,
                           "frame_0.0/weights": np.full((3, 7), 1 / 7)})
    read = read_predictions(str(tmp_path / "old.npz"))
    np.testing.assert_array_equal(read["frame_0.0/uncertainty"], ubar)
    assert "frame_0.0/confidence" not in read and condition_names(read) == ["frame_0.0"]


def test_ambiguous_or_missing_files_are_user_errors(tmp_path):
    np.savez(tmp_path / "both.npz", **{"frame_0.0/confidence": np.zeros(2), "frame_0.0/uncertainty": np.ones(2)})
    with pytest.raises(DataError, match="holds both"):
        read_predictions(tmp_path / "both.npz")
    with pytest.raises(DataError, match="no predictions file"):
        read_predictions(tmp_path / "none.npz")


def test_prediction_confidence_is_a_deprecated_alias_of_uncertainty():
    prediction = Prediction(torch.zeros(2), torch.tensor([0.5, 2.0]), torch.full((2, 7), 1 / 7))
    with pytest.warns(DeprecationWarning, match="use Prediction.uncertainty"):
        assert prediction.confidence is prediction.uncertainty
