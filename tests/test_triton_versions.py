"""The kernels under both Tritons we run: compiled for an H100 without spills, and interpreted.

Development and CI run the installed Triton; the lent GPU machines run the one pinned in
``.ci/triton36.txt`` (issue 13), and the same kernels compile to different register counts
under each. So ``python -m benchmarks.compile_kernels`` (which compiles every kernel as its
launcher configures it, ``casd.kernels.fused.compile_check``) runs once per version for
sm_90 at the target shapes, the pinned one in a cached second environment
(``tests/pinned_triton.py``), the two in parallel; no GPU is needed. The registers and stack
of every kernel under both versions are printed at the end of the run. The pinned Triton's
CPU interpreter also runs the kernels against their references, since it needs a fix under
current numpy (``kernels/interpreter_compat.py``).
"""
from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pinned_triton

REPO = Path(__file__).resolve().parents[1]
try:
    INSTALLED = importlib.metadata.version("triton")
except importlib.metadata.PackageNotFoundError:
    INSTALLED = None
PINNED = pinned_triton.pinned_version()
VERSIONS = [v for v in dict.fromkeys([INSTALLED, PINNED]) if v is not None]

# The target shape: B = 4096 rows, K = 7 components, S = 4 samples (P = 28 points), at every
# D the launch heuristics serve, including ones that are not multiples of 16. Every kernel
# must compile without spilling under both versions: there is no list of tolerated spills.
BATCH, COMPONENTS, SAMPLES = 4096, 7, 4
TARGET_DIMS = (64, 96, 100, 120, 128, 256)
TARGET_DTYPES = ("fp32", "bf16")
FP64_DIM = 48  # the float64 test path (gradchecks, references) only has to compile; it may spill
KERNELS = ("mixture forward", "mixture backward", "distillation forward", "rsample forward", "rsample backward",
           "keyed gamma")


def target_names() -> list[str]:
    return [f"{k} D={d} {t}" for d in TARGET_DIMS for t in TARGET_DTYPES for k in KERNELS]


def fp64_names() -> list[str]:
    return [f"{k} D={FP64_DIM} fp64" for k in KERNELS]


def _case(version: str, kernel: str):
    return pytest.param(version, kernel, id=f"triton{version}-{kernel.replace(' ', '-').replace('=', '')}")


class _UsageTable:
    """Compiles once per Triton version (both at once), keeps the results, prints them last."""

    def __init__(self):
        self.results: dict[str, dict | Exception] = {}
        self.notes: list[str] = []

    def compile_all(self) -> None:
        import casd.kernels

        kernels_dir = str(Path(casd.kernels.__file__).resolve().parent)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        shape = ["--batch", str(BATCH), "--components", str(COMPONENTS), "--samples", str(SAMPLES), "--jobs", "1",
                 "--json"]
        commands = [[*shape, "--dtypes", *TARGET_DTYPES, "--dims", *map(str, TARGET_DIMS)],
                    [*shape, "--dtypes", "fp64", "--dims", str(FP64_DIM)]]

        def run(version: str) -> dict:
            if version == INSTALLED:
                python, run_env = Path(sys.executable), env
            else:
                python, info = pinned_triton.python_with_pinned_triton()
                run_env = pinned_triton.env(env)
                self.notes.append(f"Triton {version} environment: {info['source']} "
                                  f"(venv {info.get('venv_seconds', '-')} s, pip {info.get('pip_seconds', '-')} s)")
            kernels = {}
            for arguments in commands:
                result = subprocess.run([str(python), "-m", "benchmarks.compile_kernels", *arguments], cwd=REPO,
                                        env=run_env, capture_output=True, text=True, timeout=900)
                lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
                if result.returncode not in (0, 1) or not lines:  # 1: some kernel spilled, reported per test
                    raise RuntimeError(f"compiling under Triton {version} failed:\n{result.stderr[-4000:]}")
                header = lines[0]
                if header["triton"] != version:
                    raise RuntimeError(f"{python} compiled with Triton {header['triton']}, expected {version}")
                if str(Path(header["kernels"]).resolve()) != kernels_dir:
                    raise RuntimeError(f"{python} compiled the kernels in {header['kernels']}, not {kernels_dir}")
                kernels.update({k["name"]: k for k in lines[1:]})
            return kernels

        # Two processes on two cores: the pinned environment is built (pip, mostly I/O)
        # and compiles while the installed Triton compiles.
        with concurrent.futures.ThreadPoolExecutor(len(VERSIONS)) as pool:
            futures = {version: pool.submit(run, version) for version in VERSIONS}
        for version, future in futures.items():
            try:
                self.results[version] = future.result()
            except Exception as exc:  # noqa: BLE001 - reported by every test of that version
                self.results[version] = exc

    def usage(self, version: str, kernel: str) -> dict:
        if not self.results:
            self.compile_all()
        result = self.results[version]
        if isinstance(result, Exception):
            raise result
        assert kernel in result, f"{kernel} was not compiled under Triton {version}"
        return result[kernel]

    def pytest_terminal_summary(self, terminalreporter):
        if not self.results:
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("-", "sm_90 registers / stack bytes per kernel "
                                        f"(B={BATCH}, K={COMPONENTS}, S={SAMPLES})")
        write(f"{'kernel':<30}" + "".join(f"{'Triton ' + v:>18}" for v in VERSIONS) + "   seconds")
        for name in target_names() + fp64_names():
            cells, seconds = [], []
            for version in VERSIONS:
                found = self.results[version]
                kernel = None if isinstance(found, Exception) else found.get(name)
                if kernel is None:
                    cells.append(f"{'-':>18}")
                    continue
                spill = "  SPILL" if kernel["stack"] else ""
                cells.append(f"{kernel['regs']:>6} / {kernel['stack']:<4}{spill:>7}")
                seconds.append(f"{kernel.get('seconds', 0):.1f}")
            write(f"{name:<30}" + "".join(cells) + "   " + " / ".join(seconds))
        for note in self.notes:
            write(note)


@pytest.fixture(scope="module")
def sm90_usage(request) -> _UsageTable:
    pytest.importorskip("triton.backends.nvidia.compiler")
    table = _UsageTable()
    # A plugin object registered now still takes part in the terminal summary at the end.
    request.config.pluginmanager.register(table, "casd-sm90-usage")
    yield table


@pytest.mark.parametrize(
    "version, kernel", [_case(v, k) for v in VERSIONS for k in target_names()]
)
def test_compiles_for_h100_without_register_spills(sm90_usage, version, kernel):
    """The target shapes in fp32 and bf16 must compile for sm_90 without spilling."""
    usage = sm90_usage.usage(version, kernel)
    assert usage["stack"] == 0, f"{kernel} spills registers under Triton {version}: {usage}"
    if usage["maxnreg"]:
        assert usage["regs"] <= usage["maxnreg"], usage


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"triton{v}")
def test_the_fp64_test_path_compiles_for_h100(sm90_usage, version):
    """float64 (gradchecks, references) only has to compile; it may spill."""
    for kernel in fp64_names():
        assert sm90_usage.usage(version, kernel)["regs"] > 0


# The kernel tests that compare values and gradients with the references (every kernel,
# forward and backward) and the sampler's seeded noise, without the slower property and
# statistics tests: 39 tests, about 30 s.
_REFERENCE_TESTS = ["tests/test_kernel_mixture_logpdf.py", "tests/test_kernel_consistency_distillation.py",
                    "tests/test_kernel_student_t_rsample.py"]


@pytest.mark.skipif(INSTALLED == PINNED, reason="the installed Triton is the pinned one: the suite itself covers it")
def test_the_pinned_tritons_interpreter_runs_the_kernels():
    """The kernels against their references in the pinned Triton's CPU interpreter."""
    python, _ = pinned_triton.python_with_pinned_triton()
    env = pinned_triton.env({**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # the interpreter, even on a GPU machine
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks.repo_imports",
         *_REFERENCE_TESTS, "-k", "reference or regenerates"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"Triton {PINNED} interpreter: {summary}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
