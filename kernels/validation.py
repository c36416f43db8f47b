"""Input checks shared by both backends, run before anything is computed or launched.

Two kinds, as in ``torch.distributions`` (``validate_args``):

- **structure** — types, dtypes, ranks, shapes, devices: always checked. They read only
  tensor metadata, so they cost nothing on the device, never synchronise, and under
  ``torch.compile`` they run once at trace time.
- **values** — nu > 0, finite inputs, no row with every component absent: checked only
  with ``validate=True``. Reading values means waiting for the device (one host sync for
  all checks of a call), so the hot path never does it. Without the check, bad values
  propagate instead of raising: nu <= 0 or a non-finite input gives NaN, and a row with
  every component absent has log p = -inf (an empty mixture has density 0) and zero
  gradients.

Every message names the argument and the shapes involved, so a caller can fix the call
without reading kernel code.
"""
from __future__ import annotations

import numbers

import torch

__all__ = [
    "check_mixture",
    "check_mixture_values",
    "check_points",
    "check_sample_inputs",
    "check_seed",
    "check_cd_weights",
    "check_finite",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SEED_BITS = 63  # integer seeds lie in [0, 2**63); key tensors use all 64 bits of int64


def _check_tensor(name: str, t: object, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _check_on(device: torch.device, named: dict[str, torch.Tensor], what: str = "the mixture") -> None:
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"all inputs must be on one device: {name} is on {t.device} but {what} is on {device}")


def check_mixture(
    mu: torch.Tensor, log_sigma: torch.Tensor, nu: torch.Tensor, log_pi: torch.Tensor, role: str = ""
) -> tuple[int, int, int]:
    """Check one mixture's structure; return (B, K, D)."""
    prefix = f"{role} " if role else ""
    _check_tensor(prefix + "mu", mu, 3)
    _check_tensor(prefix + "log_sigma", log_sigma, 3)
    _check_tensor(prefix + "nu", nu, 2)
    _check_tensor(prefix + "log_pi", log_pi, 2)
    batch, components, dim = mu.shape
    if log_sigma.shape != mu.shape:
        raise ValueError(
            f"{prefix}log_sigma {tuple(log_sigma.shape)} must match {prefix}mu {tuple(mu.shape)}"
        )
    for name, t in ((prefix + "nu", nu), (prefix + "log_pi", log_pi)):
        if t.shape != (batch, components):
            raise ValueError(f"{name} must be [B, K] = {[batch, components]}, got {list(t.shape)}")
    if batch == 0 or components == 0 or dim == 0:
        raise ValueError(f"{prefix}mu must be non-empty, got shape {tuple(mu.shape)}")
    _check_on(mu.device, {prefix + "log_sigma": log_sigma, prefix + "nu": nu, prefix + "log_pi": log_pi},
              f"{prefix}mu")
    return batch, components, dim


def check_mixture_values(
    mu: torch.Tensor, log_sigma: torch.Tensor, nu: torch.Tensor, log_pi: torch.Tensor, role: str = ""
) -> None:
    """The value checks of ``validate=True``: one host sync for all of them."""
    prefix = f"{role} " if role else ""
    flags = torch.stack([
        (~(nu > 0)).any(),
        torch.isneginf(log_pi).all(dim=-1).any(),
        ~torch.isfinite(mu).all(),
        ~torch.isfinite(log_sigma).all(),
        (torch.isnan(log_pi) | torch.isposinf(log_pi)).any(),
    ]).tolist()
    bad_nu, empty_rows, bad_mu, bad_log_sigma, bad_log_pi = flags
    if bad_nu:
        raise ValueError(f"{prefix}nu must be positive (and not NaN) everywhere")
    if empty_rows:
        raise ValueError(
            f"{prefix}log_pi has a row where every component is absent (-inf); "
            "each row needs at least one component"
        )
    for bad, name in ((bad_mu, "mu"), (bad_log_sigma, "log_sigma")):
        if bad:
            raise ValueError(f"{prefix}{name} must be finite everywhere")
    if bad_log_pi:
        raise ValueError(f"{prefix}log_pi must be finite or -inf (an absent component) everywhere")


def check_finite(named: dict[str, torch.Tensor]) -> None:
    """``validate=True``: every listed tensor is finite (one host sync)."""
    flags = torch.stack([~torch.isfinite(t).all() for t in named.values()]).tolist()
    for name, bad in zip(named, flags):
        if bad:
            raise ValueError(f"{name} must be finite everywhere")


def check_points(z: torch.Tensor, batch: int, dim: int, device: torch.device, name: str = "z") -> int:
    """Check evaluation points z [B, P, D] against the mixture's B, D and device; return P."""
    _check_tensor(name, z, 3)
    _check_on(device, {name: z})
    if z.shape[0] != batch or z.shape[2] != dim:
        raise ValueError(f"{name} must be [B, P, D] with B={batch}, D={dim}, got {list(z.shape)}")
    if z.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one point per row, got {list(z.shape)}")
    return z.shape[1]


def check_sample_inputs(
    mu: torch.Tensor, log_sigma: torch.Tensor, scales: torch.Tensor, eps: torch.Tensor | None = None
) -> tuple[int, int, int, int]:
    """Check the inputs of student_t_rsample; return (B, K, S, D)."""
    _check_tensor("mu", mu, 3)
    _check_tensor("log_sigma", log_sigma, 3)
    _check_tensor("scales", scales, 3)
    if log_sigma.shape != mu.shape:
        raise ValueError(f"log_sigma {tuple(log_sigma.shape)} must match mu {tuple(mu.shape)}")
    batch, components, dim = mu.shape
    if scales.shape[:2] != (batch, components) or scales.shape[2] == 0:
        raise ValueError(
            f"scales must be [B, K, S] with B={batch}, K={components}, S >= 1, got {list(scales.shape)}"
        )
    if batch == 0 or components == 0 or dim == 0:
        raise ValueError(f"mu must be non-empty, got shape {tuple(mu.shape)}")
    samples = scales.shape[2]
    named = {"log_sigma": log_sigma, "scales": scales}
    if eps is not None:
        _check_tensor("eps", eps, 4)
        if eps.shape != (batch, components, samples, dim):
            raise ValueError(
                f"eps must be [B, K, S, D] = {[batch, components, samples, dim]}, got {list(eps.shape)}"
            )
        named["eps"] = eps
    _check_on(mu.device, named, "mu")
    return batch, components, samples, dim


def check_seed(seed: object, batch: int, device: torch.device) -> torch.Tensor | int:
    """A seed is an int in [0, 2**63), or an int64 tensor on the samples' device holding one
    key ([] or [1]) or one key per row ([B]). Returns it unchanged."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64:
            raise TypeError(f"a seed tensor must be int64 (a 64-bit key), got {seed.dtype}")
        if not (seed.numel() == 1 and seed.dim() <= 1) and seed.shape != (batch,):
            raise ValueError(
                f"a seed tensor must hold one key ([] or [1]) or one per row ([B] = [{batch}]), "
                f"got shape {list(seed.shape)}"
            )
        if seed.device != device:
            raise ValueError(f"the seed tensor is on {seed.device} but mu is on {device}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
    if not 0 <= seed < 2**SEED_BITS:
        raise ValueError(f"seed must be in [0, 2**{SEED_BITS}), got {seed}")
    return int(seed)


def check_cd_weights(
    omega: torch.Tensor, row_weights: torch.Tensor, batch: int, points: int, device: torch.device
) -> None:
    """Point weights omega [B, P] and row weights [B] of consistency_distillation."""
    _check_tensor("omega", omega, 2)
    _check_tensor("row_weights", row_weights, 1)
    _check_on(device, {"omega": omega, "row_weights": row_weights}, "teacher mu")
    if omega.shape != (batch, points):
        raise ValueError(f"omega must be [B, P] = {[batch, points]}, got {list(omega.shape)}")
    if row_weights.shape != (batch,):
        raise ValueError(f"row_weights must be [B] = {[batch]}, got {list(row_weights.shape)}")
