"""The model registry: every kind builds from a RunConfig, predicts as evaluation expects, trains
through its objective, and rebuilds from its stored config; the contract a new kind must meet."""
import pytest
import torch

from casd.config import ModelSpec, RunConfig
from casd.errors import ConfigError
from casd.model import Prediction
from casd.objective import LossBreakdown, ObjectiveConfig
from casd.registry import MODEL_KINDS, Predictor, build_model, build_objective, model_kind

DIMS = (12, 5, 7)


def random_batch(batch: int) -> dict:
    out = {}
    for name, dim, length in zip(("text", "audio", "vision"), DIMS, (9, 13, 11)):
        out[name] = torch.randn(batch, length, dim)
        out[f"{name}_lengths"] = torch.randint(1, length + 1, (batch,))
    out["present"] = torch.ones(batch, 3, dtype=torch.bool)
    out["labels"] = 6 * torch.rand(batch) - 3
    out["index"] = torch.randperm(100)[:batch]
    return out


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("noise", ["batch", "sample"])
def test_every_kind_builds_predicts_trains_and_rebuilds(kind, noise):
    config = RunConfig(model=ModelSpec(kind=kind, hidden=16, heads=2, embed_dim=6),
                       objective=ObjectiveConfig(num_samples=2, tau=0.5, noise=noise))
    network = config.network_config(DIMS, 1)
    if hasattr(network, "tau"):
        assert network.tau == 0.5  # the objective's temperature is the one source
    model = build_model(kind, network)
    assert isinstance(model, Predictor) and model_kind(model) == kind
    teacher = random_batch(5)
    student = dict(teacher, present=torch.tensor([[True, False, False]] * 5))
    prediction = model.eval().predict(teacher)
    assert isinstance(prediction, Prediction)
    assert prediction.output.shape == (5,) and prediction.weights.shape == (5, 7)
    losses = build_objective(kind, config.objective, "regression")(model.train(), teacher, student, noise_seed=3)
    assert isinstance(losses, LossBreakdown) and torch.isfinite(losses.total)
    losses.total.backward()
    rebuilt = build_model(kind, model.config.to_dict())  # as from a checkpoint
    assert type(rebuilt) is type(model) and rebuilt.config == model.config


def test_unknown_kinds_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown model kind 'mlp'"):
        build_model("mlp", {})
    with pytest.raises(ValueError, match="model kind must be one of"):
        ModelSpec(kind="mlp")
    with pytest.raises(ConfigError, match="not one of the model kinds"):
        model_kind(torch.nn.Linear(2, 2))
