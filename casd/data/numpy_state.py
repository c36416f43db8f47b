"""numpy dtypes, arrays and scalars made from a pickle's state, after checking that state.

`casd.data.safe_pickle` decodes the pickle's opcodes and hands the values that numpy's own
reducers would have written here; each function checks them against what numpy writes for a
*plain* object and builds the object itself. Nothing here calls a numpy constructor with the
file's arguments: a dtype is made from ``"<order><kind><size>"`` alone, an array is allocated
here and the file's bytes copied in. What is refused, and why:

- dtype kinds other than b, i, u, f, c (their usual sizes), S, U, O; fields, subarrays and
  metadata (a field past the item size reads the heap); the state's flags are ignored (flags
  0 on an object dtype made numpy copy raw bytes in as object pointers);
- shapes other than at most `MAX_NDIM` non-negative ints; data other than exactly
  size x item size bytes, C- or Fortran-contiguous (no strides or offsets: a zero stride made
  8 bytes claim 24 GB); object arrays other than a list of exactly ``size`` str, bytes, int or
  float values (or numpy scalars of those kinds, which only `scalar_from_bytes` makes);
- bytes numpy never writes: bool other than 0/1, str code points past U+10FFFF.

A refusal raises `RefusedState`, which the caller turns into an `UnsafePickleError` naming the
file and byte offset. `charge(nbytes)` is called before each allocation (the decoded-size cap).
"""
from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable

import numpy as np

__all__ = ["MAX_NDIM", "RefusedState", "array_from_buffer", "array_from_state", "dtype_from_state",
           "dtype_spec", "is_int", "scalar_from_bytes", "short_repr"]

MAX_NDIM = 32  # numpy 1.x's limit (numpy 2 allows 64)
ARRAY_OVERHEAD = 128  # bytes charged for an ndarray object besides its data
SLOT = 8  # bytes charged per object reference

_FIXED_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
_CHAR_SIZES = {"S": 1, "U": 4}  # flexible kinds: bytes per character; the length is in the state
_BYTE_ORDERS = ("<", ">", "=", "|")
_NATIVE = "<" if sys.byteorder == "little" else ">"
_TYPESTR = re.compile(r"([biufcSUO])([0-9]{0,6})")
_OBJECT_ELEMENTS = frozenset({str, bytes, int, float, bool})  # bool is an int
_OBJECT_NUMPY_ELEMENTS = (np.str_, np.bytes_, np.bool_, np.integer, np.floating)

Charge = Callable[[int], None]


class RefusedState(Exception):
    """The pickle's arguments or state do not describe a plain numpy object."""


def short_repr(value: object, limit: int = 60) -> str:
    """A one-line repr, cut to `limit` characters, for error messages."""
    text = f"array{list(value.shape)} {value.dtype}" if isinstance(value, np.ndarray) else repr(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: object) -> bool:
    return type(value) is int


def _is_flag(value: object) -> bool:
    """A bool as numpy pickles it: True/False, or 0/1 from old writers."""
    return type(value) is bool or (type(value) is int and value in (0, 1))


# ---- dtypes ------------------------------------------------------------------------------------

def dtype_spec(args: tuple) -> tuple[str, int | None]:
    """``numpy.dtype(typestr, align, copy)`` -> (kind, fixed item size or None)."""
    if len(args) != 3 or type(args[0]) is not str or not _is_flag(args[1]) or not _is_flag(args[2]):
        raise RefusedState(f"numpy.dtype{short_repr(args)}; expected (typestr, align, copy)")
    match = _TYPESTR.fullmatch(args[0])
    if match is None:
        raise RefusedState(f"dtype {args[0]!r:.40}; allowed: bool, int, uint, float, complex, bytes (S), "
                           f"str (U) and object (O) without fields")
    kind, digits = match.group(1), match.group(2)
    if kind in _FIXED_SIZES and (not digits or int(digits) not in _FIXED_SIZES[kind]):
        raise RefusedState(f"dtype {args[0]!r} (sizes of {kind!r}: {_FIXED_SIZES[kind]})")
    if kind == "O" and digits not in ("4", "8"):
        raise RefusedState(f"dtype {args[0]!r}")
    return kind, int(digits) if kind in _FIXED_SIZES else None


def dtype_from_state(spec: tuple[str, int | None], state: object) -> np.dtype:
    """The dtype of `spec` completed by numpy's ``__setstate__`` state (version 3, or 4 without metadata)."""
    kind, size = spec
    if type(state) is not tuple or not ((len(state) == 8 and state[0] == 3)
                                        or (len(state) == 9 and state[0] == 4 and state[8] is None)):
        raise RefusedState(f"dtype state {short_repr(state)}; expected numpy's version-3 state")
    _, order, subarray, names, fields, elsize, alignment, flags = state[:8]
    if subarray is not None or names is not None or fields is not None:
        raise RefusedState("a dtype with fields or a subarray (only plain dtypes are allowed)")
    if order not in _BYTE_ORDERS or not (is_int(elsize) and is_int(alignment) and is_int(flags)):
        raise RefusedState(f"dtype state {short_repr(state)}")
    if kind in _CHAR_SIZES:
        if elsize < 1 or elsize % _CHAR_SIZES[kind] or elsize >= 2**31:
            raise RefusedState(f"a {kind} dtype of {elsize} bytes")
        text = f"{order}{kind}{elsize // _CHAR_SIZES[kind]}"
    elif kind == "O":
        if order not in ("|", "=") or elsize not in (-1, np.dtype(object).itemsize):
            raise RefusedState(f"an object dtype with state {short_repr(state)}")
        text = "O"
    else:
        if elsize not in (-1, size):  # numpy writes -1 for fixed-size kinds
            raise RefusedState(f"a {kind}{size} dtype whose state says {elsize} bytes")
        text = f"{'=' if order == '|' else order}{kind}{size}"
    dtype = np.dtype(text)
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind != kind:  # belt and braces
        raise RefusedState(f"dtype {text!r}")
    return dtype


# ---- arrays and scalars ------------------------------------------------------------------------

def _size_of(shape: object) -> int:
    if type(shape) is not tuple or len(shape) > MAX_NDIM or not all(is_int(d) for d in shape):
        raise RefusedState(f"array shape {short_repr(shape)}; expected at most {MAX_NDIM} ints")
    if any(d < 0 or d >= 2**63 for d in shape):
        raise RefusedState(f"array shape {short_repr(shape)}")
    return math.prod(shape)


def _check_length(length: int, size: int, dtype: np.dtype) -> None:
    if length != size * dtype.itemsize:
        raise RefusedState(f"array data of {length} bytes for {size} items of {dtype} ({size * dtype.itemsize} "
                           f"bytes); arrays must be contiguous, without strides or offsets")


def _check_values(flat: np.ndarray) -> None:
    if flat.dtype.kind == "b" and flat.size and flat.view(np.uint8).max() > 1:
        raise RefusedState("a bool array holding bytes other than 0 and 1")
    if flat.dtype.kind == "U" and flat.size:
        codes = flat.view(np.dtype(np.uint32).newbyteorder(flat.dtype.byteorder))
        if codes.max() > 0x10FFFF:
            raise RefusedState("a str array holding invalid code points")


def _as_bytes(raw: object, charge: Charge) -> bytes | bytearray:
    if type(raw) is str:  # old writers: latin-1 text, which numpy's own __setstate__ accepts
        charge(len(raw))
        return raw.encode("latin1")
    return raw


def scalar_from_bytes(args: tuple, charge: Charge) -> np.generic:
    """``scalar(dtype, data)``: a numpy scalar of a non-object dtype from exactly its item size."""
    if len(args) != 2 or not isinstance(args[0], np.dtype) or type(args[1]) not in (bytes, str):
        raise RefusedState(f"numpy scalar{short_repr(args)}; expected (dtype, bytes)")
    dtype, raw = args
    if dtype.kind == "O":
        raise RefusedState("an object-dtype numpy scalar")
    raw = _as_bytes(raw, charge)
    if len(raw) != dtype.itemsize:
        raise RefusedState(f"a {dtype} scalar of {len(raw)} bytes (its item size is {dtype.itemsize})")
    charge(ARRAY_OVERHEAD + dtype.itemsize)
    flat = np.frombuffer(raw, dtype=dtype)
    _check_values(flat)
    return flat[0]


def array_from_buffer(args: tuple, charge: Charge) -> np.ndarray:
    """Protocol 5's ``_frombuffer(buffer, dtype, shape, order[, axis order])``, checked."""
    if not 4 <= len(args) <= 5 or type(args[0]) not in (bytes, bytearray) or not isinstance(args[1], np.dtype):
        raise RefusedState(f"numpy _frombuffer{short_repr(args)}; expected (buffer, dtype, shape, order[, axes])")
    buffer, dtype, shape, order = args[:4]
    axes = args[4] if len(args) == 5 else None
    if dtype.kind == "O" or order not in ("C", "F", "K") or (order == "K") != (axes is not None):
        raise RefusedState(f"numpy _frombuffer with dtype {dtype} and order {short_repr(order)}")
    size = _size_of(shape)
    if axes is not None and (type(axes) is not tuple or not all(is_int(a) for a in axes)
                             or sorted(axes) != list(range(len(shape)))):
        raise RefusedState(f"numpy _frombuffer axis order {short_repr(axes)}; expected a permutation")
    _check_length(len(buffer), size, dtype)
    charge(ARRAY_OVERHEAD + size * dtype.itemsize)
    # numpy's own _frombuffer with the arguments checked: a contiguous view of the buffer, or
    # (numpy 2, order K) that view's axes permuted, e.g. a transposed array.
    flat = np.frombuffer(buffer, dtype=dtype)
    _check_values(flat)
    if axes is not None:
        return flat.reshape(shape, order="C").transpose(axes)
    return flat.reshape(shape, order=order)


def array_from_state(state: object, charge: Charge) -> np.ndarray:
    """An array from ndarray's ``__setstate__`` state ``(1, shape, dtype, fortran, data)``."""
    if type(state) is tuple and len(state) == 5 and is_int(state[0]) and state[0] == 1:
        state = state[1:]
    if type(state) is not tuple or len(state) != 4:
        raise RefusedState(f"array state {short_repr(state)}; expected (1, shape, dtype, fortran, data)")
    shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype) or not _is_flag(fortran):
        raise RefusedState(f"array state {short_repr(state)}")
    size = _size_of(shape)
    order = "F" if fortran else "C"
    if dtype.kind == "O":
        if type(raw) is not list or len(raw) != size:
            raise RefusedState(f"object array data {short_repr(raw)}; expected a list of {size} items")
        bad = [item for item in raw
               if type(item) not in _OBJECT_ELEMENTS and not isinstance(item, _OBJECT_NUMPY_ELEMENTS)]
        if bad:
            raise RefusedState(f"an object array holding {type(bad[0]).__name__} (allowed: str, bytes, int, float)")
        charge(ARRAY_OVERHEAD + SLOT * size)
        flat = np.empty(size, dtype=object)
        flat[:] = raw
        array = np.empty(shape, dtype=object, order=order)
        array[...] = flat.reshape(shape)  # numpy lists object items in C order either way
        return array
    if type(raw) not in (bytes, bytearray, str):
        raise RefusedState(f"array data {short_repr(raw)}; expected bytes")
    raw = _as_bytes(raw, charge)
    _check_length(len(raw), size, dtype)
    charge(ARRAY_OVERHEAD + size * dtype.itemsize)
    # ndarray.__setstate__ swaps non-native data to native order; so does the assignment.
    native = np.dtype(_NATIVE + dtype.str[1:]) if dtype.byteorder in "<>" else dtype
    array = np.empty(shape, dtype=native, order=order)
    if size:
        flat = np.frombuffer(raw, dtype=dtype)
        _check_values(flat)
        array.reshape(-1, order="A")[...] = flat  # a view in memory order: the bytes as written
    return array
