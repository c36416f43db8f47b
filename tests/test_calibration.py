"""Held-out calibration of u (casd.calibration, formulation §4 "Held-out calibration of u")."""
from __future__ import annotations

import json

import pytest
import torch

import casd.calibration
from casd.baseline import LateFusionConfig, LateFusionModel
from casd.calibration import CalibrationConfig, calibrate_uncertainty, calibration_loss
from casd.checkpoint import read_checkpoint
from casd.config import RECORD_KEY, load_config
from casd.data import SyntheticConfig, TrainingMissingness, generate_synthetic, split_from_mmsa
from casd.errors import ConfigError
from casd.flags import config_from_argv
from casd.model import CASDModel, ModelConfig
from casd.train import main as train

DIMS = (64, 16, 24)  # the synthetic data's feature widths
TINY = ["--synthetic-samples", "48", "40", "32", "--epochs", "2", "--hidden", "8", "--heads", "2", "--embed-dim", "4",
        "--batch-size", "16", "--threads", "1", "--no-progress", "--calibration-epochs", "3"]


@pytest.fixture(scope="module")
def valid():
    raw = generate_synthetic(SyntheticConfig(num_train=4, num_valid=64, num_test=4))
    return split_from_mmsa(raw["valid"])


def model_with(likelihood: str = "laplace", **kwargs) -> CASDModel:
    torch.manual_seed(0)
    return CASDModel(ModelConfig(feature_dims=DIMS, hidden=8, heads=2, embed_dim=4, likelihood=likelihood, **kwargs))


@pytest.mark.parametrize("fit, expected", [
    ("reliability", {"reliability.weight", "reliability.bias", "error_log_scale"}),
    ("heads", {"head.log_sigma.weight", "head.log_sigma.bias", "head.nu_raw.weight", "head.nu_raw.bias",
               "error_log_scale"}),
])
def test_only_the_uncertainty_weights_move_and_the_loss_falls(valid, fit, expected):
    model = model_with()
    model.train()
    names = {id(p) for p in model.uncertainty_parameters(fit)}
    assert {name for name, p in model.named_parameters() if id(p) in names} == expected
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    learning = {name: p.requires_grad for name, p in model.named_parameters()}
    report = calibrate_uncertainty(model, valid, TrainingMissingness("mixed", 0.9),
                                   CalibrationConfig(fit=fit, epochs=5, lr=1e-2), "regression", torch.device("cpu"), seed=3)
    assert report["fit"] == fit and report["epochs"] == 5
    assert report["valid_nll_after"] < report["valid_nll_before"] - 1e-3
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (id(p) in names), name
        assert p.requires_grad == learning[name]  # restored: the shift stays frozen for training
    assert not model.reliability.weight.requires_grad
    assert model.training  # restored


def test_calibration_is_reproducible(valid):
    results = []
    for _ in range(2):
        model = model_with()
        calibrate_uncertainty(model, valid, TrainingMissingness("mixed", 0.9), CalibrationConfig(epochs=2),
                              "regression", torch.device("cpu"), seed=5)
        results.append(torch.cat([p.detach().flatten() for p in model.uncertainty_parameters("reliability")]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_calibration_loss_scores_each_available_component_on_its_own(valid):
    """The loss is the mean over available components of the Laplace NLL: pi plays no part."""
    model = model_with().eval()
    batch = {k: v[:8] for k, v in next(iter(casd.calibration.make_loader(valid, 8, shuffle=False))).items()}
    batch["present"] = torch.tensor([[1, 0, 1]] * 8, dtype=torch.bool)  # components {t}, {v}, {t,v}
    with torch.no_grad():
        mixture = model(batch)
        f = model.predictor(mixture.mu).squeeze(-1)
        log_b = model.error_log_scale_of(mixture)
        nll = (batch["labels"].unsqueeze(1) - f).abs() / log_b.exp() + log_b  # [B, K]
        expected = nll[:, [0, 2, 4]].mean(1).mean()  # t, v, tv in casd.modalities.COMBINATIONS order
        torch.testing.assert_close(calibration_loss(model, batch, "regression"), expected)


@pytest.mark.parametrize("make", [lambda: model_with("point"),
                                  lambda: LateFusionModel(LateFusionConfig(feature_dims=DIMS, hidden=8, heads=2))],
                         ids=["point-likelihood", "late-fusion"])
def test_models_without_a_laplace_scale_are_left_alone(valid, make):
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    assert calibrate_uncertainty(model, valid, TrainingMissingness(), CalibrationConfig(), "regression",
                                 torch.device("cpu"), seed=0) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_zero_epochs_is_off(valid):
    assert calibrate_uncertainty(model_with(), valid, TrainingMissingness(), CalibrationConfig(epochs=0),
                                 "regression", torch.device("cpu"), seed=0) is None


@pytest.mark.parametrize("flags, named", [(["--calibration-epochs", "-1"], "--calibration-epochs"),
                                          (["--calibration-fit", "everything"], "--calibration-fit"),
                                          (["--calibration-lr", "0"], "--calibration-lr"),
                                          (["--calibration-lr", "nan"], "--calibration-lr")])
def test_bad_values_name_their_flag(flags, named):
    with pytest.raises(ConfigError, match=named):
        config_from_argv(flags)


def test_a_run_recorded_before_calibration_reads_as_uncalibrated(tmp_path):
    """A run's config.json without the section did not calibrate; a hand-written file keeps the default."""
    recorded = {"train": {"epochs": 3}, RECORD_KEY: {"model_config": {"frame_scale": True}}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(recorded))
    assert load_config(path).calibration.epochs == 0
    path.write_text(json.dumps({"train": {"epochs": 3}}))
    assert load_config(path).calibration.epochs == CalibrationConfig().epochs


def test_a_run_recorded_before_the_reliability_shift_refit_the_heads(tmp_path):
    """A calibration section without ``fit`` is issue 11's second round: it refit the heads."""
    recorded = {"calibration": {"epochs": 10, "lr": 3e-3, "batch_size": 64},
                RECORD_KEY: {"model_config": {"frame_scale": True}}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(recorded))
    calibration = load_config(path).calibration
    assert (calibration.fit, calibration.epochs, calibration.lr) == ("heads", 10, 3e-3)
    path.write_text(json.dumps({"calibration": {"epochs": 10}}))  # hand-written: today's default
    assert load_config(path).calibration.fit == CalibrationConfig().fit


def test_a_run_calibrates_once_and_records_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train([*TINY, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["calibration"]["epochs"] == 3
    assert read_checkpoint(out / "best.pt")["calibration"] == results["calibration"]
    assert "calibration" not in read_checkpoint(out / "last.pt")  # the training state stays as trained

    def fail(*args, **kwargs):
        raise AssertionError("calibrated twice")

    monkeypatch.setattr("casd.train.calibrate_uncertainty", fail)
    assert train([*TINY, "--out", str(out), "--resume"]) == 0  # best.pt holds the calibration
    assert json.loads((out / "results.json").read_text())["calibration"] == results["calibration"]


def test_the_study_recalibrates_a_finished_run_without_training_it_again(tmp_path, monkeypatch):
    from dataclasses import replace

    from casd.config import OutputConfig
    from casd.study.running import run_one

    out = tmp_path / "run"
    uncalibrated = config_from_argv([*TINY, "--calibration-epochs", "0", "--out", str(out)])
    first = run_one(uncalibrated)
    assert first["calibration"] is None
    calibrated = replace(config_from_argv(TINY), output=OutputConfig(dir=out))
    with pytest.raises(ConfigError, match="without --report-only to recalibrate"):
        run_one(calibrated, report_only=True)
    monkeypatch.setattr("casd.trainer.Trainer.train_epoch", lambda *a, **k: pytest.fail("trained again"))
    second = run_one(calibrated)
    assert second["calibration"]["epochs"] == 3 and second["history"] == first["history"]
    assert run_one(calibrated)["calibration"] == second["calibration"]  # now reused as it is
    with pytest.raises(ConfigError, match="another config"):
        run_one(replace(calibrated, train=replace(calibrated.train, lr=0.5)))


def test_a_checkpoint_recorded_before_the_easy_variant_fields_resumes(tmp_path):
    """Runs recorded without model.encoder and synthetic.turning ran the transformer on turning data."""
    from casd.checkpoint import check_resumable

    out = tmp_path / "run"
    assert train([*TINY, "--calibration-epochs", "0", "--out", str(out)]) == 0
    current = read_checkpoint(out / "last.pt")
    saved = read_checkpoint(out / "last.pt")
    del saved["config"]["model"]["encoder"], saved["config"]["data"]["synthetic"]["turning"]
    del saved["metadata"]["synthetic"]["turning"]
    assert check_resumable(saved, current, out / "last.pt") == []
    current["config"]["model"]["encoder"] = "linear"
    with pytest.raises(Exception, match="model.encoder: checkpoint 'transformer', now 'linear'"):
        check_resumable(saved, current, out / "last.pt")
