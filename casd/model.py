"""The CASD network (formulation §2): encoders -> combination embeddings -> Student-t mixture -> predictor."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from casd.encoders import ModalityEncoders
from casd.kernels import StudentTMixture, uncertainty
from casd.layers import CombinationEmbedding, ConfidenceMixture, StudentTHead
from casd.modalities import MODALITIES, component_availability
from casd.reliability import ReliabilityShift
from casd.vocab import AVAILABILITIES, CALIBRATION_FITS, DISTRIBUTIONS, ENCODERS, LIKELIHOODS, WEIGHTINGS

__all__ = ["EncoderConfig", "ModelConfig", "CASDModel", "Prediction", "GAUSSIAN_NU"]

# Degrees of freedom that make a Student-t component Gaussian for all practical purposes
# (excess kurtosis 6/(nu-4) ~ 6e-4); used by the Gaussian-embedding ablation.
GAUSSIAN_NU = 1e4


@dataclass
class EncoderConfig:
    """What every model on the per-modality encoders needs (CASD and the late-fusion baseline)."""

    feature_dims: tuple[int, int, int]
    output_dim: int = 1  # 1 for regression, the number of classes for classification
    hidden: int = 64
    encoder_layers: int = 1
    heads: int = 4
    dropout: float = 0.1
    # Feed each frame's log RMS beside its LayerNorm-ed features (formulation §2.1). The network
    # configs default to the first formulation, so that checkpoints written before the field
    # existed rebuild as they were; a run's defaults are casd.config.ModelSpec's.
    frame_scale: bool = False
    encoder: str = "transformer"  # casd.vocab.ENCODERS ("linear": the easy-encoder variant)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        self.feature_dims = tuple(int(d) for d in self.feature_dims)
        if len(self.feature_dims) != len(MODALITIES) or min(self.feature_dims) < 1:
            raise ValueError(f"feature_dims must be three positive ints, got {self.feature_dims}")
        for name in ("hidden", "encoder_layers", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:  # also refuses NaN
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.output_dim < 1:
            raise ValueError(f"output_dim must be >= 1, got {self.output_dim}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelConfig(EncoderConfig):
    embed_dim: int = 32
    nu_min: float = 2.0
    nu_init: float = 5.0
    tau: float = 1.0  # temperature of pi; a run sets it from ObjectiveConfig.tau (RunConfig.network_config)
    weighting: str = "confidence"  # or "uniform" (ablation)
    distribution: str = "student_t"  # or "gaussian" (ablation)
    availability: str = "mask"  # casd.vocab.AVAILABILITIES (formulation §2.2)
    likelihood: str = "point"  # casd.vocab.LIKELIHOODS: "laplace" adds the scale offset c (formulation §4)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.availability not in AVAILABILITIES:
            raise ValueError(f"availability must be one of {AVAILABILITIES}, got {self.availability!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if not (math.isfinite(self.nu_min) and self.nu_min > 0):
            raise ValueError(f"nu_min must be finite and > 0, got {self.nu_min}")
        if not (math.isfinite(self.nu_init) and self.nu_init > self.nu_min):
            raise ValueError(f"nu_init ({self.nu_init}) must be finite and exceed nu_min ({self.nu_min})")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be finite and > 0, got {self.tau}")


@dataclass
class Prediction:
    output: torch.Tensor  # [B] regression score, or [B, C] class logits
    uncertainty: torch.Tensor  # [B] ubar = sum_k pi_k u_k (formulation §3): higher = less sure
    weights: torch.Tensor  # [B, K] pi, zero for absent combinations

    @property
    def confidence(self) -> torch.Tensor:
        """Deprecated name of ``uncertainty`` (it holds ubar, where higher means less sure)."""
        warnings.warn("Prediction.confidence is deprecated: it is ubar (higher = less sure); use "
                      "Prediction.uncertainty", DeprecationWarning, stacklevel=2)
        return self.uncertainty


class CASDModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoders = ModalityEncoders(
            config.feature_dims, config.hidden, config.encoder_layers, config.heads, config.dropout,
            config.frame_scale, config.encoder,
        )
        self.combine = CombinationEmbedding(config.hidden, config.dropout)
        self.head = StudentTHead(
            config.hidden,
            config.embed_dim,
            nu_min=config.nu_min,
            nu_init=config.nu_init,
            fixed_nu=GAUSSIAN_NU if config.distribution == "gaussian" else None,
        )
        self.mixture = ConfidenceMixture(config.tau, config.weighting)
        self.predictor = nn.Sequential(
            nn.Linear(config.embed_dim, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.output_dim),
        )
        if config.likelihood == "laplace":
            # c in log b_k = u_k + c (formulation §4). u is the entropy per dimension, which fixes
            # the spread of y only up to a scale: c is that scale. It starts where a unit-scale
            # component with nu = nu_init has b = 1, so the loss starts as the plain L1 loss (c = 0
            # gives b ~ 4.8 at init, a ~5x smaller gradient on f: training sat on a plateau for 5
            # epochs in the issue-11 notebook, run e01).
            nu0 = GAUSSIAN_NU if config.distribution == "gaussian" else config.nu_init
            u0 = uncertainty(torch.tensor([[nu0]]), torch.zeros(1, 1, config.embed_dim))
            self.error_log_scale = nn.Parameter(-u0.reshape(()).clone())
            # δ_k(x) on log σ from input statistics (casd.reliability): frozen at zero in training,
            # fit by the held-out calibration only.
            self.reliability = ReliabilityShift()

    def error_log_scale_of(self, mixture: StudentTMixture) -> torch.Tensor:
        """log b_k = u_k + c [B, K]: the Laplace scale of y under each component (likelihood "laplace")."""
        if self.config.likelihood != "laplace":
            raise ValueError("error_log_scale_of needs a model built with likelihood='laplace'")
        return mixture.component_uncertainty() + self.error_log_scale

    def uncertainty_parameters(self, fit: str) -> list[nn.Parameter]:
        """What sets u and b and nothing else (casd.calibration refits them on held-out data):
        c and, with ``fit="heads"``, the log-scale and degrees-of-freedom heads, with
        ``fit="reliability"`` the input-reliability shift (likelihood "laplace" only)."""
        if fit not in CALIBRATION_FITS:
            raise ValueError(f"fit must be one of {CALIBRATION_FITS}, got {fit!r}")
        if fit == "reliability":
            if self.config.likelihood != "laplace":
                raise ValueError("the reliability shift needs a model built with likelihood='laplace'")
            return [*self.reliability.parameters(), self.error_log_scale]
        parameters = [*self.head.log_sigma.parameters(), *self.head.nu_raw.parameters()]
        if self.config.likelihood == "laplace":
            parameters.append(self.error_log_scale)
        return parameters

    def modality_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 3, H]: one utterance vector per modality."""
        return self.encoders(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> StudentTMixture:
        """The per-sample Student-t mixture p(z | x); absent combinations get weight zero."""
        g = self.combine(self.modality_vectors(batch))
        shift = self.reliability(batch) if self.config.likelihood == "laplace" else None
        mu, log_sigma, nu = self.head(g, shift)
        if self.config.availability == "inputs":  # all 7 from what the inputs hold (formulation §2.2)
            available = torch.ones(mu.shape[:2], dtype=torch.bool, device=mu.device)
        else:
            available = component_availability(batch["present"])
        return self.mixture(mu, log_sigma, nu, available)

    def predict_from_mixture(self, mixture: StudentTMixture) -> Prediction:
        """y_hat = sum_k pi_k f(mu_k), with the uncertainty ubar and the weights pi."""
        outputs = self.predictor(mixture.mu).float()  # [B, K, O]
        weights = mixture.weights
        combined = (weights.unsqueeze(-1) * outputs).sum(1)
        if self.config.output_dim == 1:
            combined = combined.squeeze(-1)
        return Prediction(combined, mixture.mean_uncertainty(), weights)

    def predict(self, batch: dict[str, torch.Tensor]) -> Prediction:
        return self.predict_from_mixture(self(batch))
