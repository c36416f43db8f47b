"""Input checks shared by both backends, run before anything is computed or launched.

Every message names the argument and the shapes involved, so a caller can fix the call
without reading kernel code.
"""
from __future__ import annotations

import numbers

import torch

__all__ = ["check_mixture", "check_points", "check_sample_inputs", "check_seed", "check_row_weights"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t: object, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _check_same_device(named: dict[str, torch.Tensor]) -> None:
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


def check_mixture(
    mu: torch.Tensor, log_sigma: torch.Tensor, nu: torch.Tensor, log_pi: torch.Tensor, role: str = ""
) -> tuple[int, int, int]:
    """Check one mixture's parameters; return (B, K, D)."""
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
    _check_same_device({"mu": mu, "log_sigma": log_sigma, "nu": nu, "log_pi": log_pi})
    # One host sync for both value checks.
    bad_nu, empty_rows = torch.stack(
        [(~(nu > 0)).any(), torch.isneginf(log_pi).all(dim=-1).any()]
    ).tolist()
    if bad_nu:
        raise ValueError(f"{prefix}nu must be positive (and not NaN) everywhere")
    if empty_rows:
        raise ValueError(
            f"{prefix}log_pi has a row where every component is absent (-inf); "
            "each row needs at least one component"
        )
    return batch, components, dim


def _check_on(device: torch.device, named: dict[str, torch.Tensor]) -> None:
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the mixture is on {device}")


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
    mu: torch.Tensor, log_sigma: torch.Tensor, w: torch.Tensor, eps: torch.Tensor | None = None
) -> tuple[int, int, int, int]:
    """Check the inputs of student_t_rsample; return (B, K, S, D)."""
    _check_tensor("mu", mu, 3)
    _check_tensor("log_sigma", log_sigma, 3)
    _check_tensor("w", w, 3)
    if log_sigma.shape != mu.shape:
        raise ValueError(f"log_sigma {tuple(log_sigma.shape)} must match mu {tuple(mu.shape)}")
    batch, components, dim = mu.shape
    if w.shape[:2] != (batch, components) or w.shape[2] == 0:
        raise ValueError(f"w must be [B, K, S] with B={batch}, K={components}, got {list(w.shape)}")
    samples = w.shape[2]
    tensors = {"mu": mu, "log_sigma": log_sigma, "w": w}
    if eps is not None:
        _check_tensor("eps", eps, 4)
        if eps.shape != (batch, components, samples, dim):
            raise ValueError(
                f"eps must be [B, K, S, D] = {[batch, components, samples, dim]}, got {list(eps.shape)}"
            )
        tensors["eps"] = eps
    _check_same_device(tensors)
    return batch, components, samples, dim


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    return int(seed)


def check_row_weights(
    omega: torch.Tensor, w: torch.Tensor, batch: int, points: int, device: torch.device
) -> None:
    _check_tensor("omega", omega, 2)
    _check_tensor("w", w, 1)
    _check_on(device, {"omega": omega, "w": w})
    if omega.shape != (batch, points):
        raise ValueError(f"omega must be [B, P] = {[batch, points]}, got {list(omega.shape)}")
    if w.shape != (batch,):
        raise ValueError(f"w must be [B] = {[batch]}, got {list(w.shape)}")
