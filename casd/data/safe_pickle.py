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
  ``REDUCE`` on a token runs a builder for it, which checks the arguments and makes the value
  from them; nothing the file names is ever called with the file's arguments.
- **numpy objects** come only from the calls and states numpy's reducers write:
  ``_reconstruct(ndarray, (0,), b'b')`` + ``BUILD (version, shape, dtype, fortran, data)``,
  protocol 5's ``_frombuffer(buffer, dtype, shape, order[, axes])``, ``dtype(typestr, align,
  copy)`` + ``BUILD state``, ``scalar(dtype, data)``. `casd.data.numpy_state` checks them
  (plain dtypes without fields; data of exactly size x item size bytes, contiguous; object
  arrays of str, bytes, int or float) and builds each object itself. ``numpy.ndarray`` cannot
  be called; ``BUILD`` only completes an array or dtype made by the previous ``REDUCE``.
- **Memory**: every value is charged its approximate size (array bytes, str/bytes objects,
  container slots, memo entries); past ``max_bytes`` (default `BASE_BUDGET` +
  `BUDGET_PER_FILE_BYTE` x file size) the load stops. Values built from values already
  decoded (an array copied from a memoized buffer, a set from a list) are charged before they
  are allocated; what is read from the file is bounded by it, as every length in the file is
  checked against the bytes that remain before anything is read.
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
import os
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from casd.data.errors import CorruptPickleError, PickleTooLargeError, UnreadablePickleError, UnsafePickleError
from casd.data.numpy_state import (MAX_NDIM, SLOT, RefusedState, array_from_buffer, array_from_state, dtype_from_state,
                                   dtype_spec, is_int, scalar_from_bytes, short_repr)

__all__ = ["ALLOWED_GLOBALS", "BASE_BUDGET", "BUDGET_PER_FILE_BYTE", "MAX_DEPTH", "MAX_NDIM", "SafeUnpickler",
           "UnsafePickleError", "default_budget", "restricted_load"]

BASE_BUDGET = 64 << 20  # bytes any file may decode to, so small files never hit the cap
# A real feature pickle decodes to about its own size (raw array bytes, 2x for protocols 0-2,
# which spell them as text first); strings and containers cost a few times their encoding.
BUDGET_PER_FILE_BYTE = 16
MAX_DEPTH = 100  # MMSA files nest 4 deep: dict of splits -> dict of arrays -> array state
HIGHEST_PROTOCOL = 5

_SLOT = SLOT  # a reference on the stack, in a list or tuple
_CONTAINER = 64  # an empty container object, or a memo / depth-table entry
_ENTRY = 48  # a dict or set entry (hash table slot, amortised)
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


class SafeUnpickler:
    """Interprets one pickle read from `file`, which holds `size` more bytes, under the rules above.

    The size is known up front, so every length in the pickle is checked against the bytes
    that remain before anything is read.
    """

    def __init__(self, file: BinaryIO, size: int, source: str = "<stream>", max_bytes: int | None = None):
        self.file, self.source = file, source
        self.end = size
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
            raise self.corrupt(f"{type(exc).__name__}: {short_repr(str(exc), 120)}") from None

    def _run(self) -> object:
        read, dispatch = self.file.read, self.dispatch
        while True:
            if self.pos >= self.end:
                raise self.corrupt(f"the file ends at byte {self.end} before the STOP opcode")
            self.op_pos = self.pos
            opcode = read(1)[0]
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
        data = self.file.read(n)
        self.pos += len(data)
        if len(data) != n:
            raise self.corrupt(f"the file ended while being read ({n} bytes wanted, {len(data)} read)")
        return data

    def readline(self) -> bytes:
        line = self.file.readline(self.end - self.pos)
        self.pos += len(line)
        if not line.endswith(b"\n"):
            raise self.corrupt("a text argument has no terminating newline")
        return line[:-1]

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

    def _op_bytearray8(self) -> None:  # protocol 5 arrays: read straight into the buffer they will view
        size = self._unpack("<Q")
        if size > self.end - self.pos:
            raise self.corrupt(f"an opcode needs {size} bytes but {self.end - self.pos} remain")
        self.charge(_SLOT + size)
        payload = bytearray(size)
        read = self.file.readinto(payload)
        self.pos += read
        if read != size:
            raise self.corrupt(f"the file ended while being read ({size} bytes wanted, {read} read)")
        self.stack.append(payload)

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
            raise self.unsafe(f"the name {short_repr(module + '.' + name, 120)}; only numpy arrays, numpy "
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
            raise self.unsafe(f"calling {short_repr(func)} (only allowed globals can be called)")
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
            raise self.unsafe(f"BUILD on {short_repr(pending)} (only on a numpy array or dtype being made)")
        if pending.kind == "dtype":
            value = self._numpy(dtype_from_state, pending.spec, state)
        else:
            value = self._numpy(array_from_state, state, self.charge)
        self.stack[-1] = value
        for key in pending.memo_keys:
            if self.memo.get(key) is pending:
                self.memo[key] = value

    # ---- builders for REDUCE ------------------------------------------------------------------------------
    def _reduce_reconstruct(self, args: tuple) -> _Pending:
        ok = (len(args) == 3 and args[0] is _NDARRAY and type(args[1]) is tuple and len(args[1]) == 1
              and is_int(args[1][0]) and args[1][0] == 0 and type(args[2]) in (bytes, str) and args[2] in (b"b", "b"))
        if not ok:
            raise self.unsafe(f"numpy _reconstruct{short_repr(args)}; numpy writes (numpy.ndarray, (0,), b'b')")
        self.charge(_CONTAINER)
        return _Pending("array")

    def _numpy(self, build: Callable, *args: object) -> object:
        """Run a `casd.data.numpy_state` builder; its refusals name the file and offset."""
        try:
            return build(*args)
        except RefusedState as exc:
            raise self.unsafe(str(exc)) from None

    def _reduce_dtype(self, args: tuple) -> _Pending:
        spec = self._numpy(dtype_spec, args)
        self.charge(_CONTAINER)
        return _Pending("dtype", spec)

    def _reduce_scalar(self, args: tuple) -> np.generic:
        return self._numpy(scalar_from_bytes, args, self.charge)

    def _reduce_frombuffer(self, args: tuple) -> np.ndarray:
        return self._numpy(array_from_buffer, args, self.charge)

    def _reduce_encode(self, args: tuple) -> bytes:
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise self.unsafe(f"_codecs.encode{short_repr(args)}; only (text, 'latin1'), how protocols 0-2 spell bytes")
        self.charge(_SLOT + len(args[0]))
        return args[0].encode("latin1")

    def _reduce_set(self, args: tuple, kind: type = set) -> set | frozenset:
        if args == ():
            items = []
        elif len(args) == 1 and type(args[0]) in (list, tuple):
            items = args[0]
        else:
            raise self.unsafe(f"{kind.__name__}{short_repr(args)}; expected a list of items")
        self.charge(_CONTAINER + _ENTRY * len(items))
        value = kind(items)
        self.nest(value, items)
        return value

    def _reduce_frozenset(self, args: tuple) -> frozenset:
        return self._reduce_set(args, frozenset)

    def _reduce_bytes(self, args: tuple) -> bytes:
        if args != ():
            raise self.unsafe(f"bytes{short_repr(args)}; pickle writes only bytes() (for b'')")
        return b""

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
            raise self.unsafe(f"the loaded value holds {short_repr(item)}")


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

    `max_bytes` caps the decoded size (default `default_budget(file size)`). A file object is
    read from its current position and left after the pickle, as `pickle.load` does. Raises an
    `UnreadablePickleError` (a `casd.errors.DataError`) naming the file for any failure.
    """
    if hasattr(path_or_file, "read"):
        handle = path_or_file
        source = str(getattr(handle, "name", "<stream>"))
        if not handle.seekable():
            handle = io.BytesIO(handle.read())
        start = handle.tell()
        size = handle.seek(0, io.SEEK_END) - start
        handle.seek(start)
        unpickler = SafeUnpickler(handle, size, source, max_bytes)
        value = unpickler.load()
        handle.seek(start + unpickler.pos)
        return value
    source = os.fspath(path_or_file)
    try:
        with open(source, "rb") as handle:
            return SafeUnpickler(handle, os.fstat(handle.fileno()).st_size, source, max_bytes).load()
    except OSError as exc:
        raise _open_error(source, exc) from None
