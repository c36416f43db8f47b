"""Read MMSA feature pickles without running code and without trusting any layout in them.

Why an opcode interpreter and not ``pickle.Unpickler`` with a ``find_class`` allow-list (what
this module did first): allowing a *name* allows every call of it, with arguments the file
chooses. Three crafted files showed the harm of allowing ``numpy.ndarray`` and
``numpy.dtype``: ``ndarray(shape, dtype, buffer, offset, strides)`` with zero strides makes a
2 KB file claim 24 GB; ``ndarray.__setstate__`` with an object dtype and raw bytes reads
those bytes as object pointers (a segfault); ``dtype.__setstate__`` with a field past the
item size reads heap memory. So this module reads the opcodes itself, as
``torch._weights_only_unpickler`` does, and builds every numpy object from validated values:

- **Opcodes**: those that only build plain values (numbers, str, bytes, tuples, lists, dicts,
  sets, memo, framing; protocols 0-5) plus ``GLOBAL``/``STACK_GLOBAL``, ``REDUCE`` and
  ``BUILD`` under the rules below. Refused: ``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``
  (instances of classes), ``PERSID``/``BINPERSID``, ``EXT1/2/4``, and the out-of-band buffers
  of protocol 5 (``NEXT_BUFFER``, ``READONLY_BUFFER``).
- **Names** resolve to inert tokens (`ALLOWED_GLOBALS`), never to the callables themselves.
  ``REDUCE`` on a token runs this module's builder for it, which checks the arguments and
  makes the value from them; nothing the file names is ever called with the file's arguments.
- **Arrays** come only from ``_reconstruct(ndarray, (0,), b'b')`` followed by ``BUILD`` with
  ``(version, shape, dtype, fortran, data)``, or from protocol 5's
  ``_frombuffer(buffer, dtype, shape, order[, axis permutation])``. The shape is at most `MAX_NDIM` non-negative
  ints; the data is exactly ``size x itemsize`` bytes laid out C- or Fortran-contiguously (no
  strides, no offsets); an object array's data is a list of exactly ``size`` str, bytes, int or
  float values. Bool bytes must be 0/1 and str code points valid.
- **Dtypes** come only from a typestr and a ``BUILD`` state that says "plain": kind b, i, u,
  f, c (the usual sizes), S, U (the size from the state) or O, a byte order, and no fields,
  subarray or metadata. The dtype is then made from ``"<order><kind><size>"`` alone.
- **Memory**: every value built is charged its approximate size (array bytes, str/bytes
  objects, container slots, memo entries) *before* it is allocated; past ``max_bytes``
  (default `BASE_BUDGET` + `BUDGET_PER_FILE_BYTE` x file size) the load stops. Lengths in the
  file are checked against the bytes that remain before anything is read.
- **Shape of the result**: containers nest at most `MAX_DEPTH` deep (hashing a deeply
  nested tuple recurses in C without a guard), and the loaded value holds only plain values,
  numpy arrays, numpy scalars and dtypes (checked by a walk at the end).

Every failure is an `UnreadablePickleError` (a `casd.errors.DataError`) whose one-line
message names the file and the byte offset of the opcode at fault. docs/reliability.md
compares this with torch's ``weights_only`` unpickler in detail.

Real MMSA pickles were written by numpy 1.x (module ``numpy.core.multiarray``); numpy 2.x
writes ``numpy._core.multiarray``. Both spellings are accepted, so either file reads under
either numpy, into the same arrays (values, dtype, shape, memory order) as ``pickle.load``.
"""
from __future__ import annotations

import codecs
import io
import math
import mmap
import os
import re
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from casd.data.errors import CorruptPickleError, PickleTooLargeError, UnreadablePickleError, UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "BASE_BUDGET", "BUDGET_PER_FILE_BYTE", "MAX_DEPTH", "MAX_NDIM", "SafeUnpickler",
           "UnsafePickleError", "default_budget", "restricted_load"]

BASE_BUDGET = 64 << 20  # bytes any file may decode to, so small files never hit the cap
# A real feature pickle decodes to about its own size (raw array bytes, 2x for protocols 0-2,
# which spell them as text first); strings and containers cost a few times their encoding.
BUDGET_PER_FILE_BYTE = 16
MAX_DEPTH = 100  # MMSA files nest 4 deep: dict of splits -> dict of arrays -> array state
MAX_NDIM = 32  # numpy 1.x's limit (numpy 2 allows 64)
HIGHEST_PROTOCOL = 5

_SLOT = 8  # a reference on the stack, in a list or tuple
_CONTAINER = 64  # an empty container object, or a memo / depth-table entry
_ENTRY = 48  # a dict or set entry (hash table slot, amortised)
_ARRAY = 128  # an ndarray object without its data

_FIXED_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
_CHAR_SIZES = {"S": 1, "U": 4}  # flexible kinds: bytes per character; the length is in the state
_BYTE_ORDERS = ("<", ">", "=", "|")
_NATIVE = "<" if sys.byteorder == "little" else ">"
_TYPESTR = re.compile(r"([biufcSUO])([0-9]{0,6})")
_OBJECT_ELEMENTS = frozenset({str, bytes, int, float})  # what an object array may hold
_LEAVES = frozenset({str, bytes, bytearray, int, float, bool, type(None), np.ndarray})


class _Global:
    """An allowed name: inert, its builder runs when the pickle REDUCEs it."""

    __slots__ = ("name", "builder")

    def __init__(self, name: str, builder: str | None):
        self.name, self.builder = name, builder

    def __repr__(self) -> str:
        return f"<allowed global {self.name}>"


class _Pending:
    """A numpy array or dtype between its REDUCE and the BUILD that gives its state.

    Pickle memoizes an object right after REDUCE, so the memo keys that hold it are recorded
    and pointed at the finished value by BUILD; anything else that captured it fails the final
    walk (pickle never does that).
    """

    __slots__ = ("kind", "spec", "memo_keys")

    def __init__(self, kind: str, spec: object = None):
        self.kind, self.spec, self.memo_keys = kind, spec, []

    def __repr__(self) -> str:
        return f"<numpy {self.kind} awaiting its BUILD state>"


def _allowed() -> dict[tuple[str, str], _Global]:
    table = {("numpy", "ndarray"): _Global("numpy.ndarray", None),  # only as _reconstruct's argument
             ("numpy", "dtype"): _Global("numpy.dtype", "dtype"),
             ("_codecs", "encode"): _Global("_codecs.encode", "encode")}  # bytes in protocols 0-2
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spellings
        table[(f"{core}.multiarray", "_reconstruct")] = _Global("numpy _reconstruct", "reconstruct")
        table[(f"{core}.multiarray", "scalar")] = _Global("numpy scalar", "scalar")
        table[(f"{core}.numeric", "_frombuffer")] = _Global("numpy _frombuffer", "frombuffer")  # protocol 5
    for builtins in ("builtins", "__builtin__"):  # protocols 0-2 spell builtins `__builtin__`
        for name in ("set", "frozenset", "bytes"):  # sets below protocol 4; b'' below protocol 3
            table[(builtins, name)] = _Global(f"builtins.{name}", name)
    return table


ALLOWED_GLOBALS: dict[tuple[str, str], _Global] = _allowed()
_NDARRAY = ALLOWED_GLOBALS[("numpy", "ndarray")]


def default_budget(file_size: int) -> int:
    """The decoded-size limit for a file of `file_size` bytes when none is given."""
    return BASE_BUDGET + BUDGET_PER_FILE_BYTE * file_size


def _short(value: object, limit: int = 60) -> str:
    """A one-line repr, cut to `limit` characters, for error messages."""
    text = repr(value) if not isinstance(value, (np.ndarray, _Pending, _Global)) else (
        f"array{list(value.shape)} {value.dtype}" if isinstance(value, np.ndarray) else repr(value))
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_flag(value: object) -> bool:
    """A bool as numpy pickles it: True/False, or 0/1 from old writers."""
    return type(value) is bool or (type(value) is int and value in (0, 1))


class SafeUnpickler:
    """Interprets one pickle from `data` (bytes or a read-only mmap) under the rules above."""

    def __init__(self, data: bytes | mmap.mmap, source: str = "<stream>", max_bytes: int | None = None):
        self.data, self.source = data, source
        self.end = len(data)
        self.max_bytes = default_budget(self.end) if max_bytes is None else int(max_bytes)
        self.pos = self.op_pos = 0
        self.charged = 0
        self.protocol = 0
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, object] = {}
        self.depth: dict[int, int] = {}  # id(container) -> nesting depth (an upper bound)
        self.dispatch: dict[int, Callable[[], None]] = {
            opcode: getattr(self, f"_op_{name}") for opcode, name in _OPCODES.items()}

    # ---- errors -----------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.source}: pickle byte {self.op_pos}"

    def unsafe(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self._where()}: refused: {what}; nothing was executed")

    def corrupt(self, what: str) -> CorruptPickleError:
        return CorruptPickleError(f"{self._where()}: corrupt or truncated pickle: {what}")

    # ---- entry point --------------------------------------------------------------------
    def load(self) -> object:
        """The pickled value; raises `UnreadablePickleError` for anything else."""
        try:
            value = self._run()
            self._check_result(value)
            return value
        except UnreadablePickleError:
            raise
        except MemoryError:
            raise PickleTooLargeError(f"{self._where()}: out of memory while decoding "
                                      f"({self.charged} bytes charged so far)") from None
        except (IndexError, KeyError, ValueError, TypeError, OverflowError, UnicodeError, struct.error,
                RecursionError) as exc:  # stack underflow, missing memo key, bad number or text, ...
            raise self.corrupt(f"{type(exc).__name__}: {_short(str(exc), 120)}") from None

    def _run(self) -> object:
        data, dispatch = self.data, self.dispatch
        while True:
            if self.pos >= self.end:
                raise self.corrupt(f"the file ends at byte {self.end} before the STOP opcode")
            self.op_pos = self.pos
            opcode = data[self.pos]
            self.pos += 1
            if opcode == 0x2E:  # STOP
                return self.stack.pop()
            handler = dispatch.get(opcode)
            if handler is None:
                if opcode in _REFUSED:
                    raise self.unsafe(_REFUSED[opcode])
                raise self.corrupt(f"unknown opcode {bytes([opcode])!r}")
            handler()

    # ---- reading --------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise self.corrupt(f"an opcode needs {n} bytes but {self.end - self.pos} remain")
        start = self.pos
        self.pos += n
        return self.data[start:self.pos]

    def readline(self) -> bytes:
        stop = self.data.find(b"\n", self.pos)
        if stop < 0:
            raise self.corrupt("a text argument has no terminating newline")
        line = self.data[self.pos:stop]
        self.pos = stop + 1
        return line

    def _unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    # ---- accounting -------------------------------------------------------------------------
    def charge(self, nbytes: int) -> None:
        """Count `nbytes` towards the decoded size before they are allocated."""
        self.charged += nbytes
        if self.charged > self.max_bytes:
            raise PickleTooLargeError(
                f"{self._where()}: refused: the pickle would decode to more than {self.max_bytes} bytes "
                f"(the limit for a {self.end}-byte file); a trusted larger file can be read with a "
                f"larger max_bytes")

    def push(self, value: object, size: int | None = None) -> None:
        """Push a new value of `size` bytes (default: its object size)."""
        self.charge(_SLOT + (sys.getsizeof(value) if size is None else size))
        self.stack.append(value)

    def push_ref(self, value: object) -> None:
        self.charge(_SLOT)
        self.stack.append(value)

    def nest(self, container: object, items) -> None:
        """Record `container`'s depth from its `items`; refuse nesting past MAX_DEPTH."""
        depth = self.depth
        level = max(depth.get(id(container), 1), 1 + max((depth.get(id(x), 0) for x in items), default=0))
        if level > MAX_DEPTH:
            raise self.unsafe(f"values nested more than {MAX_DEPTH} deep")
        depth[id(container)] = level

    def pop_mark(self) -> list:
        if not self.metastack:
            raise self.corrupt("an opcode needs a MARK and there is none")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def new_container(self, value, items) -> None:
        self.charge(_CONTAINER + _SLOT * len(items) if isinstance(value, (list, tuple)) else
                    _CONTAINER + _ENTRY * len(items))
        self.nest(value, items)
        self.push_ref(value)

    # ---- opcodes: framing and numbers ---------------------------------------------------------
    def _op_proto(self) -> None:
        self.protocol = self.read(1)[0]
        if self.protocol > HIGHEST_PROTOCOL:
            raise self.corrupt(f"unsupported pickle protocol {self.protocol}")

    def _op_frame(self) -> None:
        size = self._unpack("<Q")
        if size > self.end - self.pos:
            raise self.corrupt(f"a frame of {size} bytes but {self.end - self.pos} remain")

    def _op_none(self) -> None:
        self.push_ref(None)

    def _op_newtrue(self) -> None:
        self.push_ref(True)

    def _op_newfalse(self) -> None:
        self.push_ref(False)

    def _op_int(self) -> None:
        line = self.readline()  # protocol 0 spells True/False as I01/I00
        self.push(line == b"01" if line in (b"00", b"01") else int(line, 0))

    def _op_binint(self) -> None:
        self.push(self._unpack("<i"))

    def _op_binint1(self) -> None:
        self.push(self.read(1)[0])

    def _op_binint2(self) -> None:
        self.push(self._unpack("<H"))

    def _op_long(self) -> None:
        line = self.readline()
        self.push(int(line[:-1] if line.endswith(b"L") else line, 0))

    def _op_long1(self) -> None:
        self.push(int.from_bytes(self.read(self.read(1)[0]), "little", signed=True))

    def _op_long4(self) -> None:
        size = self._unpack("<i")
        if size < 0:
            raise self.corrupt("negative LONG4 byte count")
        self.charge(size)
        self.push(int.from_bytes(self.read(size), "little", signed=True))

    def _op_float(self) -> None:
        self.push(float(self.readline()))

    def _op_binfloat(self) -> None:
        self.push(self._unpack(">d"))

    # ---- opcodes: text and bytes -----------------------------------------------------------------
    def _sized(self, fmt: str) -> bytes:
        size = self._unpack(fmt)
        if size < 0:
            raise self.corrupt("negative length")
        return self.read(size)

    def _op_string(self) -> None:  # protocol 0 Python 2 str, decoded as ASCII like pickle.load
        line = self.readline()
        if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in (b"'", b'"'):
            raise self.corrupt("the STRING argument must be quoted")
        self.push(codecs.escape_decode(line[1:-1])[0].decode("ascii"))

    def _op_binstring(self) -> None:
        self.push(self._sized("<i").decode("ascii"))

    def _op_short_binstring(self) -> None:
        self.push(self.read(self.read(1)[0]).decode("ascii"))

    def _op_unicode(self) -> None:
        self.push(str(self.readline(), "raw-unicode-escape"))

    def _op_binunicode(self) -> None:
        self.push(str(self._sized("<I"), "utf-8", "surrogatepass"))

    def _op_short_binunicode(self) -> None:
        self.push(str(self.read(self.read(1)[0]), "utf-8", "surrogatepass"))

    def _op_binunicode8(self) -> None:
        self.push(str(self._sized("<Q"), "utf-8", "surrogatepass"))

    def _op_binbytes(self) -> None:
        self.push(self._sized("<I"))

    def _op_short_binbytes(self) -> None:
        self.push(self.read(self.read(1)[0]))

    def _op_binbytes8(self) -> None:
        self.push(self._sized("<Q"))

    def _op_bytearray8(self) -> None:
        payload = self._sized("<Q")
        self.push(bytearray(payload))

    # ---- opcodes: containers -------------------------------------------------------------------------
    def _op_mark(self) -> None:
        self.charge(_CONTAINER)
        self.metastack.append(self.stack)
        self.stack = []

    def _op_pop(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def _op_pop_mark(self) -> None:
        self.pop_mark()

    def _op_dup(self) -> None:
        self.push_ref(self.stack[-1])

    def _op_empty_tuple(self) -> None:
        self.push_ref(())

    def _op_tuple(self) -> None:
        items = self.pop_mark()
        self.new_container(tuple(items), items)

    def _op_tuple1(self) -> None:
        items = [self.stack.pop()]
        self.new_container(tuple(items), items)

    def _op_tuple2(self) -> None:
        second, first = self.stack.pop(), self.stack.pop()
        self.new_container((first, second), (first, second))

    def _op_tuple3(self) -> None:
        third, second, first = self.stack.pop(), self.stack.pop(), self.stack.pop()
        self.new_container((first, second, third), (first, second, third))

    def _op_empty_list(self) -> None:
        self.new_container([], ())

    def _op_list(self) -> None:
        items = self.pop_mark()
        self.new_container(items, items)

    def _target(self, kind: type, opcode: str):
        target = self.stack[-1]
        if type(target) is not kind:
            raise self.unsafe(f"{opcode} on a {type(target).__name__} (only on a {kind.__name__})")
        return target

    def _op_append(self) -> None:
        item = self.stack.pop()
        self.charge(_SLOT)
        target = self._target(list, "APPEND")
        target.append(item)
        self.nest(target, (item,))

    def _op_appends(self) -> None:
        items = self.pop_mark()
        self.charge(_SLOT * len(items))
        target = self._target(list, "APPENDS")
        target.extend(items)
        self.nest(target, items)

    def _op_empty_dict(self) -> None:
        self.new_container({}, ())

    def _pairs(self, items: list) -> list[tuple]:
        if len(items) % 2:
            raise self.corrupt("an odd number of items for a dict")
        return list(zip(items[0::2], items[1::2]))

    def _op_dict(self) -> None:
        items = self.pop_mark()
        value = dict(self._pairs(items))
        self.new_container(value, items)

    def _op_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self.charge(_ENTRY)
        target = self._target(dict, "SETITEM")
        target[key] = value
        self.nest(target, (key, value))

    def _op_setitems(self) -> None:
        items = self.pop_mark()
        self.charge(_ENTRY * (len(items) // 2))
        target = self._target(dict, "SETITEMS")
        target.update(self._pairs(items))
        self.nest(target, items)

    def _op_empty_set(self) -> None:
        self.new_container(set(), ())

    def _op_additems(self) -> None:
        items = self.pop_mark()
        self.charge(_ENTRY * len(items))
        target = self._target(set, "ADDITEMS")
        target.update(items)
        self.nest(target, items)

    def _op_frozenset(self) -> None:
        items = self.pop_mark()
        self.new_container(frozenset(items), items)

    # ---- opcodes: memo ------------------------------------------------------------------------------------
    def _get(self, key: int) -> None:
        if key not in self.memo:
            raise self.corrupt(f"memo key {key} was never stored")
        self.push_ref(self.memo[key])

    def _op_get(self) -> None:
        self._get(int(self.readline()))

    def _op_binget(self) -> None:
        self._get(self.read(1)[0])

    def _op_long_binget(self) -> None:
        self._get(self._unpack("<I"))

    def _put(self, key: int) -> None:
        if key < 0:
            raise self.corrupt("negative memo key")
        value = self.stack[-1]
        self.charge(_CONTAINER)
        self.memo[key] = value
        if isinstance(value, _Pending):
            value.memo_keys.append(key)

    def _op_put(self) -> None:
        self._put(int(self.readline()))

    def _op_binput(self) -> None:
        self._put(self.read(1)[0])

    def _op_long_binput(self) -> None:
        self._put(self._unpack("<I"))

    def _op_memoize(self) -> None:
        self._put(len(self.memo))

    # ---- opcodes: names, calls, state -------------------------------------------------------------------
    def _global(self, module: object, name: object) -> None:
        if type(module) is not str or type(name) is not str:
            raise self.corrupt("a global's module and name must be strings")
        token = ALLOWED_GLOBALS.get((module, name))
        if token is None:
            raise self.unsafe(f"the name {_short(module + '.' + name, 120)}; only numpy arrays, numpy "
                              f"scalars/dtypes and plain containers are allowed in a feature pickle")
        self.push_ref(token)

    def _op_global(self) -> None:
        module = self.readline().decode("utf-8")
        self._global(module, self.readline().decode("utf-8"))

    def _op_stack_global(self) -> None:
        name = self.stack.pop()
        self._global(self.stack.pop(), name)

    def _op_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(func, _Global):
            raise self.unsafe(f"calling {_short(func)} (only allowed globals can be called)")
        if type(args) is not tuple:
            raise self.unsafe(f"{func.name} called with {type(args).__name__} arguments")
        if func.builder is None:
            raise self.unsafe(f"calling {func.name} (its buffer, offset and strides arguments would let the "
                              f"file lay out memory; arrays come only from _reconstruct or _frombuffer)")
        self.stack[-1] = getattr(self, f"_reduce_{func.builder}")(args)

    def _op_build(self) -> None:
        state = self.stack.pop()
        pending = self.stack[-1]
        if not isinstance(pending, _Pending):
            raise self.unsafe(f"BUILD on {_short(pending)} (only on a numpy array or dtype being made)")
        value = self._build_dtype(pending, state) if pending.kind == "dtype" else self._build_array(state)
        self.stack[-1] = value
        for key in pending.memo_keys:
            if self.memo.get(key) is pending:
                self.memo[key] = value

    # ---- builders for REDUCE ------------------------------------------------------------------------------
    def _reduce_reconstruct(self, args: tuple) -> _Pending:
        ok = (len(args) == 3 and args[0] is _NDARRAY and type(args[1]) is tuple and len(args[1]) == 1
              and _is_int(args[1][0]) and args[1][0] == 0 and type(args[2]) in (bytes, str) and args[2] in (b"b", "b"))
        if not ok:
            raise self.unsafe(f"numpy _reconstruct{_short(args)}; numpy writes (numpy.ndarray, (0,), b'b')")
        self.charge(_CONTAINER)
        return _Pending("array")

    def _reduce_dtype(self, args: tuple) -> _Pending:
        if len(args) != 3 or type(args[0]) is not str or not _is_flag(args[1]) or not _is_flag(args[2]):
            raise self.unsafe(f"numpy.dtype{_short(args)}; expected (typestr, align, copy)")
        match = _TYPESTR.fullmatch(args[0])
        if match is None:
            raise self.unsafe(f"dtype {args[0]!r:.40}; allowed: bool, int, uint, float, complex, bytes (S), "
                              f"str (U) and object (O) without fields")
        kind, digits = match.group(1), match.group(2)
        if kind in _FIXED_SIZES and (not digits or int(digits) not in _FIXED_SIZES[kind]):
            raise self.unsafe(f"dtype {args[0]!r} (sizes of {kind!r}: {_FIXED_SIZES[kind]})")
        if kind == "O" and digits not in ("4", "8"):
            raise self.unsafe(f"dtype {args[0]!r}")
        self.charge(_CONTAINER)
        return _Pending("dtype", (kind, int(digits) if kind in _FIXED_SIZES else None))

    def _reduce_scalar(self, args: tuple) -> np.generic:
        if len(args) != 2 or not isinstance(args[0], np.dtype) or type(args[1]) not in (bytes, str):
            raise self.unsafe(f"numpy scalar{_short(args)}; expected (dtype, bytes)")
        dtype, raw = args
        if dtype.kind == "O":
            raise self.unsafe("an object-dtype numpy scalar")
        raw = self._as_bytes(raw)
        if len(raw) != dtype.itemsize:
            raise self.unsafe(f"a {dtype} scalar of {len(raw)} bytes (its item size is {dtype.itemsize})")
        self.charge(_ARRAY + dtype.itemsize)
        flat = np.frombuffer(raw, dtype=dtype)
        self._check_values(flat)
        return flat[0]

    def _reduce_frombuffer(self, args: tuple) -> np.ndarray:
        if not 4 <= len(args) <= 5 or type(args[0]) not in (bytes, bytearray) or not isinstance(args[1], np.dtype):
            raise self.unsafe(f"numpy _frombuffer{_short(args)}; expected (buffer, dtype, shape, order[, axes])")
        buffer, dtype, shape, order = args[:4]
        axes = args[4] if len(args) == 5 else None
        if dtype.kind == "O" or order not in ("C", "F", "K") or (order == "K") != (axes is not None):
            raise self.unsafe(f"numpy _frombuffer with dtype {dtype} and order {_short(order)}")
        size = self._check_shape(shape)
        if axes is not None and (type(axes) is not tuple or sorted(axes) != list(range(len(shape)))
                                 or not all(_is_int(a) for a in axes)):
            raise self.unsafe(f"numpy _frombuffer axis order {_short(axes)}; expected a permutation")
        self._check_length(len(buffer), size, dtype)
        self.charge(_ARRAY + size * dtype.itemsize)
        # numpy's own _frombuffer with the arguments checked: a contiguous view of the buffer,
        # or (numpy 2, order K) that view's axes permuted, e.g. a transposed array.
        flat = np.frombuffer(buffer, dtype=dtype)
        self._check_values(flat)
        if axes is not None:
            return flat.reshape(shape, order="C").transpose(axes)
        return flat.reshape(shape, order=order)

    def _reduce_encode(self, args: tuple) -> bytes:
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise self.unsafe(f"_codecs.encode{_short(args)}; only (text, 'latin1'), how protocols 0-2 spell bytes")
        self.charge(_SLOT + len(args[0]))
        return args[0].encode("latin1")

    def _reduce_set(self, args: tuple, kind: type = set) -> set | frozenset:
        if args == ():
            items = []
        elif len(args) == 1 and type(args[0]) in (list, tuple):
            items = args[0]
        else:
            raise self.unsafe(f"{kind.__name__}{_short(args)}; expected a list of items")
        self.charge(_CONTAINER + _ENTRY * len(items))
        value = kind(items)
        self.nest(value, items)
        return value

    def _reduce_frozenset(self, args: tuple) -> frozenset:
        return self._reduce_set(args, frozenset)

    def _reduce_bytes(self, args: tuple) -> bytes:
        if args != ():
            raise self.unsafe(f"bytes{_short(args)}; pickle writes only bytes() (for b'')")
        return b""

    # ---- numpy objects from validated state --------------------------------------------------------------
    def _build_dtype(self, pending: _Pending, state: object) -> np.dtype:
        kind, size = pending.spec
        if type(state) is not tuple or not ((len(state) == 8 and state[0] == 3)
                                            or (len(state) == 9 and state[0] == 4 and state[8] is None)):
            raise self.unsafe(f"dtype state {_short(state)}; expected numpy's version-3 state")
        _, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        if subarray is not None or names is not None or fields is not None:
            raise self.unsafe("a dtype with fields or a subarray (only plain dtypes are allowed)")
        if order not in _BYTE_ORDERS or not (_is_int(elsize) and _is_int(alignment) and _is_int(flags)):
            raise self.unsafe(f"dtype state {_short(state)}")
        if kind in _CHAR_SIZES:
            if elsize < 1 or elsize % _CHAR_SIZES[kind] or elsize >= 2**31:
                raise self.unsafe(f"a {kind} dtype of {elsize} bytes")
            text = f"{order}{kind}{elsize // _CHAR_SIZES[kind]}"
        elif kind == "O":
            if order not in ("|", "=") or elsize not in (-1, np.dtype(object).itemsize):
                raise self.unsafe(f"an object dtype with state {_short(state)}")
            text = "O"
        else:
            if elsize not in (-1, size):
                raise self.unsafe(f"a {kind}{size} dtype whose state says {elsize} bytes")
            text = f"{'=' if order == '|' else order}{kind}{size}"
        dtype = np.dtype(text)
        if dtype.fields is not None or dtype.subdtype is not None or dtype.kind != kind:  # belt and braces
            raise self.unsafe(f"dtype {text!r}")
        return dtype

    def _check_shape(self, shape: object) -> int:
        if type(shape) is not tuple or len(shape) > MAX_NDIM or not all(_is_int(d) for d in shape):
            raise self.unsafe(f"array shape {_short(shape)}; expected at most {MAX_NDIM} ints")
        if any(d < 0 or d >= 2**63 for d in shape):
            raise self.unsafe(f"array shape {_short(shape)}")
        return math.prod(shape)

    def _check_length(self, length: int, size: int, dtype: np.dtype) -> None:
        if length != size * dtype.itemsize:
            raise self.unsafe(f"array data of {length} bytes for {size} items of {dtype} "
                              f"({size * dtype.itemsize} bytes); arrays must be contiguous, without strides or offsets")

    def _check_values(self, flat: np.ndarray) -> None:
        """Bytes numpy never writes: bool other than 0/1, str code points past U+10FFFF."""
        if flat.dtype.kind == "b" and flat.size and flat.view(np.uint8).max() > 1:
            raise self.unsafe("a bool array holding bytes other than 0 and 1")
        if flat.dtype.kind == "U" and flat.size:
            codes = flat.view(np.dtype(np.uint32).newbyteorder(flat.dtype.byteorder))
            if codes.max() > 0x10FFFF:
                raise self.unsafe("a str array holding invalid code points")

    def _as_bytes(self, raw: object) -> bytes:
        if type(raw) is str:  # old writers: latin-1 text, as numpy's own __setstate__ accepts
            self.charge(len(raw))
            return raw.encode("latin1")
        return raw

    def _build_array(self, state: object) -> np.ndarray:
        if type(state) is tuple and len(state) == 5 and _is_int(state[0]) and state[0] == 1:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            raise self.unsafe(f"array state {_short(state)}; expected (1, shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, np.dtype) or not _is_flag(fortran):
            raise self.unsafe(f"array state {_short(state)}")
        size = self._check_shape(shape)
        order = "F" if fortran else "C"
        if dtype.kind == "O":
            if type(raw) is not list or len(raw) != size:
                raise self.unsafe(f"object array data {_short(raw)}; expected a list of {size} items")
            bad = next((item for item in raw if type(item) not in _OBJECT_ELEMENTS), None)
            if bad is not None:
                raise self.unsafe(f"an object array holding {type(bad).__name__} (allowed: str, bytes, int, float)")
            self.charge(_ARRAY + _SLOT * size)
            flat = np.empty(size, dtype=object)
            flat[:] = raw
            array = np.empty(shape, dtype=object, order=order)
            array[...] = flat.reshape(shape)  # numpy lists object items in C order either way
            return array
        if type(raw) not in (bytes, bytearray, str):
            raise self.unsafe(f"array data {_short(raw)}; expected bytes")
        raw = self._as_bytes(raw)
        self._check_length(len(raw), size, dtype)
        self.charge(_ARRAY + size * dtype.itemsize)
        # ndarray.__setstate__ swaps non-native data to native order; so does the assignment.
        native = np.dtype(_NATIVE + dtype.str[1:]) if dtype.byteorder in "<>" else dtype
        array = np.empty(shape, dtype=native, order=order)
        if size:
            flat = np.frombuffer(raw, dtype=dtype)
            self._check_values(flat)
            array.reshape(-1, order="A")[...] = flat  # a view in memory order: the bytes as written
        return array

    # ---- the result -------------------------------------------------------------------------------------------
    def _check_result(self, value: object) -> None:
        """The loaded value holds only plain values, numpy arrays, scalars and dtypes."""
        seen: set[int] = set()
        todo = [value]
        while todo:
            item = todo.pop()
            kind = type(item)
            if kind in _LEAVES or isinstance(item, (np.generic, np.dtype)):  # numpy 2: dtype subclasses
                continue
            if kind in (list, tuple, set, frozenset, dict):
                if id(item) not in seen:
                    seen.add(id(item))
                    todo.extend(item.keys() if kind is dict else ())
                    todo.extend(item.values() if kind is dict else item)
                continue
            raise self.unsafe(f"the loaded value holds {_short(item)}")


_OPCODES: dict[int, str] = {ord(code): name for code, name in {
    b"(": "mark", b"0": "pop", b"1": "pop_mark", b"2": "dup", b"F": "float", b"I": "int", b"J": "binint",
    b"K": "binint1", b"L": "long", b"M": "binint2", b"N": "none", b"R": "reduce", b"S": "string",
    b"T": "binstring", b"U": "short_binstring", b"V": "unicode", b"X": "binunicode", b"a": "append",
    b"b": "build", b"c": "global", b"d": "dict", b"}": "empty_dict", b"e": "appends", b"g": "get",
    b"h": "binget", b"j": "long_binget", b"l": "list", b"]": "empty_list", b"p": "put", b"q": "binput",
    b"r": "long_binput", b"s": "setitem", b"t": "tuple", b")": "empty_tuple", b"u": "setitems",
    b"G": "binfloat", b"\x80": "proto", b"\x85": "tuple1", b"\x86": "tuple2", b"\x87": "tuple3",
    b"\x88": "newtrue", b"\x89": "newfalse", b"\x8a": "long1", b"\x8b": "long4", b"B": "binbytes",
    b"C": "short_binbytes", b"\x8c": "short_binunicode", b"\x8d": "binunicode8", b"\x8e": "binbytes8",
    b"\x8f": "empty_set", b"\x90": "additems", b"\x91": "frozenset", b"\x93": "stack_global",
    b"\x94": "memoize", b"\x95": "frame", b"\x96": "bytearray8",
}.items()}

_REFUSED: dict[int, str] = {ord(code): what for code, what in {
    b"P": "persistent ids (PERSID)", b"Q": "persistent ids (BINPERSID)",
    b"i": "class instances (INST)", b"o": "class instances (OBJ)", b"\x81": "class instances (NEWOBJ)",
    b"\x92": "class instances (NEWOBJ_EX)", b"\x82": "the extension registry (EXT1)",
    b"\x83": "the extension registry (EXT2)", b"\x84": "the extension registry (EXT4)",
    b"\x97": "out-of-band buffers (NEXT_BUFFER, pickle protocol 5)",
    b"\x98": "out-of-band buffers (READONLY_BUFFER, pickle protocol 5)",
}.items()}


def _open_error(path: str, exc: OSError) -> UnreadablePickleError:
    if isinstance(exc, FileNotFoundError):
        return UnreadablePickleError(f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        return UnreadablePickleError(f"{path}: is a folder, not a feature pickle")
    return UnreadablePickleError(f"{path}: cannot read: {exc.strerror or exc}")


def restricted_load(path_or_file: str | os.PathLike | BinaryIO, max_bytes: int | None = None) -> object:
    """Unpickle a feature file (a path or a binary file object) with `SafeUnpickler`.

    `max_bytes` caps the decoded size (default `default_budget(file size)`). A path is mapped
    into memory, not read, so only the decoded arrays take memory. Raises an
    `UnreadablePickleError` (a `casd.errors.DataError`) naming the file for any failure.
    """
    if hasattr(path_or_file, "read"):
        handle = path_or_file
        source = str(getattr(handle, "name", "<stream>"))
        start = handle.tell() if handle.seekable() else None
        data = handle.getvalue()[start:] if isinstance(handle, io.BytesIO) else handle.read()
        unpickler = SafeUnpickler(data, source, max_bytes)
        value = unpickler.load()
        if start is not None:  # leave the file after the pickle, as pickle.load does
            handle.seek(start + unpickler.pos)
        return value
    source = os.fspath(path_or_file)
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return SafeUnpickler(b"", source, max_bytes).load()
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return SafeUnpickler(mapped, source, max_bytes).load()
    except OSError as exc:
        raise _open_error(source, exc) from None
