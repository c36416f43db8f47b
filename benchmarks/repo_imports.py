"""Make ``casd`` and ``casd.kernels`` importable from a plain checkout, without ``pip install``.

The kernels live in the top-level folder ``kernels/`` but are imported as ``casd.kernels``
(setup.py maps them), so a checkout on ``sys.path`` alone gives ``casd`` without its
``kernels`` subpackage. When that is the case, this module adds a meta-path finder that maps
exactly that one name to ``<repo>/kernels``; submodules then resolve through the package's
``__path__``. An installed ``casd`` (editable or not) is left alone.

Used by ``benchmarks/conftest.py`` and, for the tests under ``tests/``, as a pytest plugin:
``python -m pytest -p benchmarks.repo_imports tests/...`` (see ``gpu_check.sh``).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__all__ = ["REPO_ROOT", "ensure_casd_importable"]

REPO_ROOT = Path(__file__).resolve().parents[1]


class _KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``casd.kernels`` at ``<repo>/kernels``."""

    def __init__(self, kernels_dir: Path):
        self.kernels_dir = kernels_dir

    def find_spec(self, name, path=None, target=None):
        if name != "casd.kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, self.kernels_dir / "__init__.py", submodule_search_locations=[str(self.kernels_dir)]
        )


def ensure_casd_importable() -> str:
    """Import ``casd.kernels``, adding the checkout finder if needed; return where it came from."""
    try:
        import casd.kernels  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name not in ("casd", "casd.kernels"):
            raise  # a real missing dependency (torch, ...): say so, do not paper over it
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        sys.meta_path.append(_KernelsFinder(REPO_ROOT / "kernels"))
        import casd.kernels  # noqa: F401
    return str(Path(sys.modules["casd.kernels"].__file__).resolve().parent)


# Loaded as a pytest plugin (-p benchmarks.repo_imports): act at import.
ensure_casd_importable()
