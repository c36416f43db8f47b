"""restricted_load: numpy payloads round-trip, anything else is refused before it runs."""
import builtins
import io
import os
import pickle
import warnings

import numpy as np
import pytest

from casd.data.safe_pickle import ALLOWED_GLOBALS, UnsafePickleError, restricted_load


def _payload(rng: np.random.Generator) -> dict:
    n = 5
    return {
        "train": {
            "text": rng.standard_normal((n, 4, 3)).astype(np.float32),
            "audio": rng.standard_normal((n, 6, 2)),  # float64
            "audio_lengths": rng.integers(0, 7, size=n),  # int64
            "mask": rng.random((n, 4)) > 0.5,
            "id": np.array([f"vid{i}$_${rng.integers(100)}" for i in range(n)], dtype=object),
            "raw_text": np.array([f"word {rng.random():.3f}" for _ in range(n)]),  # <U
            "scalar": np.float32(rng.random()),
            "int_scalar": np.int64(rng.integers(1000)),
            "lengths_list": [int(v) for v in rng.integers(0, 9, size=n)],
            "nested": {"tuple": (1.5, "x"), "set": {1, 2}, "frozen": frozenset({"a"}), "none": None},
        }
    }


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_numpy_payload_round_trips(protocol, tmp_path):
    data = _payload(np.random.default_rng(protocol))
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, restricted_load(path))
    with open(path, "rb") as handle:  # a file object works too
        _assert_same(data, restricted_load(handle))


def test_numpy1_module_names_load_without_deprecation(tmp_path):
    # numpy 1.x wrote `numpy.core.multiarray`; numpy 2 writes `numpy._core.multiarray`.
    data = {"x": np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32), "s": np.float64(2.5)}
    blob = pickle.dumps(data, protocol=2)  # GLOBAL opcodes hold the module name as plain text
    ours, theirs = (b"numpy._core.", b"numpy.core.") if b"numpy._core." in blob else (b"numpy.core.", b"numpy._core.")
    blob = blob.replace(ours, theirs)  # the spelling of the other numpy major version
    assert theirs in blob and ours not in blob
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_same(data, restricted_load(io.BytesIO(blob)))


class _OpensFile:
    """Unpickling it would call builtins.open(marker, 'w'): creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_code_in_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"train": {"text": np.zeros(2), "evil": _OpensFile(marker)}}, protocol=4)
    # Control: the stock unpickler really would execute it, so the check below can fail.
    handle = pickle.loads(blob)["train"]["evil"]
    handle.close()
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match=r"(io|builtins)\.open") as info:
        restricted_load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_os_system_is_refused(protocol, tmp_path):
    marker = tmp_path / "shell-marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([np.ones(3), _RunsShell(marker)], protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"(posix|nt|os)\.system"):
        restricted_load(path)
    assert not marker.exists()


class _Plain:
    def __init__(self, value):
        self.value = value


def test_custom_class_instance_is_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"x": _Plain(np.arange(3))}, protocol=4))
    with pytest.raises(UnsafePickleError, match=r"test_data_pickle\._Plain"):
        restricted_load(path)


def test_codecs_encode_only_latin1():
    # Protocols 0-2 spell bytes as _codecs.encode(text, 'latin1'); other codecs are refused.
    good = pickle.dumps(b"\x00\xffab", protocol=2)
    assert restricted_load(io.BytesIO(good)) == b"\x00\xffab"
    bad = good.replace(b"latin1", b"rot_13")
    with pytest.raises(UnsafePickleError, match="rot_13"):
        restricted_load(io.BytesIO(bad))


def test_allow_list_is_small():
    names = {f"{module}.{name}" for module, name in ALLOWED_GLOBALS}
    assert all(name.startswith(("numpy", "_codecs.encode", "builtins.", "__builtin__.")) for name in names)
    assert {n for n in names if "builtin" in n} == {
        "builtins.set", "builtins.frozenset", "__builtin__.set", "__builtin__.frozenset"}
