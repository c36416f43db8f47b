"""The issue-11 design options (formulation §2.1, §2.2, §4, §8): what each one changes, in isolation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from casd.calibration import CalibrationConfig
from casd.checkpoint import recorded_before_issue_11
from casd.config import RunConfig, load_config
from casd.distillation import ComponentDistillation, GlobalBatchDistillation, distillation_loss
from casd.encoders import ModalityEncoder, log_frame_scale
from casd.errors import ConfigError
from casd.flags import config_from_argv
from casd.kernels import StudentTMixture, mixture_logpdf_reference, row_weights, uncertainty
from casd.layers import ConsistencyDistillationLoss
from casd.model import GAUSSIAN_NU, CASDModel, ModelConfig
from casd.objective import FIRST_FORMULATION, CASDObjective, ObjectiveConfig, task_loss
from casd.serialize import to_dict
from casd.study.running import VARIANTS

from test_model import DIMS, random_batch


def _mixture(gen, batch=5, components=7, dim=4, absent=None):
    log_pi = torch.log_softmax(torch.randn(batch, components, generator=gen), -1)
    if absent is not None:
        log_pi = torch.log_softmax(log_pi.masked_fill(absent, float("-inf")), -1)
    return StudentTMixture(torch.randn(batch, components, dim, generator=gen),
                           0.3 * torch.randn(batch, components, dim, generator=gen),
                           3 + 5 * torch.rand(batch, components, generator=gen), log_pi)


def _model(**kwargs) -> CASDModel:
    return CASDModel(ModelConfig(feature_dims=DIMS, hidden=8, heads=2, embed_dim=4, dropout=0.0, **kwargs))


# --- formulation §2.1: the encoders see each frame's scale ---------------------------------------
def test_log_frame_scale_sees_what_layernorm_removes(gen):
    x = torch.randn(1, 6, 16, generator=gen).repeat(2, 1, 1)
    x[1] *= 10.0
    x[0, 3] = 0.0  # a dropped frame
    scale = log_frame_scale(x)
    assert scale.shape == (2, 6, 1)
    assert (scale[1] - scale[0]).abs()[[0, 1, 2, 4, 5]].sub(math.log(10)).abs().max() < 0.01
    assert scale[0, 3, 0] == pytest.approx(math.log(1e-3))
    lengths = torch.tensor([6, 6])
    same = torch.stack([x[1] / 10, x[1]])  # equal after the per-frame LayerNorm
    h = ModalityEncoder(16, 8, 1, 2, 0.0, frame_scale=True).eval()(same, lengths)
    assert not torch.allclose(h[0], h[1], atol=1e-4)  # only the scale channel tells them apart
    plain = ModalityEncoder(16, 8, 1, 2, 0.0).eval()
    torch.testing.assert_close(plain(same, lengths)[0], plain(same, lengths)[1], atol=1e-4, rtol=0)


# --- formulation §2.2: availability ---------------------------------------------------------------
def test_availability_inputs_keeps_every_component():
    torch.manual_seed(0)
    batch = random_batch(2, torch.tensor([[True, False, False], [False, True, True]]))
    assert torch.isinf(_model()(batch).log_pi).any()
    assert torch.isfinite(_model(availability="inputs")(batch).log_pi).all()
    with pytest.raises(ValueError, match="availability"):
        ModelConfig(feature_dims=DIMS, availability="guess")


def test_per_component_distillation_sees_only_what_inputs_change():
    """Under the hard mask, dropping a modality leaves the remaining components as they were: the
    per-component L_cd is exactly 0 (the issue's diagnosis). Lost frames change the components,
    and so do absent modalities when every component is computed from the inputs."""
    torch.manual_seed(3)
    objective = CASDObjective(ObjectiveConfig(num_samples=4, lambda_cd=1.0))
    teacher = random_batch(8)
    only_audio = torch.tensor([[False, True, False]] * 8)
    masked = _model()
    def distillation(model, student):  # a Monte-Carlo KL estimate: nonzero when the components differ
        return float(objective(model, teacher, student).distillation.detach())

    assert distillation(masked, teacher) == 0.0
    assert distillation(masked, dict(teacher, present=only_audio)) == 0.0
    frames_lost = dict(teacher, text=teacher["text"] * (torch.rand(8, 9, 1) > 0.5))
    assert abs(distillation(masked, frames_lost)) > 1e-5
    zero_filled = dict(teacher, present=only_audio, text=torch.zeros_like(teacher["text"]),
                       vision=torch.zeros_like(teacher["vision"]))
    assert abs(distillation(_model(availability="inputs"), zero_filled)) > 1e-5


# --- formulation §4: the Laplace likelihood -------------------------------------------------------
@pytest.mark.parametrize("distribution", ["student_t", "gaussian"])
def test_laplace_scale_starts_at_one(distribution):
    model = _model(likelihood="laplace", distribution=distribution)
    nu0 = GAUSSIAN_NU if distribution == "gaussian" else model.config.nu_init
    u0 = uncertainty(torch.tensor([[nu0]]), torch.zeros(1, 1, 4))
    assert float(u0 + model.error_log_scale.detach()) == pytest.approx(0.0, abs=1e-5)
    assert not hasattr(_model(), "error_log_scale")  # the first formulation has no c
    with pytest.raises(ValueError, match="likelihood"):
        _model().error_log_scale_of(_model()(random_batch(2)))


def test_laplace_likelihood_is_l1_at_unit_scale_and_calibrates_it(gen):
    outputs = torch.randn(4, 7, 3, 1, generator=gen)
    labels = torch.randn(4, generator=gen)
    log_pi = torch.log_softmax(torch.randn(4, 7, generator=gen), -1)
    plain = task_loss(outputs, labels, log_pi, "regression")
    torch.testing.assert_close(task_loss(outputs, labels, log_pi, "regression", torch.zeros(4, 7)), plain)
    # minimised over a common log b at b = the pi-weighted mean absolute error
    grid = torch.linspace(-3, 2, 2001)
    losses = torch.stack([task_loss(outputs, labels, log_pi, "regression", torch.full((4, 7), float(g)))
                          for g in grid])
    assert float(grid[losses.argmin()].exp()) == pytest.approx(float(plain), rel=0.01)
    # classification: tempered logits; b = 1 is the plain cross-entropy
    logits = torch.randn(4, 7, 3, 5, generator=gen)
    classes = torch.randint(0, 5, (4,), generator=gen)
    torch.testing.assert_close(task_loss(logits, classes, log_pi, "classification", torch.zeros(4, 7)),
                               task_loss(logits, classes, log_pi, "classification"))


def test_laplace_objective_trains_the_scale_and_sigma():
    torch.manual_seed(0)
    model = _model(likelihood="laplace")
    batch = random_batch(4)
    CASDObjective(ObjectiveConfig(lambda_cd=0.0))(model, batch, batch).total.backward()
    assert float(model.error_log_scale.grad.abs()) > 0
    assert float(model.head.log_sigma.weight.grad.abs().sum()) > 0  # through u in b, with no L_cd
    assert float(model.head.nu_raw.bias.grad.abs()) > 0


# --- formulation §4: L_cd per component, per dimension, row temperature -----------------------------
def test_component_distillation_is_the_mean_per_component_kl(gen):
    absent = torch.zeros(5, 7, dtype=torch.bool)
    absent[0, 1:] = True  # row 0 keeps only component 0 in the student
    teacher, student = _mixture(gen), _mixture(gen, absent=absent)
    samples = teacher.rsample(3, seed=1)  # [B, K, S, D]
    loss = ComponentDistillation(tau=0.7)(teacher, student, samples)
    w = row_weights(teacher.mean_uncertainty(), 0.7)
    expected = []
    for b in range(5):
        terms = []
        for k in range(7):
            if absent[b, k]:
                continue
            z = samples[b, k][None]  # [1, S, D]

            def single(m):
                return m.mu[b, k][None, None], m.log_sigma[b, k][None, None], m.nu[b, k][None, None], torch.zeros(1, 1)
            terms.append((mixture_logpdf_reference(z, *single(teacher))
                          - mixture_logpdf_reference(z, *single(student))).mean())
        expected.append(w[b] * torch.stack(terms).mean())
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    torch.testing.assert_close(ComponentDistillation(0.7, per_dim=True)(teacher, student, samples), loss / 4)
    assert float(ComponentDistillation()(teacher, teacher, samples)) == 0.0


def test_distillation_loss_picks_the_variant(gen):
    assert type(distillation_loss(1.0)) is ConsistencyDistillationLoss  # the first formulation, unchanged
    assert type(distillation_loss(1.0, per_dim=True)) is GlobalBatchDistillation
    assert type(distillation_loss(1.0, mode="component")) is ComponentDistillation
    teacher, student = _mixture(gen), _mixture(gen)
    samples = teacher.rsample(2, seed=3)
    torch.testing.assert_close(distillation_loss(1.0, per_dim=True)(teacher, student, samples),
                               distillation_loss(1.0)(teacher, student, samples) / 4)
    with pytest.raises(ValueError, match="distillation mode"):
        distillation_loss(1.0, mode="reverse")


def test_component_distillation_runs_on_the_fused_kernel_unchanged(gen):
    """The per-component L_cd is the existing fused op on B*K single-component rows: same loss and
    gradients on both backends (the Triton interpreter on the CPU)."""
    absent = torch.zeros(3, 7, dtype=torch.bool)
    absent[0, 2:] = True
    teacher = _mixture(gen, batch=3, dim=5)
    student = _mixture(gen, batch=3, dim=5, absent=absent)
    student = StudentTMixture(*(t.clone().requires_grad_(True) for t in student.params))
    samples = teacher.rsample(3, seed=1)
    results = {}
    for backend in ("torch", "triton"):
        for p in student.params:
            p.grad = None
        loss = ComponentDistillation(1.0, backend, per_dim=True)(teacher, student, samples)
        loss.backward()
        results[backend] = (loss.detach(), [p.grad.clone() for p in student.params[:3]])
    assert float(results["torch"][0]) > 1e-3
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for fused, reference in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-6)


def test_row_temperature_and_lambda_warmup():
    objective = CASDObjective(ObjectiveConfig(lambda_cd=0.2, lambda_warmup=0.5, tau=0.1, tau_rows=2.0))
    assert objective.distill.tau == 2.0  # the row weights no longer share the pi temperature
    for progress, expected in ((0.0, 0.0), (0.25, 0.1), (0.9, 0.2)):
        objective.set_progress(progress)
        assert objective.lambda_cd() == pytest.approx(expected)
    assert CASDObjective(ObjectiveConfig(lambda_cd=0.2)).lambda_cd() == 0.2  # no warm-up: from step 0


# --- formulation §4: the task loss on f(mu) ------------------------------------------------------
def test_task_loss_on_means_and_the_deterministic_variant(monkeypatch):
    torch.manual_seed(0)
    model = _model()
    batch = random_batch(4)
    objective = CASDObjective(ObjectiveConfig(task_input="mean", lambda_cd=0.0, task_weights="confidence"))
    monkeypatch.setattr(objective.sampler, "forward", lambda *a: pytest.fail("no draws are needed"))
    losses = objective(model, batch, batch)
    mixture = model(batch)
    expected = task_loss(model.predictor(mixture.mu).unsqueeze(2), batch["labels"], mixture.log_pi, "regression")
    torch.testing.assert_close(losses.task_teacher, expected)
    # deterministic: uniform pi, no likelihood, no L_cd: sigma and nu receive no gradient at all
    deterministic = _model(weighting="uniform")
    objective(deterministic, batch, batch).total.backward()
    assert deterministic.head.log_sigma.weight.grad is None and deterministic.head.nu_raw.weight.grad is None


def test_uniform_task_weights_train_every_available_component_and_leave_pi_to_mixing():
    torch.manual_seed(1)
    model = _model(likelihood="laplace")
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    batch = random_batch(4, present)
    losses = CASDObjective(ObjectiveConfig(lambda_cd=0.0))(model, batch, batch)
    mixture = model(batch)
    outputs = model.predictor(mixture.mu).squeeze(-1)
    log_b = model.error_log_scale_of(mixture)
    nll = (batch["labels"].unsqueeze(1) - outputs).abs() / log_b.exp() + log_b  # [B, K]
    available = torch.isfinite(mixture.log_pi)
    expected = (torch.where(available, nll, 0.0).sum(1) / available.sum(1)).mean()
    torch.testing.assert_close(losses.task_teacher, expected)
    # the confidence-weighted loss of the same model differs: the weights are what changed
    confidence = CASDObjective(ObjectiveConfig(lambda_cd=0.0, task_weights="confidence"))(model, batch, batch)
    assert not torch.allclose(confidence.task_teacher, losses.task_teacher)


# --- configuration: defaults, flags, files, old runs, study variants -----------------------------
def test_defaults_are_the_validated_design_and_flags_round_trip(tmp_path):
    d = RunConfig()
    assert (d.model.frame_scale, d.model.availability, d.model.likelihood) == (True, "mask", "laplace")
    o = d.objective
    assert (o.tau, o.tau_rows, o.lambda_cd, o.distill, o.cd_per_dim, o.task_input, o.lambda_warmup, o.task_weights) == (
        0.2, 1.0, 0.3, "component", True, "mean", 0.0, "uniform")
    assert d.train.missing_rate == 0.9
    assert (d.calibration.fit, d.calibration.epochs, d.calibration.lr) == ("reliability", 25, 0.03)
    first = ["--no-frame-scale", "--likelihood", "point", "--tau", "1", "--tau-rows", "1", "--lambda-cd", "0.01",
             "--distill", "mixture", "--no-cd-per-dim", "--task-input", "samples", "--missing-rate", "0.7",
             "--availability", "inputs", "--lambda-warmup", "0.3", "--task-weights", "confidence",
             "--calibration-fit", "heads", "--calibration-epochs", "10", "--calibration-lr", "3e-3"]
    config = config_from_argv(first)
    assert config.calibration == CalibrationConfig(fit="heads", epochs=10, lr=3e-3)
    assert config.objective == ObjectiveConfig(**{**FIRST_FORMULATION, "lambda_warmup": 0.3})
    assert (config.model.frame_scale, config.model.likelihood, config.model.availability) == (False, "point", "inputs")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(to_dict(config)))
    assert load_config(path) == config  # --config round trip
    assert config_from_argv(["--config", str(path), "--frame-scale"]).model.frame_scale


@pytest.mark.parametrize("flags,named", [
    (["--tau-rows", "0"], "--tau-rows"), (["--lambda-warmup", "1.5"], "--lambda-warmup"),
    (["--tau-rows", "nan"], "--tau-rows"),
])
def test_bad_design_values_name_their_flag(flags, named):
    with pytest.raises(ConfigError, match=named):
        config_from_argv(flags)


def test_bad_choices_are_refused_by_the_parser():
    with pytest.raises(ConfigError, match="--distill"):
        config_from_argv(["--distill", "reverse"])


def test_a_run_recorded_before_the_design_reads_as_the_first_formulation():
    old = {"objective": {"tau": 0.5, "lambda_cd": 0.1}, "train": {"epochs": 3}}
    filled = recorded_before_issue_11(old, {"hidden": 8})  # network config without frame_scale
    assert filled["objective"] == {"distill": "mixture", "cd_per_dim": False, "lambda_warmup": 0.0,
                                   "task_input": "samples", "tau": 0.5, "lambda_cd": 0.1, "tau_rows": 0.5,
                                   "task_weights": "confidence"}
    assert filled["model"]["frame_scale"] is False and filled["model"]["likelihood"] == "point"
    assert filled["train"] == {"epochs": 3, "missing_rate": 0.7}
    assert filled["calibration"] == {"epochs": 0}  # and it predates held-out calibration
    assert recorded_before_issue_11({**old, "calibration": {"epochs": 10}}, {"frame_scale": True})["calibration"] == {
        "fit": "heads", "epochs": 10}  # calibrated before the reliability shift: the heads
    newer = {**old, "calibration": {"fit": "reliability", "epochs": 10}, "objective": {**old["objective"], "task_weights": "uniform"},
             "model": {"encoder": "transformer"}}
    assert recorded_before_issue_11(newer, {"frame_scale": True}) is newer  # a newer run: as recorded
    assert recorded_before_issue_11(old, None) is old  # a hand-written file: today's defaults


def test_study_variants_of_the_design():
    base = RunConfig()
    first = VARIANTS["first_formulation"].apply(base)
    assert first.objective == ObjectiveConfig(**FIRST_FORMULATION)
    assert (first.model.frame_scale, first.model.likelihood, first.train.missing_rate) == (False, "point", 0.7)
    assert VARIANTS["inputs"].apply(base).model.availability == "inputs"
    deterministic = VARIANTS["deterministic"].apply(base)
    assert deterministic.model.weighting == "uniform" and deterministic.objective.lambda_cd == 0.0
    both = VARIANTS["gaussian_no_distill"].apply(base)
    assert both.model.distribution == "gaussian" and both.objective.lambda_cd == 0.0
