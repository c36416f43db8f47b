"""Launcher helpers shared by the three fused operations: tiling, precision, input checks.

Every kernel here holds a whole vector of D coordinates in registers (D is never split
across programs), so a program's working set is a ``[rows, BLOCK_D]`` tile. ``TileConfig``
says how large that tile may be: on a GPU it is bounded by registers (a few dozen fp32
values per thread), in Triton's CPU interpreter by nothing but memory, and there larger
tiles mean fewer interpreted programs and so faster tests.

The kernel modules are imported in one mode per process (see ``runtime``), so the device
type that ``torch.amp.custom_fwd`` needs is fixed at import time too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .runtime import interpreter_enabled

__all__ = [
    "AMP_DEVICE_TYPE",
    "TileConfig",
    "default_tiles",
    "point_tile",
    "row_tile",
    "launch_options",
    "use_fp64",
    "check_launch_inputs",
]

# The autocast device type whose state custom_fwd/custom_bwd record and replay.
AMP_DEVICE_TYPE = "cpu" if interpreter_enabled() else "cuda"

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class TileConfig:
    """Register-tile budget of one program.

    point_tile: elements of one row's ``[BLOCK_P, BLOCK_D]`` tile of points (P is split
        into several tiles beyond it).
    pack_tile: several rows share one program while the whole tile stays within this
        many elements (short rows, e.g. P = 1, would otherwise leave lanes idle).
    max_block_d: largest supported ``next_power_of_2(D)``; larger D raises before launch.
    """

    point_tile: int
    pack_tile: int
    max_block_d: int = 16384

    def __post_init__(self) -> None:
        if min(self.point_tile, self.pack_tile, self.max_block_d) < 1:
            raise ValueError(f"TileConfig fields must be positive, got {self}")


# GPU: a row's [BLOCK_P, BLOCK_D] tile holds up to 8192 values (P = 28 -> 32 points at
# D = 256); rows are packed only up to 2048 values, because at B = 4096 one row per
# program already gives thousands of programs, and more programs hide memory latency.
GPU_TILES = TileConfig(point_tile=8192, pack_tile=2048)
# The interpreter runs each program's tl ops as numpy calls: few large programs are fastest.
INTERPRETER_TILES = TileConfig(point_tile=1 << 16, pack_tile=1 << 16)


def default_tiles() -> TileConfig:
    return INTERPRETER_TILES if interpreter_enabled() else GPU_TILES


def _block_d(dim: int, tiles: TileConfig) -> int:
    block_d = triton.next_power_of_2(dim)
    if block_d > tiles.max_block_d:
        raise ValueError(
            f"D = {dim} is too large for the fused kernels (at most {tiles.max_block_d} "
            "coordinates per vector); use backend='torch'"
        )
    return block_d


def point_tile(batch: int, points: int, dim: int, tiles: TileConfig) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_P, BLOCK_D) for a [rows, points, D] tile: all of D, then points, then rows."""
    block_d = _block_d(dim, tiles)
    block_p = max(1, min(triton.next_power_of_2(points), tiles.point_tile // block_d))
    block_r = max(1, min(triton.next_power_of_2(batch), tiles.pack_tile // (block_p * block_d)))
    return block_r, block_p, block_d


def row_tile(rows: int, dim: int, tiles: TileConfig) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D) for a [rows, D] tile: all of D, and rows up to ``pack_tile``."""
    block_d = _block_d(dim, tiles)
    block_r = max(1, min(triton.next_power_of_2(rows), tiles.pack_tile // block_d))
    return block_r, block_d


def launch_options(tile_elements: int, values_per_thread: int, *, two_programs_per_sm: bool = False) -> dict:
    """num_warps (1..16) so that each thread holds about ``values_per_thread`` tile elements.

    With ``two_programs_per_sm`` the registers are capped (``maxnreg``) so that two
    programs fit the 64K registers of an SM, but only where the cap stays >= 96: below
    that ptxas spills heavily. Interpreted runs ignore both options.
    """
    warps = min(16, triton.next_power_of_2(max(1, tile_elements // (32 * values_per_thread))))
    options = {"num_warps": warps}
    cap = 65536 // (2 * 32 * warps)
    if two_programs_per_sm and 96 <= cap < 255:
        options["maxnreg"] = cap
    return options


def use_fp64(*tensors: torch.Tensor) -> bool:
    """Compute in float64 when any input is float64 (tests, gradient checks), else fp32."""
    return any(t.dtype == torch.float64 for t in tensors)


def check_launch_inputs(named: dict[str, torch.Tensor]) -> None:
    """Checks that must hold before any launch; shapes and values are checked by ``ops``.

    Raises on unsupported dtypes, mixed devices, or a device the loaded kernels cannot
    run on (CUDA kernels and interpreted kernels cannot be mixed in one process).
    """
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in named.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")
    for name, t in named.items():
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} has dtype {t.dtype}; the fused kernels load float16, bfloat16, "
                "float32 or float64"
            )
    device = next(iter(devices))
    expected = "cpu" if interpreter_enabled() else "cuda"
    if device.type != expected:
        mode = "Triton's CPU interpreter" if expected == "cpu" else "CUDA"
        raise ValueError(
            f"the fused kernels were loaded for {mode} in this process but the inputs are "
            f"on {device}; keep all kernel inputs on {expected} tensors"
        )
