"""The structure reads top-down: a module imports only from its own level or below.

    entry points   train, predict, study, flags, report, inference, mmsa_run (python -m casd), results_csv
    run config     config
    training       trainer, checkpoint, evaluate, predictions, uncertainty_report
    models         registry, model, baseline, reliability, encoders, objective, sampler, distillation
    services       data, metrics, uncertainty_metrics, device, distributed, provenance, outputs
    layers         layers
    tables         modalities, vocab, errors, serialize, _version, cli
    kernels        casd.kernels (torch and triton only)

(docs/architecture.md draws this picture.) The check reads each module's imports statically,
so a violation fails here before it becomes an import cycle.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEVEL = {
    "__init__": 8,  # the package root (casd/__init__.py) may offer anything
    "inference": 7, "mmsa_run": 7, "results_csv": 7, "__main__": 7,
    "train": 7, "predict": 7, "study": 7, "flags": 7, "report": 7,
    "config": 6,
    "trainer": 5, "checkpoint": 5, "evaluate": 5, "predictions": 5, "uncertainty_report": 5, "calibration": 5,
    "registry": 4, "model": 4, "baseline": 4, "reliability": 4, "encoders": 4, "objective": 4, "sampler": 4, "distillation": 4,
    "data": 3, "metrics": 3, "uncertainty_metrics": 3, "device": 3, "distributed": 3, "provenance": 3, "outputs": 3,
    "layers": 2,
    "modalities": 1, "vocab": 1, "errors": 1, "serialize": 1, "_version": 1, "cli": 1,
    "kernels": 0,
}
# Within the models level the dependencies still point one way.
MODEL_ORDER = ["registry", "baseline", "objective", "distillation", "sampler", "model", "reliability", "encoders"]


def modules() -> list[tuple[str, Path]]:
    found = [(p.stem if p.parent.name == "casd" else p.parent.name, p) for p in (ROOT / "casd").rglob("*.py")]
    found += [("kernels", p) for p in (ROOT / "kernels").glob("*.py")]
    return found


def casd_imports(path: Path) -> set[str]:
    """The top-level casd module names a file imports (casd.data.x -> data)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("casd"):
            parts = node.module.split(".")
            names.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("casd."))
    return names


@pytest.mark.parametrize("name,path", modules(), ids=lambda x: str(x.relative_to(ROOT)) if isinstance(x, Path) else x)
def test_modules_import_only_from_their_level_or_below(name, path):
    assert name in LEVEL, f"{path.relative_to(ROOT)}: add its module to LEVEL (and docs/architecture.md)"
    for imported in casd_imports(path) - {name}:
        assert LEVEL[imported] <= LEVEL[name], f"{path.relative_to(ROOT)} ({name}) imports casd.{imported}"
        if name in MODEL_ORDER and imported in MODEL_ORDER:
            assert MODEL_ORDER.index(imported) > MODEL_ORDER.index(name), f"{name} imports {imported}"
