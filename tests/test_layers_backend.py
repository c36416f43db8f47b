"""casd.layers.set_backend: one call switches an existing model's (or objective's) CASD layers
between the PyTorch and Triton backends, and nothing else about it."""
import pytest
import torch
from torch import nn

from casd.data import (SyntheticConfig, TrainingMissingness, batch_to, batches_from_split, generate_synthetic,
                       split_from_mmsa)
from casd.errors import ConfigError
from casd.layers import ConsistencyDistillationLoss, StudentTSampler, set_backend
from casd.model import CASDModel, ModelConfig
from casd.objective import CASDObjective, MixtureModel, ObjectiveConfig
from casd.registry import build_objective


def views(device, batch=6, seed=0):
    config = SyntheticConfig(seed=seed, num_train=batch, num_valid=1, num_test=1, text_len=6, audio_len=5,
                             vision_len=5, text_dim=8, audio_dim=4, vision_dim=4)
    split = split_from_mmsa(generate_synthetic(config)["train"])
    teacher = batch_to(batches_from_split(split).tensors, device)
    student = TrainingMissingness("mixed", 0.7).apply(teacher, torch.Generator(device).manual_seed(seed))
    return split, teacher, student


def test_switching_a_trained_models_objective_changes_only_the_backend(device):
    torch.manual_seed(0)
    split, teacher, student = views(device)
    model = CASDModel(ModelConfig(split.feature_dims, hidden=8, heads=2, embed_dim=4)).to(device)
    assert isinstance(model, MixtureModel)
    # noise="sample" feeds both backends the same noise, so their losses must agree.
    objective = build_objective("casd", ObjectiveConfig(num_samples=3, lambda_cd=0.5, noise="sample"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    objective(model, teacher, student, noise_seed=3).total.backward()  # a trained, not a fresh, model
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    losses = {}
    for backend in ("triton", "torch", "triton"):
        switched = set_backend(objective, backend)
        assert switched == ["sampler.draw", "distill"]
        assert objective.sampler.backend == objective.distill.backend == backend
        torch.manual_seed(5)  # the same dropout masks for every call
        losses[backend] = objective(model, teacher, student, noise_seed=4)
    assert losses["torch"].distillation.abs() > 1e-3  # a real (Monte-Carlo) L_cd, not an empty sum
    for term in ("total", "task_teacher", "task_student", "distillation"):
        torch.testing.assert_close(getattr(losses["triton"], term), getattr(losses["torch"], term),
                                   rtol=1e-5, atol=1e-6)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # weights untouched


def test_a_model_holding_the_layers_itself_is_switched_whole():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([StudentTSampler(2), nn.Linear(2, 2)])
            self.loss = ConsistencyDistillationLoss()

    holder = Holder()
    assert set_backend(holder, "triton") == ["heads.0", "loss"]
    assert holder.heads[0].backend == holder.loss.backend == "triton"
    assert set_backend(holder.loss, "torch") == [""] and holder.loss.backend == "torch"


def test_bad_requests_are_refused():
    with pytest.raises(ConfigError, match="backend must be one of"):
        set_backend(StudentTSampler(2), "cuda")
    model = CASDModel(ModelConfig((4, 4, 4), hidden=8, heads=2))
    if not any(hasattr(m, "backend") for m in model.modules()):
        with pytest.raises(ConfigError, match="holds no CASD layer with a backend.*objective"):
            set_backend(model, "triton")
    with pytest.raises(ConfigError, match="holds no CASD layer"):
        set_backend(nn.Linear(2, 2), "torch")


def test_the_objective_trains_any_mixture_model():
    """CASDObjective on a model that is not casd's: four lines on the drop-in layers."""
    from casd.layers import CombinationEmbedding, ConfidenceMixture, StudentTHead
    from casd.modalities import component_availability

    class Tiny(nn.Module):
        def __init__(self, dims, hidden=8):
            super().__init__()
            self.encode = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
            self.combine, self.head = CombinationEmbedding(hidden), StudentTHead(hidden, 4)
            self.mixture, self.predictor = ConfidenceMixture(), nn.Linear(4, 1)

        def forward(self, batch):
            h = torch.stack([enc(batch[m].mean(1)) for m, enc in zip(("text", "audio", "vision"), self.encode)], 1)
            return self.mixture(*self.head(self.combine(h)), component_availability(batch["present"]))

    torch.manual_seed(0)
    split, teacher, student = views(torch.device("cpu"))
    model = Tiny(split.feature_dims)
    assert isinstance(model, MixtureModel)
    losses = CASDObjective(ObjectiveConfig(lambda_cd=0.1))(model, teacher, student)
    losses.total.backward()
    assert torch.isfinite(losses.total) and losses.distillation > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
