"""The CASD network and objective on the PyTorch backend: shapes, masking, gradients, formulas."""
import math

import pytest
import torch

from casd.kernels import mixture_logpdf_reference, uncertainty
from casd.layers import CombinationEmbedding, ConfidenceMixture, StudentTHead
from casd.model import GAUSSIAN_NU, CASDModel, ModelConfig
from casd.modalities import COMBINATIONS, component_availability
from casd.objective import FIRST_FORMULATION, CASDObjective, ObjectiveConfig, concat_views, task_loss

DIMS = (12, 5, 7)


def random_batch(batch: int, present: torch.Tensor | None = None, classes: int = 0) -> dict:
    out = {}
    for name, dim, length in zip(("text", "audio", "vision"), DIMS, (9, 13, 11)):
        out[name] = torch.randn(batch, length, dim)
        out[f"{name}_lengths"] = torch.randint(1, length + 1, (batch,))
    out["present"] = torch.ones(batch, 3, dtype=torch.bool) if present is None else present
    out["labels"] = torch.randint(0, classes, (batch,)) if classes else 3 * torch.rand(batch) * 2 - 3
    return out


def random_presence(batch: int) -> torch.Tensor:
    present = torch.rand(batch, 3) < 0.5
    present[~present.any(1), torch.randint(0, 3, (1,))] = True
    return present


def test_availability_follows_combinations():
    present = random_presence(32)
    available = component_availability(present)
    for c, combo in enumerate(COMBINATIONS):
        assert torch.equal(available[:, c], present[:, list(combo)].all(1))


def test_combination_embedding_averages_member_modalities():
    layer = CombinationEmbedding(hidden=8)
    h = torch.randn(4, 3, 8)
    layer.mlp = torch.nn.Identity()  # isolate the pooling
    g = layer(h)
    expected_ta = (h[:, 0] + h[:, 1]) / 2 + layer.combination_codes[3]
    torch.testing.assert_close(g[:, 3], expected_ta)
    torch.testing.assert_close(g[:, 6], h.mean(1) + layer.combination_codes[6])


def test_student_t_head_ranges_and_init():
    head = StudentTHead(hidden=16, embed_dim=6, nu_min=2.0, nu_init=5.0)
    g = torch.randn(3, 7, 16) * 50
    mu, log_sigma, nu = head(g)
    assert mu.shape == log_sigma.shape == (3, 7, 6) and nu.shape == (3, 7)
    assert log_sigma.min() >= -5 and log_sigma.max() <= 3
    torch.testing.assert_close(nu, torch.full_like(nu, 5.0))  # weight starts at zero
    gaussian = StudentTHead(16, 6, fixed_nu=GAUSSIAN_NU)(g)[2]
    assert torch.all(gaussian == GAUSSIAN_NU)


def test_confidence_mixture_prefers_certain_components_and_masks_absent():
    mu = torch.randn(2, 7, 4)
    log_sigma = torch.zeros(2, 7, 4)
    log_sigma[:, 1] = -2.0  # component 1 is much more certain
    nu = torch.full((2, 7), 5.0)
    available = torch.ones(2, 7, dtype=torch.bool)
    available[1, 1] = False
    mixture = ConfidenceMixture(tau=1.0)(mu, log_sigma, nu, available)
    assert mixture.weights[0].argmax() == 1
    assert mixture.log_pi[1, 1] == -math.inf and mixture.weights[1, 1] == 0
    torch.testing.assert_close(mixture.weights.sum(1), torch.ones(2))
    expected = torch.log_softmax(-uncertainty(nu, log_sigma)[0], 0)
    torch.testing.assert_close(mixture.log_pi[0], expected)
    uniform = ConfidenceMixture(weighting="uniform")(mu, log_sigma, nu, available)
    torch.testing.assert_close(uniform.weights[1][available[1]], torch.full((6,), 1 / 6))


def test_model_prediction_is_weighted_sum_of_component_predictions():
    torch.manual_seed(0)
    model = CASDModel(ModelConfig(DIMS, hidden=16, embed_dim=6, heads=2)).eval()
    batch = random_batch(5, random_presence(5))
    mixture = model(batch)
    prediction = model.predict(batch)
    per_component = model.predictor(mixture.mu).squeeze(-1)
    torch.testing.assert_close(prediction.output, (mixture.weights * per_component).sum(1))
    assert torch.all(prediction.weights[~component_availability(batch["present"])] == 0)
    assert prediction.uncertainty.shape == (5,) and torch.isfinite(prediction.uncertainty).all()


def test_missing_modality_does_not_influence_prediction():
    """An absent modality's features must not leak: changing them leaves the output unchanged."""
    torch.manual_seed(1)
    model = CASDModel(ModelConfig(DIMS, hidden=16, embed_dim=6, heads=2)).eval()
    present = torch.tensor([[True, False, True]] * 4)
    batch = random_batch(4, present)
    changed = dict(batch, audio=torch.randn_like(batch["audio"]) * 10)
    torch.testing.assert_close(model.predict(batch).output, model.predict(changed).output)


def test_empty_sequences_give_finite_outputs():
    model = CASDModel(ModelConfig(DIMS, hidden=16, embed_dim=6, heads=2)).eval()
    batch = random_batch(3)
    batch["audio_lengths"] = torch.zeros(3, dtype=torch.long)
    assert torch.isfinite(model.predict(batch).output).all()


def test_task_loss_matches_explicit_sum():
    outputs = torch.randn(3, 7, 4, 1)
    labels = torch.randn(3)
    log_pi = torch.log_softmax(torch.randn(3, 7), 1)
    log_pi[0, 2] = -math.inf
    log_pi[0] = torch.log_softmax(log_pi[0], 0)
    expected = 0.0
    for b in range(3):
        for k in range(7):
            if log_pi[b, k] > -math.inf:
                expected += log_pi[b, k].exp() * (outputs[b, k, :, 0] - labels[b]).abs().mean()
    torch.testing.assert_close(task_loss(outputs, labels, log_pi, "regression"), expected / 3)


def test_objective_breakdown_and_gradients():
    torch.manual_seed(2)
    model = CASDModel(ModelConfig(DIMS, hidden=16, embed_dim=6, heads=2))
    objective = CASDObjective(ObjectiveConfig(num_samples=3, lambda_cd=0.5))
    teacher = random_batch(6)
    student = dict(teacher, present=random_presence(6))
    losses = objective(model, teacher, student)
    torch.testing.assert_close(
        losses.total, losses.task_teacher + losses.task_student + 0.5 * losses.distillation
    )
    losses.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.nu_raw.bias.grad.abs() > 0  # nu learns through the gamma draws and L_cd


def test_distillation_term_is_a_kl_estimate():
    """Identical teacher and student views give L_cd = 0 exactly; different views give > 0 on average
    (the first formulation's mixture KL; the per-component L_cd: tests/test_design_options.py)."""
    torch.manual_seed(3)
    model = CASDModel(ModelConfig(DIMS, hidden=16, embed_dim=6, heads=2, dropout=0.0))
    objective = CASDObjective(ObjectiveConfig(**{**FIRST_FORMULATION, "num_samples": 8, "lambda_cd": 1.0}))
    teacher = random_batch(16)
    assert objective(model, teacher, teacher).distillation.abs() < 1e-4
    only_audio = torch.tensor([[False, True, False]] * 16)
    kl = objective(model, teacher, dict(teacher, present=only_audio)).distillation
    assert kl > 0


def test_distillation_matches_reference_formula():
    torch.manual_seed(4)
    model = CASDModel(ModelConfig(DIMS, hidden=16, embed_dim=6, heads=2, dropout=0.0))
    teacher = random_batch(5)
    student = dict(teacher, present=random_presence(5))
    mixture = model(concat_views(teacher, student))
    t, s = mixture[:5].detach(), mixture[5:]
    samples = t.rsample(4, seed=7)
    loss = CASDObjective(ObjectiveConfig(**{**FIRST_FORMULATION, "num_samples": 4})).distill(t, s, samples)
    points = samples.reshape(5, 28, 6)
    omega = (t.weights / 4).repeat_interleave(4, 1)
    ubar = (t.weights * uncertainty(t.nu, t.log_sigma)).sum(1)
    w = 5 * torch.softmax(-ubar, 0)
    diff = mixture_logpdf_reference(points, *t.params) - mixture_logpdf_reference(points, *s.params)
    torch.testing.assert_close(loss, (w * (omega * diff).sum(1)).mean())
    loss.backward()
    assert model.encoders[0].project[1].weight.grad is not None


def test_classification_objective_runs_and_predicts_logits():
    model = CASDModel(ModelConfig(DIMS, output_dim=4, hidden=16, embed_dim=6, heads=2))
    objective = CASDObjective(ObjectiveConfig(), task="classification")
    teacher = random_batch(6, classes=4)
    losses = objective(model, teacher, dict(teacher, present=random_presence(6)))
    assert losses.task_teacher > 0
    assert model.predict(teacher).output.shape == (6, 4)


@pytest.mark.parametrize(
    "kwargs",
    [dict(feature_dims=(1, 2)), dict(feature_dims=(4, 0, 3)), dict(feature_dims=DIMS, distribution="cauchy"),
     dict(feature_dims=DIMS, hidden=10, heads=4), dict(feature_dims=DIMS, output_dim=0)],
)
def test_model_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(backend="cuda"), dict(lambda_cd=-1.0), dict(tau=0.0), dict(noise="row"), dict(num_samples=0)]
)
def test_objective_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ObjectiveConfig(**kwargs)


def test_objective_rejects_an_unknown_task():
    with pytest.raises(ValueError, match="ranking"):
        CASDObjective(ObjectiveConfig(), task="ranking")
