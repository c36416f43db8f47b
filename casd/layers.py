"""Drop-in CASD layers: any multimodal model that produces one vector per modality can use them.

    h [B, M, H]                 -> CombinationEmbedding      g [B, K, H]          (formulation §2.2)
    g                           -> StudentTHead              mu, log_sigma, nu    (formulation §2.3)
    mu, log_sigma, nu, available -> ConfidenceMixture        StudentTMixture      (formulation §3)
    mixture                     -> StudentTSampler           z [B, K, S, D]       (formulation §4)
    ConsistencyDistillationLoss(teacher, student, z_teacher) -> L_cd

``available`` [B, K] comes from the modality presence mask [B, M] through
``casd.modalities.component_availability``. Each layer with heavy work takes ``backend``
("torch" or "triton") and calls ``casd.kernels``.

The forward passes never read tensor values on the host (no ``.item()``, no
``bool(tensor)``): they run inside ``torch.compile(fullgraph=True)`` and CUDA graphs, and
with ``backend="triton"`` each fused operation is one kernel launch each way. Value checks
are opt-in (``ConfidenceMixture(validate=True)``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from casd.kernels import (
    StudentTMixture,
    check_some_component_available,
    confidence_log_weights,
    consistency_distillation,
    gamma_scales,
    keyed_gamma_scales,
    random_key,
    row_weights,
    student_t_rsample,
    uncertainty,
)
from casd.modalities import NUM_COMPONENTS, combination_membership

__all__ = [
    "CombinationEmbedding",
    "StudentTHead",
    "ConfidenceMixture",
    "StudentTSampler",
    "ConsistencyDistillationLoss",
]


class CombinationEmbedding(nn.Module):
    """g_c = MLP(LayerNorm(mean_{m in c} h_m + e_c)) for the K = 7 modality combinations."""

    def __init__(self, hidden: int, dropout: float = 0.0):
        super().__init__()
        membership = combination_membership()
        self.register_buffer("mean_weights", membership / membership.sum(1, keepdim=True), persistent=False)
        self.combination_codes = nn.Parameter(0.02 * torch.randn(NUM_COMPONENTS, hidden))
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )

    def forward(self, modality_vectors: torch.Tensor) -> torch.Tensor:
        """[B, M, H] per-modality vectors -> [B, K, H] combination embeddings."""
        if modality_vectors.shape[1] != self.mean_weights.shape[1]:
            raise ValueError(
                f"expected {self.mean_weights.shape[1]} modality vectors, got {modality_vectors.shape[1]}"
            )
        pooled = torch.einsum("km,bmh->bkh", self.mean_weights.to(modality_vectors.dtype), modality_vectors)
        return self.mlp(pooled + self.combination_codes)


class StudentTHead(nn.Module):
    """Shared heads: mu = W_mu g, log_sigma = clamp(W_s g), nu = nu_min + softplus(w_nu . g + b_nu).

    ``fixed_nu`` replaces the learned degrees of freedom by a constant (a very large one
    turns every component into a Gaussian for the ablation study).
    """

    def __init__(
        self,
        hidden: int,
        embed_dim: int,
        nu_min: float = 2.0,
        nu_init: float = 5.0,
        log_sigma_range: tuple[float, float] = (-5.0, 3.0),
        fixed_nu: float | None = None,
    ):
        super().__init__()
        if nu_init <= nu_min:
            raise ValueError(f"nu_init ({nu_init}) must exceed nu_min ({nu_min})")
        self.mu = nn.Linear(hidden, embed_dim)
        self.log_sigma = nn.Linear(hidden, embed_dim)
        self.nu_raw = nn.Linear(hidden, 1)
        self.nu_min = nu_min
        self.log_sigma_range = log_sigma_range
        self.fixed_nu = fixed_nu
        nn.init.zeros_(self.nu_raw.weight)
        # softplus(b) = nu_init - nu_min, so nu starts at nu_init for every component.
        nn.init.constant_(self.nu_raw.bias, math.log(math.expm1(nu_init - nu_min)))

    def forward(self, g: torch.Tensor, log_sigma_shift: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g [B, K, H] -> mu [B,K,D], log_sigma [B,K,D], nu [B,K], all float32.

        ``log_sigma_shift`` [B, K] is added to every coordinate of log_sigma before the clamp
        (casd.reliability: the input-reliability shift)."""
        mu = self.mu(g).float()
        log_sigma = self.log_sigma(g).float()
        if log_sigma_shift is not None:
            log_sigma = log_sigma + log_sigma_shift.float().unsqueeze(-1)
        log_sigma = log_sigma.clamp(*self.log_sigma_range)
        if self.fixed_nu is not None:
            nu = torch.full(g.shape[:2], self.fixed_nu, device=g.device, dtype=torch.float32)
        else:
            nu = self.nu_min + nn.functional.softplus(self.nu_raw(g).float().squeeze(-1))
        return mu, log_sigma, nu


class ConfidenceMixture(nn.Module):
    """Weights components by confidence: log pi = log_softmax(-u / tau) over available ones.

    ``weighting="uniform"`` gives every available component the same weight (ablation).
    A row with no available component gets NaN weights (and so a NaN loss, which the
    trainer skips); ``validate=True`` raises instead, at the cost of one host sync per call.
    """

    def __init__(self, tau: float = 1.0, weighting: str = "confidence", validate: bool = False):
        super().__init__()
        if weighting not in ("confidence", "uniform"):
            raise ValueError(f"weighting must be 'confidence' or 'uniform', got {weighting!r}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau
        self.weighting = weighting
        self.validate = validate

    def forward(
        self, mu: torch.Tensor, log_sigma: torch.Tensor, nu: torch.Tensor, available: torch.Tensor
    ) -> StudentTMixture:
        if self.weighting == "uniform":
            if self.validate:
                check_some_component_available(available)
            logits = torch.zeros_like(nu).masked_fill(~available, float("-inf"))
            log_pi = torch.log_softmax(logits, dim=-1)
        else:
            log_pi = confidence_log_weights(uncertainty(nu, log_sigma), available, self.tau, validate=self.validate)
        return StudentTMixture(mu, log_sigma, nu, log_pi)


class StudentTSampler(nn.Module):
    """S reparameterised draws per component: z = mu + sigma * eps * w, [B, K, S, D] (formulation §4).

    ``forward(mixture)`` draws a fresh 64-bit key on the device from torch's generator for the
    Gaussian noise, and the Gamma scales w from torch's generator too: ``torch.manual_seed``
    makes training reproducible, nothing is read on the host, and a captured CUDA graph draws
    new noise on every replay. Both backends draw the same noise for the same key.

    ``forward(mixture, row_keys)`` with an int64 tensor of one key per row [B] draws every
    random number of row b (noise and Gamma scales) from row_keys[b] alone, whatever else is
    in the batch: a sample keyed by (epoch, view, index) draws the same numbers on whichever
    process holds it (distributed training, ``--noise sample``). With ``backend="triton"``
    that is two launches for the whole batch (the Gamma draws, then the sampler) and the
    noise is never stored.
    """

    def __init__(self, num_samples: int, backend: str = "torch"):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.backend = backend

    def forward(self, mixture: StudentTMixture, row_keys: torch.Tensor | None = None) -> torch.Tensor:
        if row_keys is None:
            key = random_key(mixture.mu.device)
            scales = gamma_scales(mixture.nu, self.num_samples)
        else:
            rows = mixture.mu.shape[0]
            if row_keys.dtype != torch.int64 or row_keys.shape != (rows,):
                raise ValueError(
                    f"row_keys must be an int64 tensor of one key per row [{rows}], "
                    f"got {row_keys.dtype} {list(row_keys.shape)}"
                )
            key = row_keys
            scales = keyed_gamma_scales(mixture.nu, self.num_samples, key, backend=self.backend)
        return student_t_rsample(mixture.mu, mixture.log_sigma, scales, key, backend=self.backend)


class ConsistencyDistillationLoss(nn.Module):
    """L_cd of formulation §4 from the teacher mixture, the student mixture and teacher samples.

    Point weights omega = pi^T_k / S and row weights w_b = B softmax_b(-ubar^T_b / tau) are
    computed from the detached teacher.
    """

    def __init__(self, tau: float = 1.0, backend: str = "torch"):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau
        self.backend = backend

    def forward(
        self, teacher: StudentTMixture, student: StudentTMixture, teacher_samples: torch.Tensor
    ) -> torch.Tensor:
        teacher = teacher.detach()
        batch, components, samples, dim = teacher_samples.shape
        points = teacher_samples.detach().reshape(batch, components * samples, dim)
        omega = (teacher.weights / samples).unsqueeze(-1).expand(batch, components, samples).reshape(batch, -1)
        weights = row_weights(teacher.mean_uncertainty(), self.tau)
        loss, _ = consistency_distillation(
            points, teacher.params, student.params, omega, weights, backend=self.backend
        )
        return loss


def set_backend(module: nn.Module, backend: str) -> list[str]:
    """Switch every CASD layer inside ``module`` to ``backend`` ("torch" or "triton"), in place.

    ``module`` may be a whole model, an objective (casd.objective.CASDObjective holds the
    sampler and L_cd), or one layer. A CASD layer is a module whose class is one of this
    file's, or derives from one (casd.sampler's row-keyed sampler, casd.distillation's
    global-batch L_cd), and that has a ``backend`` attribute; nothing else is touched, and
    only that attribute changes, so weights, buffers and optimizer state stay as they are.
    Returns the names of the switched layers (as ``module.named_modules()`` gives them;
    "" is ``module`` itself). Refuses an unknown backend, a "triton" that is not installed,
    and a module with no CASD layer (a silent no-op would look like a switch).
    """
    # Local imports keep this function self-contained at the end of the file.
    from casd.errors import ConfigError
    from casd.kernels import BACKENDS, BackendUnavailableError, triton_available

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not triton_available():
        raise BackendUnavailableError("backend 'triton' needs the triton package (pip install triton)")
    switched = []
    for name, layer in module.named_modules():
        if hasattr(layer, "backend") and any(cls.__module__ == __name__ for cls in type(layer).__mro__):
            layer.backend = backend
            switched.append(name)
    if not switched:
        raise ConfigError(f"{type(module).__name__} holds no CASD layer with a backend; the sampler and the "
                          "distillation loss usually live in the objective: pass that")
    return switched


__all__.append("set_backend")
