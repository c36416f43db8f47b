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
        f"{b}.{name}" for b in ("builtins", "__builtin__") for name in ("set", "frozenset", "bytes")}


# ---- the loader reads real files exactly as pickle.load does --------------------------------

import sys  # noqa: E402
import types  # noqa: E402

from casd.data.errors import (CorruptPickleError, InvalidDataError, PickleTooLargeError,  # noqa: E402
                              UnreadablePickleError)
from casd.data.safe_pickle import MAX_DEPTH, default_budget  # noqa: E402
from casd.errors import DataError  # noqa: E402

import pickle_forge  # noqa: E402

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar as _scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar as _scalar
    from numpy.core.numeric import _frombuffer


def _every_kind(rng: np.random.Generator) -> dict:
    """Arrays, scalars and containers of every kind a feature pickle may hold."""
    f32 = rng.standard_normal((3, 4, 5)).astype(np.float32)
    audio = rng.standard_normal((2, 6, 3))
    audio[0, 1, 2], audio[1, 0, 0], audio[1, 2, 1] = -np.inf, np.nan, np.inf
    objects_2d = np.array([["a", "béta"], ["", "x" * 300]], dtype=object)
    readonly = rng.standard_normal(4)
    readonly.flags.writeable = False  # protocol 5 writes it in-band as bytes: read-only again
    return {
        "f32": f32, "f64_with_inf_nan": audio, "fortran": np.asfortranarray(f32),
        "big_endian_f8": audio.astype(">f8"), "big_endian_i4": rng.integers(-9, 9, (3, 2)).astype(">i4"),
        "bool": rng.random((4, 3)) > 0.5, "i1": rng.integers(-128, 127, 7).astype(np.int8),
        "u2": rng.integers(0, 60000, 7).astype(np.uint16), "u8": np.array([2**64 - 1, 0], dtype=np.uint64),
        "f2": rng.standard_normal(5).astype(np.float16), "c8": (rng.standard_normal(3) + 1j).astype(np.complex64),
        "c16": np.array([1 - 2j, np.nan + 0j]),
        "str_U": np.array(["clip$_$1", "é漢字", ""]), "str_U_big_endian": np.array(["ab", "c"], dtype=">U2"),
        "bytes_S": np.array([b"ab", b"\x00\xff", b""]),
        "ids": np.array([f"vid{i}$_${i}" for i in range(5)], dtype=object),
        "objects_2d": objects_2d, "objects_fortran": np.asfortranarray(objects_2d),
        "objects_mixed": np.array(["s", b"b", 3, 2**70, -1.5, float("nan"), True], dtype=object),
        "objects_numpy": np.array([np.str_("id$_$1"), np.float64(2.5), np.int64(-3), np.float32(1.5),
                                   np.bytes_(b"x"), np.bool_(False)], dtype=object),
        "zero_d": np.array(3.5), "empty": np.zeros((0, 3)), "empty_objects": np.array([], dtype=object),
        "strided_source": np.arange(20.0)[::3], "readonly": readonly, "transposed": f32.transpose(2, 0, 1),
        "scalars": [np.float32(1.5), np.float64(-np.inf), np.int64(-7), np.uint8(200), np.bool_(True),
                    np.str_("été"), np.bytes_(b"\x01b"), np.complex128(1 + 2j), np.float16(0.25)],
        "plain": {"list": [1, 2.5, "x", None, True, False, b"", b"\x00\xff", 2**100, -(2**70)],
                  "tuple": (1, ("nested", (None,))), "set": {1, "a"}, "frozenset": frozenset({2.5}),
                  "empty": ((), [], {}, set(), frozenset())},
        "lengths_list": [int(v) for v in rng.integers(0, 9, 5)],
    }


def _assert_identical(expected, got, where="value") -> None:
    """Same types, values, dtypes (byte order included), shapes and memory order."""
    assert type(got) is type(expected), where
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.dtype.str == expected.dtype.str, where  # byte order too
        assert got.shape == expected.shape, where
        assert got.strides == expected.strides or expected.size == 0, where  # memory order
        assert got.flags.writeable == expected.flags.writeable, where
        if expected.dtype.kind == "O":
            for i, (a, b) in enumerate(zip(expected.flat, got.flat)):
                _assert_identical(a, b, f"{where}.flat[{i}]")
        else:
            np.testing.assert_array_equal(got, expected, err_msg=where)
    elif isinstance(expected, np.generic):
        assert got.dtype == expected.dtype, where
        np.testing.assert_array_equal(got, expected, err_msg=where)
    elif isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            _assert_identical(expected[key], got[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(expected, got)):
            _assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(got), where
    else:
        assert got == expected, where


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_kind_loads_exactly_as_pickle_load(protocol):
    blob = pickle.dumps(_every_kind(np.random.default_rng(protocol)), protocol=protocol)
    _assert_identical(pickle.loads(blob), restricted_load(io.BytesIO(blob)))


def _numpy1_pickle(value, protocol: int, monkeypatch) -> bytes:
    """Pickle `value` as numpy 1.x does: arrays and scalars under `numpy.core.*` names.

    Stand-ins registered as `numpy.core.multiarray._reconstruct` etc. make the stock pickler
    write those names, with correct framing at every protocol.
    """
    stand_ins = {}
    for module, name, real in (("numpy.core.multiarray", "_reconstruct", _reconstruct),
                               ("numpy.core.multiarray", "scalar", _scalar),
                               ("numpy.core.numeric", "_frombuffer", _frombuffer)):
        fake = types.ModuleType(module) if module not in stand_ins else stand_ins[module]
        stand_ins[module] = fake

        def stand_in(*args, _real=real):
            return _real(*args)
        stand_in.__module__, stand_in.__qualname__, stand_in.__name__ = module, name, name
        setattr(fake, name, stand_in)
        stand_ins[real] = stand_in
    for module in ("numpy.core.multiarray", "numpy.core.numeric"):
        monkeypatch.setitem(sys.modules, module, stand_ins[module])

    class Numpy1Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is np.ndarray or isinstance(obj, np.generic):
                rv = obj.__reduce_ex__(protocol)
                if rv[0] in stand_ins:
                    return (stand_ins[rv[0]], *rv[1:])
            return NotImplemented

    buffer = io.BytesIO()
    Numpy1Pickler(buffer, protocol=protocol).dump(value)
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy1_pickles_load_exactly_as_written(protocol, monkeypatch):
    value = _every_kind(np.random.default_rng(10 + protocol))
    blob = _numpy1_pickle(value, protocol, monkeypatch)
    monkeypatch.undo()
    assert b"numpy.core.multiarray" in blob and b"numpy._core" not in blob
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy 2's numpy.core shim warns
        expected = pickle.loads(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecated numpy.core shim is never imported
        _assert_identical(expected, restricted_load(io.BytesIO(blob)))


def test_real_mmsa_format_file_loads_exactly(tmp_path):
    data = pickle_forge.mmsa_file(seed=3)
    for protocol in (2, 3, 4):
        path = tmp_path / f"unaligned_{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        _assert_identical(data, restricted_load(path))


def test_dtype_flags_written_as_ints_by_old_numpy():
    state = (3, "<", None, None, None, -1, -1, 0)
    blob = pickle.dumps(pickle_forge.forged_array(pickle_forge._Reduce(np.dtype, ("f4", 0, 1), state), (2,),
                                                  np.float32([1.5, -2]).tobytes(), 0), protocol=2)
    got = restricted_load(io.BytesIO(blob))
    assert got.dtype == np.float32 and got.tolist() == [1.5, -2.0]


def test_stream_is_left_after_the_pickle(tmp_path):
    path = tmp_path / "two.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"a": np.arange(3)}, handle, protocol=4)
        pickle.dump("second", handle, protocol=2)
    with open(path, "rb") as handle:
        assert restricted_load(handle)["a"].tolist() == [0, 1, 2]
        assert restricted_load(handle) == "second"


# ---- every failure is one DataError line naming the file -------------------------------------

def _refused(blob: bytes, error=UnreadablePickleError, match: str = "", tmp_path=None, **kwargs):
    """Load `blob` from a file; it must raise `error` with a one-line message naming the file."""
    path = (tmp_path or _refused.tmp) / "refused.pkl"
    path.write_bytes(blob)
    with pytest.raises(error, match=match) as info:
        restricted_load(path, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, DataError) and isinstance(info.value, InvalidDataError)
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message
    return message


@pytest.fixture(autouse=True)
def _refused_tmp(tmp_path):
    _refused.tmp = tmp_path


def test_missing_file_folder_and_empty_file(tmp_path):
    with pytest.raises(UnreadablePickleError, match=r"missing\.pkl: no such file"):
        restricted_load(tmp_path / "missing.pkl")
    with pytest.raises(UnreadablePickleError, match="is a folder"):
        restricted_load(tmp_path)
    _refused(b"", CorruptPickleError, "ends at byte 0 before the STOP")


def test_every_truncation_is_a_clean_error():
    blob = pickle.dumps(pickle_forge.mmsa_file(n=2), protocol=4)
    for cut in [*range(0, len(blob) - 1, 11), *range(len(blob) - 40, len(blob))]:
        with pytest.raises(CorruptPickleError):
            restricted_load(io.BytesIO(blob[:cut]))


@pytest.mark.parametrize("blob, what", [
    (b"P1\n.", "persistent ids"), (b"K\x01Q.", "persistent ids"), (b"(i__main__\nX\n.", "class instances"),
    (b"(o.", "class instances"), (b"\x80\x02))\x81.", "class instances"), (b"\x80\x04))}\x92.", "class instances"),
    (b"\x80\x02\x82\x01.", "extension registry"), (b"\x80\x05\x97.", "out-of-band"),
    (b"\x80\x05C\x01a\x98.", "out-of-band"),
    (b"\x80\x02])R.", r"calling \[\]"), (b"\x80\x02}}b.", "BUILD on {}"),
    (b"\x80\x02cnumpy\nndarray\n.", "holds <allowed global numpy.ndarray>"),
    (b"\x80\x02K\x01K\x02a.", "APPEND on a int"), (b"\x80\x02]K\x01K\x02s.", "SETITEM on a list"),
])
def test_refused_opcodes_and_misuse(blob, what):
    _refused(blob, UnsafePickleError, what)


@pytest.mark.parametrize("blob, what", [
    (b"\x80\x02X\xff\xff\xff\x7fab.", "needs 2147483647 bytes but 3 remain"),
    (b"\x80\x06N.", "unsupported pickle protocol 6"), (b"\x80\x02\xff.", "unknown opcode"),
    (b"\x80\x02t.", "needs a MARK"), (b"\x80\x02\x85.", "IndexError"), (b"\x80\x02h\x07.", "memo key 7"),
    (b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "UnicodeDecodeError"), (b"I12x\n.", "ValueError"),
    (b"I" + b"9" * 5000 + b"\n.", "ValueError"), (b"\x80\x02(K\x01d.", "odd number"),
    (b"\x80\x02}]K\x01s.", "unhashable"), (b"\x80\x02N", "before the STOP"),
])
def test_corrupt_pickles(blob, what):
    _refused(blob, CorruptPickleError, what)


def _arr(dtype, shape, data, fortran=False) -> bytes:
    return pickle.dumps(pickle_forge.forged_array(dtype, shape, data, fortran), protocol=4)


@pytest.mark.parametrize("make, what", [
    (lambda: pickle.dumps(np.array(["2020-01-01"], dtype="M8[D]")), "dtype 'M8'"),
    (lambda: pickle.dumps(np.zeros(2, dtype="V8")), "dtype 'V8'"),
    (lambda: pickle.dumps(np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])), "dtype 'V8'"),
    (lambda: pickle.dumps(np.zeros(2, dtype=np.longdouble)), "sizes of 'f'"),
    (lambda: _arr(np.dtype("?"), (2,), b"\x00\x02"), "bool array"),
    (lambda: _arr(np.dtype("<U1"), (1,), (0x110000).to_bytes(4, "little")), "invalid code points"),
    (lambda: _arr(np.dtype("O"), (1,), [(1, 2)]), "object array holding tuple"),
    (lambda: _arr(np.dtype("O"), (1,), [None]), "object array holding NoneType"),
    (lambda: _arr(np.dtype("O"), (1,), [np.dtype("f4")]), "object array holding Float32DType"),
    (lambda: _arr(np.dtype("O"), (3,), ["a", "b"]), "list of 3 items"),
    (lambda: _arr(np.dtype("f8"), (3,), bytes(32)), "32 bytes for 3 items"),
    (lambda: _arr(np.dtype("f8"), (-1,), bytes(8)), r"shape \(-1,\)"),
    (lambda: _arr(np.dtype("f8"), (1,) * 33, bytes(8)), "at most 32 ints"),
    (lambda: _arr(np.dtype("f8"), (2.0,), bytes(16)), r"shape \(2.0,\)"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_reconstruct, (np.ndarray, (5,), b"b"))), "_reconstruct"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_frombuffer, (b"A" * 8, np.dtype("O"), (1,), "C"))), "dtype object"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_frombuffer, (b"A" * 8, np.dtype("f8"), (2,), "C"))), "8 bytes for 2"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_frombuffer, (b"A" * 8, np.dtype("f8"), (1,), "X"))), "order 'X'"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_frombuffer, (b"A" * 8, np.dtype("f8"), (1,), "K"))), "order 'K'"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_frombuffer, (bytes(16), np.dtype("f8"), (1, 2), "K", (0, 0)))),
     "permutation"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_scalar, (np.dtype("f8"), b"abc"))), "scalar of 3 bytes"),
    (lambda: pickle.dumps(pickle_forge._Reduce(_scalar, (np.dtype("O"), "x"))), "object-dtype numpy scalar"),
    (lambda: pickle.dumps(pickle_forge.forged_dtype("f4", (3, "<", None, None, None, 8, -1, 0))), "says 8 bytes"),
    (lambda: pickle.dumps(pickle_forge.forged_dtype("U1", (3, "<", None, None, None, 6, 4, 8))), "U dtype of 6"),
    (lambda: pickle.dumps(pickle_forge.forged_dtype("f4", (3, "<", None, None, None, -1, -1, 0, {"m": 1}))),
     "version-3 state"),
    (lambda: pickle.dumps(pickle_forge._Reduce(set, (1, 2))), "expected a list"),
])
def test_arrays_and_dtypes_only_from_validated_state(make, what):
    _refused(make(), UnsafePickleError, what)


@pytest.mark.parametrize("name, error, what", [
    ("object_array_over_bytes", UnsafePickleError, "expected a list of 4 items"),
    ("object_field_over_bytes", UnsafePickleError, "dtype 'V8'"),
    ("field_past_itemsize", UnsafePickleError, "dtype 'V4'"),
    ("subarray_dtype_past_itemsize", UnsafePickleError, "dtype 'V4'"),
    ("zero_stride_array", UnsafePickleError, "calling numpy.ndarray"),
    ("short_data_array", UnsafePickleError, "16 bytes for 72 items"),
    ("memo_amplified", PickleTooLargeError, "more than"),
    ("deep_tuple", UnsafePickleError, f"nested more than {MAX_DEPTH} deep"),
    ("huge_length_claim", CorruptPickleError, "needs 1152921504606846976 bytes"),
    ("out_of_band_buffer", UnsafePickleError, "out-of-band"),
])
def test_hostile_files_are_refused(name, error, what):
    # In-process is safe: the loader refuses before building anything harmful (the subprocess
    # test in test_data_hostile.py checks the same under a memory limit, end to end).
    _refused(pickle_forge.HOSTILE[name](), error, what)


def test_nesting_depth_limit():
    depth_ok = b"\x80\x04)" + b"\x85" * MAX_DEPTH + b"."  # ((((),),)...): MAX_DEPTH tuples around ()
    assert restricted_load(io.BytesIO(depth_ok)) is not None
    _refused(b"\x80\x04)" + b"\x85" * (MAX_DEPTH + 1) + b".", UnsafePickleError, "nested")


def test_decoded_size_cap_explicit_and_default(tmp_path):
    data = {"x": np.zeros(1000)}  # 8000 bytes of array data
    path = tmp_path / "small.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert restricted_load(path)["x"].shape == (1000,)
    with pytest.raises(PickleTooLargeError, match="more than 4000 bytes"):
        restricted_load(path, max_bytes=4000)
    assert default_budget(10) == 64 * 2**20 + 160
    # Many references to one memoized buffer: each array is a copy, so each is charged.
    _refused(pickle_forge.memo_amplified(copies=3, megabytes=1), PickleTooLargeError, "more than",
             max_bytes=2 * 2**20)
    assert restricted_load(io.BytesIO(pickle_forge.memo_amplified(copies=3, megabytes=1)))


def test_unreadable_file_is_one_line(tmp_path, monkeypatch):
    import re

    from casd.data import safe_pickle

    path = tmp_path / "locked.pkl"
    path.write_bytes(pickle.dumps(1))

    def denied(*args, **kwargs):  # tests run as root here, which reads any file: fake the refusal
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(safe_pickle, "open", denied, raising=False)
    with pytest.raises(UnreadablePickleError, match=rf"^{re.escape(str(path))}: cannot read: Permission denied$"):
        restricted_load(path)
