"""What the benchmarks measure: the shape sweeps and the cases built from them.

The whole parametrisation lives here so that ``conftest.py`` can order the cases (the three
providers of one op/shape/dtype run back to back and share a pytest-benchmark group) and the
report can read the same names back from ``extra_info``.
"""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.measure import Shape

__all__ = [
    "OPS",
    "MODES",
    "PROVIDERS",
    "FUSED_PROVIDERS",
    "E2E_PROVIDERS",
    "TARGET_SHAPE",
    "SWEEPS",
    "E2EConfig",
    "E2E_CONFIGS",
    "E2E_SWEEPS",
    "OpCase",
    "E2ECase",
    "op_cases",
    "e2e_cases",
]

OPS = ("mixture_logpdf", "student_t_rsample", "consistency_distillation")
MODES = ("fwd", "fwd+bwd")
# The five paths side by side: the reference in eager PyTorch and under torch.compile; the
# fused op (backend="triton") eagerly, under torch.compile(fullgraph=True), and replayed from
# a CUDA graph (GPU only).
FUSED_PROVIDERS = ("triton", "triton-compile", "triton-graph")
PROVIDERS = ("eager", "compile") + FUSED_PROVIDERS
E2E_PROVIDERS = ("reference", "fused")  # ObjectiveConfig(backend="torch") vs backend="triton"

# The shape the performance targets are stated at (docs/performance.md).
TARGET_SHAPE = Shape(B=4096, K=7, S=4, D=128)


def _grid(batches, samples, dims) -> list[Shape]:
    return [Shape(b, 7, s, d) for b in batches for s in samples for d in dims]


def _axes() -> list[Shape]:
    """The target shape, then one axis at a time varied around it."""
    shapes = [TARGET_SHAPE]
    shapes += [Shape(b, 7, 4, 128) for b in (1024,)]
    shapes += [Shape(4096, 7, s, 128) for s in (1, 16)]
    shapes += [Shape(4096, 7, 4, d) for d in (64, 256)]
    return shapes


SWEEPS: dict[str, list[Shape]] = {
    # One small shape, so that a 2-core CPU finishes in minutes (each shape costs six cold
    # torch.compile runs): the point is eager vs torch.compile, not absolute speed.
    "cpu": [Shape(256, 7, 4, 64)],
    # Plumbing check only (any machine; with --bench-interpret the fused kernels run through
    # Triton's CPU interpreter): tiny, every provider and mode, numbers meaningless.
    "smoke": [Shape(4, 7, 2, 8)],
    "target": [TARGET_SHAPE],
    "axes": _axes(),
    "full": _grid((1024, 4096), (1, 4, 16), (64, 128, 256)),
}


@dataclass(frozen=True)
class E2EConfig:
    """A CASD training set-up: batch, sequence lengths and model widths."""

    name: str
    batch: int  # teacher rows; the objective runs 2 * batch rows (teacher + student views)
    seq_lens: tuple[int, int, int]  # text, audio, vision frames
    feature_dims: tuple[int, int, int]
    hidden: int
    embed_dim: int  # D of the Student-t components
    num_samples: int  # S

    def as_dict(self) -> dict:
        return {
            "config": self.name,
            "batch": self.batch,
            "seq_lens": list(self.seq_lens),
            "feature_dims": list(self.feature_dims),
            "hidden": self.hidden,
            "embed_dim": self.embed_dim,
            "num_samples": self.num_samples,
        }


E2E_CONFIGS: dict[str, E2EConfig] = {
    # CMU-MOSI-like features (BERT 768, COVAREP-like 5, Facet-like 20) at the trainer's defaults.
    "mosi": E2EConfig("mosi", 64, (50, 50, 50), (768, 5, 20), 64, 32, 4),
    # The op target shape inside a real step: 2 * 2048 = 4096 rows, K = 7, S = 4, D = 128;
    # short sequences so the encoders do not drown the mixture work.
    "target": E2EConfig("target", 2048, (16, 16, 16), (768, 5, 20), 128, 128, 4),
    "cpu-small": E2EConfig("cpu-small", 16, (20, 20, 20), (768, 5, 20), 64, 32, 4),
    "smoke": E2EConfig("smoke", 4, (4, 4, 4), (8, 3, 5), 16, 8, 2),
}

E2E_SWEEPS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu-small",),
    "smoke": ("smoke",),
    "target": ("target",),
    "axes": ("mosi", "target"),
    "full": ("mosi", "target"),
}


@dataclass(frozen=True)
class OpCase:
    op: str
    mode: str  # "fwd" or "fwd+bwd"
    provider: str
    dtype: str  # "fp32" or "bf16": the dtype of z, mu, log_sigma
    shape: Shape

    @property
    def id(self) -> str:
        return f"{self.op}-{self.mode}-{self.dtype}-{self.shape.id}-{self.provider}"

    @property
    def group(self) -> str:
        """pytest-benchmark group: the providers of one measurement side by side."""
        return f"{self.op} {self.mode} {self.dtype} {self.shape.id}"


@dataclass(frozen=True)
class E2ECase:
    config: E2EConfig
    provider: str

    @property
    def id(self) -> str:
        return f"e2e-{self.config.name}-{self.provider}"

    @property
    def group(self) -> str:
        return f"e2e train step {self.config.name}"


def op_cases(sweep: str, dtypes: list[str]) -> list[OpCase]:
    return [
        OpCase(op, mode, provider, dtype, shape)
        for shape in SWEEPS[sweep]
        for dtype in dtypes
        for op in OPS
        for mode in MODES
        for provider in PROVIDERS
    ]


def e2e_cases(sweep: str) -> list[E2ECase]:
    return [E2ECase(E2E_CONFIGS[name], p) for name in E2E_SWEEPS[sweep] for p in E2E_PROVIDERS]
