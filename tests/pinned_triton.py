"""A second Python environment that differs from the test run's only in its Triton release.

The lent GPU machines run Triton 3.6 while development and CI run a newer one, and the same
kernels compile to different register counts under each. ``tests/test_triton_versions.py``
therefore compiles them for sm_90 twice: with the installed Triton, and in this environment
with the release pinned in ``.ci/triton36.txt``. No GPU is needed.

The environment is a venv in which pip installs only the pinned requirements. A ``.pth``
file in it appends, at start-up, the folders listed in ``$CASD_OUTER_SITE``: ``env()`` sets
that to the running Python's ``sys.path`` (its site-packages, whatever ``.pth`` files and
PYTHONPATH added; the standard library is there already and is skipped), so torch, numpy and
everything else are the test run's own, while ``import triton`` finds the pinned release
first (the venv's folder precedes the appended ones). The ``.pth`` is written after pip has run, so pip
never sees, and never tries to replace, the outer Triton; and since the outer folders are
not baked in, one environment serves every checkout and virtualenv built on the same Python.

It is cached under ``$CASD_CACHE_DIR`` (default ``$XDG_CACHE_HOME/casd``, i.e.
``~/.cache/casd``; about 650 MB), in a folder named after the pin and keyed by the pinned
requirements and the base Python, so a change to either builds a new one (delete old ones
by hand). A build happens in a temporary folder that is renamed into place when complete:
an interrupted build leaves nothing that is mistaken for an environment, and of two
concurrent builds the second to finish uses the first's. ``CASD_TRITON36_PYTHON=/path/to/python``
uses an existing interpreter with the pinned Triton instead.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["REQUIREMENTS", "PinnedTritonError", "env", "pinned_version", "python_with_pinned_triton"]

REQUIREMENTS = Path(__file__).resolve().parents[1] / ".ci" / "triton36.txt"
OVERRIDE_VARIABLE = "CASD_TRITON36_PYTHON"
_MARKER = "casd-environment.json"  # written last: its presence means the build completed
_OUTER_SITE = "CASD_OUTER_SITE"
# One line, executed by site.py at start-up (a comprehension could not see the imports there).
_PTH = f"import os, site; list(map(site.addsitedir, filter(None, os.environ.get({_OUTER_SITE!r}, '').split(os.pathsep))))\n"


class PinnedTritonError(RuntimeError):
    """The pinned environment could not be built or does not hold the pinned Triton."""


def _requirements() -> list[str]:
    """The requirement lines of the pin file, without comments and blanks."""
    lines = (line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def pinned_version() -> str:
    """The Triton version that ``.ci/triton36.txt`` pins (``triton==X.Y.Z``)."""
    for requirement in _requirements():
        requirement = requirement.replace(" ", "")
        if requirement.startswith("triton=="):
            return requirement.removeprefix("triton==")
    raise PinnedTritonError(f"{REQUIREMENTS} pins no triton==X.Y.Z")


def _cache_root() -> Path:
    if os.environ.get("CASD_CACHE_DIR"):
        return Path(os.environ["CASD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "casd"


def _outer_paths() -> list[str]:
    """Where the running Python finds its packages (site.addsitedir skips what is known)."""
    return [path for path in sys.path if path and os.path.isdir(path)]


def env(base: dict | None = None) -> dict:
    """Environment variables for running the pinned Python: ``base`` (default os.environ)
    plus the running Python's package folders for its ``.pth`` to append."""
    return {**(os.environ if base is None else base), _OUTER_SITE: os.pathsep.join(_outer_paths())}


def _triton_version(python: Path) -> str:
    result = subprocess.run(
        [str(python), "-c", "import triton; print(triton.__version__)"],
        capture_output=True, text=True, timeout=120, env=env(),
    )
    if result.returncode != 0:
        raise PinnedTritonError(f"{python} cannot import triton: {result.stderr.strip()[-1000:]}")
    return result.stdout.strip()


def _run(step: str, command: list[str], log) -> None:
    log(f"pinned Triton environment: {step}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise PinnedTritonError(
            f"{step} failed (exit {result.returncode}): {' '.join(command)}\n"
            f"{(result.stdout + result.stderr)[-3000:]}\n"
            f"(to use an existing Python with the pinned Triton instead, set {OVERRIDE_VARIABLE})"
        )


def _outer_pip_can_target() -> bool:
    """pip >= 22.3 can install into another interpreter's environment (``pip --python``)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (22, 3)


def _build(folder: Path, log) -> dict:
    t0 = time.perf_counter()
    # sys.executable may itself be a venv's Python; venv then bases the new one on the
    # same installation, and the .pth below appends that venv's folders at start-up. This
    # Python's pip installs into it when it can: bootstrapping pip into the new venv
    # (ensurepip) would cost more than everything else here (12 s against 0.2 s).
    outer_pip = _outer_pip_can_target()
    _run("creating a venv", [sys.executable, "-m", "venv", *(["--without-pip"] if outer_pip else []), str(folder)], log)
    t_venv = time.perf_counter()
    python = folder / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)] if outer_pip else [str(python), "-m", "pip"]
    _run(f"pip install -r {REQUIREMENTS.name}",
         [*pip, "install", "--disable-pip-version-check", "--no-input", "-r", str(REQUIREMENTS)], log)
    t_pip = time.perf_counter()
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "casd_outer_site.pth").write_text(_PTH)
    return {"venv_seconds": round(t_venv - t0, 1), "pip_seconds": round(t_pip - t_venv, 1),
            "built_by": sys.executable}


def python_with_pinned_triton(log=lambda message: None) -> tuple[Path, dict]:
    """The Python of an environment with the pinned Triton, and how it was obtained.

    Builds the cached environment on first use (a venv and one pip install: 25 s here with
    the 190 MB download from PyPI, 6 s from a local wheel cache); later calls reuse it.
    Raises PinnedTritonError with pip's output when the build fails.
    """
    version = pinned_version()
    override = os.environ.get(OVERRIDE_VARIABLE)
    if override:
        found = _triton_version(Path(override))
        if found != version:
            raise PinnedTritonError(f"{OVERRIDE_VARIABLE}={override} has triton {found}, not the pinned {version}")
        return Path(override), {"source": OVERRIDE_VARIABLE}

    base_python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    key = hashlib.sha256("\n".join([*_requirements(), sys.version, base_python, _PTH]).encode()).hexdigest()[:12]
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    folder = _cache_root() / f"triton-{version}-{py}-{key}"
    python = folder / "bin" / "python"
    if (folder / _MARKER).is_file():
        info = json.loads((folder / _MARKER).read_text())
        return python, {**info, "source": f"reused {folder}"}

    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not (folder / _MARKER).is_file():
        shutil.rmtree(folder)  # not one of ours (those are renamed into place complete)
    building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        info = _build(building, log)
        found = _triton_version(building / "bin" / "python")
        if found != version:
            raise PinnedTritonError(f"the built environment has triton {found}, not the pinned {version}")
        (building / _MARKER).write_text(json.dumps(info, indent=1))
        try:
            building.rename(folder)
        except OSError:  # another process finished first: use its environment
            if not (folder / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return python, {**info, "source": f"built {folder}"}
