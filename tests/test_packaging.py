"""Packaging: one version, the files a release needs, and ``pip install -e .`` alone runs every
documented entry point (test-only packages such as scipy are never needed at run time)."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import casd

ROOT = Path(__file__).resolve().parents[1]
SETUP = ast.parse((ROOT / "setup.py").read_text())
# Import names of the distributions in install_requires (where they differ from the name).
IMPORT_NAME = {}
# The documented commands: every one must start with only install_requires installed.
ENTRY_POINTS = ["casd", "casd.train", "casd.predict", "casd.study", "casd.data.synthetic"]
EXAMPLES = ["examples/late_fusion_lstm.py", "examples/mmsa_casd_head.py"]


def setup_keyword(name: str):
    call = next(n for n in ast.walk(SETUP) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == name))


def install_requires() -> set[str]:
    names = {re.split(r"[<>=!~ \[]", requirement)[0] for requirement in setup_keyword("install_requires")}
    return {IMPORT_NAME.get(n, n) for n in names}


def test_one_version_everywhere():
    version_file = (ROOT / "casd" / "_version.py").read_text()
    assert f'__version__ = "{casd.__version__}"' in version_file
    assert "version=read_version()" in (ROOT / "setup.py").read_text()
    assert f'version: "{casd.__version__}"' in (ROOT / "CITATION.cff").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{casd.__version__}]" in changelog


def test_license_and_type_marker_ship():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the casd developers")
    assert (ROOT / "casd" / "py.typed").exists() and "py.typed" in setup_keyword("package_data")["casd"]


def test_console_scripts_point_at_mains():
    scripts = dict(s.split("=", 1) for s in setup_keyword("entry_points")["console_scripts"])
    assert set(scripts) == {"casd", "casd-train", "casd-predict", "casd-study"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), target


def third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("casd", "__future__")}


@pytest.mark.parametrize("path", sorted([*(ROOT / "casd").rglob("*.py"), *(ROOT / "kernels").glob("*.py"),
                                         *(ROOT / "examples").glob("*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_code_imports_only_what_install_requires_provides(path):
    """Every import, also those inside functions (the study's --diagnose path), is covered."""
    extra = third_party_imports(path) - install_requires()
    assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}, which `pip install -e .` does not install"


BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = {"scipy", "sklearn", "pandas", "hypothesis", "pytest"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed by `pip install -e .`")
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Block())
import casd.study.diagnostics  # the --diagnose path
for target in sys.argv[1:]:
    sys.argv = [target, "--help"]
    try:
        (runpy.run_path if target.endswith(".py") else runpy.run_module)(target, run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None), (target, exc.code)
print("ALL STARTED")
"""


def test_entry_points_start_without_test_only_packages():
    done = subprocess.run([sys.executable, "-c", BLOCKER, *ENTRY_POINTS, *EXAMPLES], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ALL STARTED" in done.stdout, done.stderr[-3000:]
