"""Hostile feature files, loaded end to end in a child process under a memory limit.

A memory-unsafe load shows up as a crash (SIGSEGV) of the child, not as a failed assertion,
so every file of `pickle_forge.HOSTILE` goes through `load_mmsa` in one child whose address
space is capped at 1 GiB above what it had after its imports. The child prints one JSON line
per file; the parent checks that each ended in a one-line DataError naming the file. Controls
show that each of the three attacks of issue 9 really is harmful to the stock unpickler (what
the old loader ran), so these tests can fail.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pickle_forge

REPO = Path(__file__).resolve().parents[1]

# The child imports casd.data.mmsa without casd/data/__init__.py, which imports torch (2-7 s).
CHILD_PRELUDE = textwrap.dedent("""
    import json, os, resource, sys, types
    import casd
    package = types.ModuleType("casd.data")
    package.__path__ = [os.path.join(os.path.dirname(casd.__file__), "data")]
    sys.modules["casd.data"] = package
    import numpy as np
    from casd.data.mmsa import load_mmsa
    from casd.errors import DataError

    def cap_memory(extra_bytes):
        with open("/proc/self/status") as status:
            vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, vm + extra_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
""")

LOAD_ALL = CHILD_PRELUDE + textwrap.dedent("""
    cap_memory(1 << 30)
    for path in sys.argv[1:]:
        print(json.dumps({"path": path, "started": True}), flush=True)
        try:
            splits = load_mmsa(path)
            result = {"loaded": True, "audio_nonzero": int(np.count_nonzero(splits["train"].audio))}
        except DataError as exc:
            result = {"error": type(exc).__name__, "data_error": True, "message": str(exc)}
        except BaseException as exc:
            result = {"error": type(exc).__name__, "data_error": False, "message": str(exc)}
        print(json.dumps({"path": path, **result}), flush=True)
""")


def _child_env() -> dict:
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_child(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_child_env())


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = []
    for name, make in pickle_forge.HOSTILE.items():
        path = folder / f"{name}.pkl"
        path.write_bytes(make())
        paths.append(str(path))
    child = run_child(LOAD_ALL, *paths)
    results = {}
    for line in child.stdout.splitlines():
        record = json.loads(line)
        results.setdefault(Path(record["path"]).stem, {}).update(record)
    return results, child


@pytest.mark.parametrize("name", list(pickle_forge.HOSTILE))
def test_hostile_file_ends_in_one_data_error_line(name, hostile_results):
    results, child = hostile_results
    assert child.returncode == 0, f"child exited {child.returncode} (-11 is a segfault); last file: " \
                                  f"{list(results)[-1:]}\n{child.stderr[-2000:]}"
    record = results[name]
    assert record.get("data_error") is True, record
    message = record["message"]
    assert message.startswith(record["path"] + ": ") and "\n" not in message, message
    assert record["error"] in ("UnsafePickleError", "CorruptPickleError", "PickleTooLargeError"), record


# ---- controls: the stock unpickler (what the old allow-list loader ran) is harmed -----------

CRASH_WITH_STOCK_PICKLE = CHILD_PRELUDE + textwrap.dedent("""
    import pickle
    cap_memory(1 << 30)
    value = pickle.loads(open(sys.argv[1], "rb").read())
    print("loaded", flush=True)
    print("survived reading it:", len(repr(value)), flush=True)  # repr reads every object pointer
""")


@pytest.mark.parametrize("name", ["object_array_over_bytes", "deep_tuple"])
def test_control_stock_unpickler_crashes(name, tmp_path):
    # With numpy 2.4 / Python 3.11 both segfault. A later numpy or Python may refuse them with an
    # exception instead (a fix on their side); reading the value without error never happens.
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(pickle_forge.HOSTILE[name]())
    child = run_child(CRASH_WITH_STOCK_PICKLE, str(path))
    assert "survived" not in child.stdout, (child.returncode, child.stdout)
    assert child.returncode == -signal.SIGSEGV or "Error" in child.stderr, (child.returncode, child.stderr[-500:])


def test_control_stock_unpickler_accepts_a_field_past_the_item_size():
    value = pickle.loads(pickle_forge.field_past_itemsize())["train"]["audio"]  # built, never read
    (field_dtype, offset), = value.dtype.fields.values()
    assert offset + field_dtype.itemsize > value.dtype.itemsize


def test_control_stock_unpickler_makes_a_24_gb_view_of_8_bytes():
    value = pickle.loads(pickle_forge.zero_stride_array())["train"]["vision"]  # a view: nothing allocated
    assert value.strides == (0, 0, 0) and value.shape == pickle_forge.ZERO_STRIDE_SHAPE
    assert value.nbytes == 24_000_000_000
