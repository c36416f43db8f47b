"""Launch settings shared by the fused operations: tiles, warps, precision, device, input checks.

Every kernel here holds a whole vector of D coordinates in registers (D is never split
across programs), so a program's working set is a ``[rows, BLOCK_D]`` tile. ``TileConfig``
says how large that tile may be: on a GPU it is bounded by registers (a few dozen fp32
values per thread), in Triton's CPU interpreter by nothing but memory, and there larger
tiles mean fewer interpreted programs and so faster tests. ``LaunchOptions`` are the
per-launch compiler settings (warps, register cap) derived from a tile.

Launches happen on the tensors' own device (``device_guard``): Triton launches on the
*current* CUDA device, which need not be the one holding the tensors (``cuda:1``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton

from ..runtime import interpreter_enabled

__all__ = [
    "TileConfig",
    "LaunchOptions",
    "GPU_TILES",
    "INTERPRETER_TILES",
    "default_tiles",
    "tiles_or_default",
    "point_tile",
    "row_tile",
    "WarpPolicy",
    "use_fp64",
    "compute_dtypes",
    "device_guard",
]

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


@dataclass(frozen=True)
class LaunchOptions:
    """Compiler settings of one launch: warps per program and an optional register cap."""

    num_warps: int
    maxnreg: int | None = None

    def kwargs(self) -> dict:
        """As Triton's launch keywords (the interpreter ignores both)."""
        return {"num_warps": self.num_warps} if self.maxnreg is None else {
            "num_warps": self.num_warps, "maxnreg": self.maxnreg}


# GPU: a row's [BLOCK_P, BLOCK_D] tile holds up to 8192 values (P = 28 -> 32 points at
# D = 256); rows are packed only up to 2048 values, because at B = 4096 one row per
# program already gives thousands of programs, and more programs hide memory latency.
GPU_TILES = TileConfig(point_tile=8192, pack_tile=2048)
# The interpreter runs each program's tl ops as numpy calls: few large programs are fastest.
INTERPRETER_TILES = TileConfig(point_tile=1 << 16, pack_tile=1 << 18)


def default_tiles() -> TileConfig:
    return INTERPRETER_TILES if interpreter_enabled() else GPU_TILES


def tiles_or_default(point_tile: int, pack_tile: int) -> TileConfig:
    """The custom ops pass a tile override as two ints (0, 0 = the device's default)."""
    if point_tile == 0 and pack_tile == 0:
        return default_tiles()
    return TileConfig(point_tile=point_tile, pack_tile=pack_tile)


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


@dataclass(frozen=True)
class WarpPolicy:
    """How a kernel spreads its register tile over threads: ``options(tile)`` picks num_warps
    (1..16) so that each thread holds about ``values_per_thread`` tile elements.

    With ``two_programs_per_sm`` the registers are capped (``maxnreg``) so that two
    programs fit the 64K registers of an SM, but only where the cap stays >= 96: below
    that ptxas spills heavily. (16 warps = 512 threads cap a thread at 128 registers anyway.)
    Each kernel module states its policies next to the registers they were measured at.
    """

    values_per_thread: int
    two_programs_per_sm: bool = False
    # Warps when the tile would need more than 16 at ``values_per_thread``: 16 (512 threads)
    # caps every thread at 128 registers; kernels that need more per thread use 8 instead
    # (up to 255 registers, one program per SM).
    crowded_warps: int = 16

    def options(self, tile_elements: int) -> LaunchOptions:
        warps = triton.next_power_of_2(max(1, tile_elements // (32 * self.values_per_thread)))
        if warps > 16:
            return LaunchOptions(num_warps=self.crowded_warps)
        cap = 65536 // (2 * 32 * warps)
        if self.two_programs_per_sm and 96 <= cap < 255:
            return LaunchOptions(num_warps=warps, maxnreg=cap)
        return LaunchOptions(num_warps=warps)


def use_fp64(*tensors: torch.Tensor) -> bool:
    """Compute in float64 when any input is float64 (tests, gradient checks), else fp32."""
    return any(t.dtype == torch.float64 for t in tensors)


def compute_dtypes(fp64: bool):
    """(torch dtype, tl dtype) of the computation and of the outputs."""
    import triton.language as tl

    return (torch.float64, tl.float64) if fp64 else (torch.float32, tl.float32)


def device_guard(device: torch.device):
    """Make ``device`` the current CUDA device for a launch (a no-op off CUDA).

    Triton launches on the current device and its current stream; without the guard,
    tensors on cuda:1 would be read by a kernel running on cuda:0.
    """
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
