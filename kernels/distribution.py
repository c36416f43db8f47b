"""``StudentTMixture``: the confidence-weighted mixture of D-variate Student-t components.

A small distribution object in the style of ``torch.distributions``: it holds the
parameters of one mixture per row and dispatches its heavy methods to the fused
operations of the chosen backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import host_math
from .ops import mixture_logpdf, student_t_rsample
from .reference import Mixture

__all__ = ["StudentTMixture"]


@dataclass(frozen=True)
class StudentTMixture:
    """Per-row mixture: mu, log_sigma [B,K,D]; nu, log_pi [B,K] (-inf marks an absent component)."""

    mu: torch.Tensor
    log_sigma: torch.Tensor
    nu: torch.Tensor
    log_pi: torch.Tensor

    @property
    def params(self) -> Mixture:
        return self.mu, self.log_sigma, self.nu, self.log_pi

    @property
    def weights(self) -> torch.Tensor:
        """pi [B,K]; exactly zero for absent components."""
        return self.log_pi.exp()

    def detach(self) -> "StudentTMixture":
        return StudentTMixture(*(t.detach() for t in self.params))

    def __getitem__(self, rows: slice | torch.Tensor) -> "StudentTMixture":
        return StudentTMixture(*(t[rows] for t in self.params))

    def component_entropy(self) -> torch.Tensor:
        return host_math.entropy(self.nu, self.log_sigma)

    def component_uncertainty(self) -> torch.Tensor:
        return host_math.uncertainty(self.nu, self.log_sigma)

    def mean_uncertainty(self) -> torch.Tensor:
        """ubar = sum_k pi_k u_k, the per-row confidence score (lower is more confident)."""
        return host_math.mixture_uncertainty(self.log_pi, self.component_uncertainty())

    def log_prob(self, z: torch.Tensor, backend: str = "torch", validate: bool = False) -> torch.Tensor:
        """log p(z) for points z [B,P,D] -> [B,P]."""
        return mixture_logpdf(z, *self.params, backend=backend, validate=validate)

    def rsample(self, num_samples: int, seed: torch.Tensor | int, backend: str = "torch") -> torch.Tensor:
        """Reparameterised draws from every component: [B,K,S,D] (gradients to mu, sigma, nu).

        The Gamma scales come from torch's default generator; the Gaussian noise is keyed by
        ``seed`` (an int, or an int64 device tensor of one key or one per row: see
        ``student_t_rsample``).
        """
        scales = host_math.gamma_scales(self.nu, num_samples)
        return student_t_rsample(self.mu, self.log_sigma, scales, seed, backend=backend)
