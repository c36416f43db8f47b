"""Hypothesis fuzzer of the feature-pickle loader (run in a child by test_data_pickle_fuzz.py).

Three sources of inputs:

- mutations of real small MMSA-format pickles (protocols 0-5) and of the hostile files: bit
  flips, byte sets, inserted/deleted runs, truncation, 4/8-byte length fields overwritten with
  boundary values, chunks spliced in from another file;
- sequences of opcodes with arguments drawn from what numpy pickles contain (allowed and
  refused names, dtype strings, small byte strings, memo operations), so REDUCE/BUILD of
  numpy objects are reached with wrong arguments far more often than by byte mutation;
- random bytes.

The property: loading either returns a value made of plain values and sound numpy arrays
(every element is read), or raises a `casd.errors.DataError`; the same for `split_from_mmsa`
on every split of a loaded dict and `validate_splits` on the splits that passed. Any other exception fails, a crash kills the child, and the
child's address space is capped, so memory stays bounded.
"""
from __future__ import annotations

import io
import pickle
import struct
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pickle_forge
from casd.data.mmsa import split_from_mmsa
from casd.data.safe_pickle import restricted_load
from casd.data.validate import validate_splits
from casd.errors import DataError

SEEDS = [pickle.dumps(pickle_forge.mmsa_file(seed=p, n=2, lt=3, la=3, lv=2), protocol=p)
         for p in range(pickle.HIGHEST_PROTOCOL + 1)]
SEEDS += [make() for name, make in pickle_forge.HOSTILE.items()
          if name not in ("memo_amplified", "deep_tuple")]  # big files: slow to mutate, nothing new
BOUNDARY = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
            2**63 - 1, 2**64 - 1]

position = st.integers(0, 2**20)
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(1, 255)),
    st.tuples(st.just("set"), position, st.integers(0, 255)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), position, st.integers(1, 16)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("int32"), position, st.sampled_from(BOUNDARY[:11])),
    st.tuples(st.just("int64"), position, st.sampled_from(BOUNDARY)),
    st.tuples(st.just("splice"), position, st.integers(0, len(SEEDS) - 1), position, st.integers(1, 64)),
)


def mutate(blob: bytes, steps: list[tuple]) -> bytes:
    data = bytearray(blob)
    for step in steps:
        if not data:
            break
        kind, at = step[0], step[1] % len(data)
        if kind == "flip":
            data[at] ^= step[2]
        elif kind == "set":
            data[at] = step[2]
        elif kind == "insert":
            data[at:at] = step[2]
        elif kind == "delete":
            del data[at:at + step[2]]
        elif kind == "truncate":
            del data[at:]
        elif kind in ("int32", "int64"):
            size = 4 if kind == "int32" else 8
            data[at:at + size] = (step[2] % 2 ** (8 * size)).to_bytes(size, "little")
        elif kind == "splice":
            other = SEEDS[step[2]]
            start = step[3] % len(other)
            data[at:at] = other[start:start + step[4]]
    return bytes(data)


def _text(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


GLOBALS = [b"cnumpy\nndarray\n", b"cnumpy\ndtype\n", b"cnumpy.core.multiarray\n_reconstruct\n",
           b"cnumpy._core.multiarray\nscalar\n", b"cnumpy._core.numeric\n_frombuffer\n",
           b"c_codecs\nencode\n", b"cbuiltins\nset\n", b"c__builtin__\nfrozenset\n", b"cbuiltins\nbytes\n",
           b"cos\nsystem\n", b"cbuiltins\neval\n", b"cnumpy\nmatrix\n"]
WORDS = ["<", ">", "|", "=", "f4", "f8", "<f8", "i8", "u1", "b1", "c8", "f2", "O8", "O4", "U3", "S2", "V8",
         "M8", "C", "F", "K", "b", "latin1", "utf8", "x", "train", "text", "audio", "vision", "id"]
token = st.one_of(
    st.sampled_from([b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"}", b"a", b"e", b"s", b"u", b"R",
                     b"b", b"0", b"1", b"2", b"N", b"\x88", b"\x89", b"\x8f", b"\x90", b"\x91", b"l", b"d",
                     b"\x94", b"\x93", b"\x81", b"\x97", b"Q"]),
    st.sampled_from(GLOBALS),
    st.builds(lambda w: _text(w), st.sampled_from(WORDS)),
    st.builds(lambda v: b"K" + bytes([v]), st.integers(0, 255)),
    st.builds(lambda v: b"J" + struct.pack("<i", v), st.sampled_from([-1, 0, 1, 2, 3, 4, 8, 16, 2**31 - 1])),
    st.builds(lambda v: b"\x8a\x08" + struct.pack("<q", v), st.sampled_from([2**40, -(2**62), 2**63 - 1])),
    st.builds(lambda b: b"C" + bytes([len(b)]) + b, st.binary(max_size=64)),
    st.builds(lambda n, b: b"\x8e" + struct.pack("<Q", n) + b, st.sampled_from([0, 4, 8, 2**62]),
              st.binary(max_size=16)),
    st.builds(lambda v: b"G" + struct.pack(">d", v), st.floats(allow_nan=True)),
    st.builds(lambda i: b"q" + bytes([i]), st.integers(0, 8)),
    st.builds(lambda i: b"h" + bytes([i]), st.integers(0, 8)),
    # Whole numpy fragments (an array, a dtype, a scalar) without PROTO/STOP, to recombine.
    st.sampled_from([pickle.dumps(v, protocol=4)[2:-1] for v in (
        np.arange(3, dtype=np.float32), np.dtype(">f8"), np.float32(2), np.array(["ab"], dtype=object),
        np.zeros((2, 0)), np.array(["é"]))]),
)


def touch(value: object, depth: int = 0) -> None:
    """Read everything in `value` (every array element), as training would."""
    if depth > 200:
        raise AssertionError("nesting deeper than the loader allows")
    if isinstance(value, np.ndarray):
        assert value.dtype.fields is None and value.dtype.subdtype is None, value.dtype
        assert value.dtype.kind in "biufcSUO", value.dtype
        if value.dtype.kind == "O":
            for item in value.flat:
                assert type(item) in (str, bytes, int, float, bool) or isinstance(
                    item, (np.str_, np.bytes_, np.bool_, np.integer, np.floating)), type(item)
                repr(item)
        else:
            assert value.nbytes == value.size * value.dtype.itemsize
            value.tobytes()
            repr(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            touch(key, depth + 1)
            touch(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            touch(item, depth + 1)
    else:
        repr(value)


def check(blob: bytes) -> None:
    """The property: a value or a DataError, never anything else."""
    try:
        value = restricted_load(io.BytesIO(blob))
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("<stream>: "), message
        assert "out of memory" not in message, message  # the budget, not the OS, must stop it
        return
    touch(value)
    if not isinstance(value, dict):
        return
    for task in ("regression", "classification"):
        splits = {}
        for name, raw in value.items():
            try:
                splits[name] = split_from_mmsa(raw, task, where=f"<stream> split {name!r}")
            except DataError:
                continue
            assert splits[name].num_samples > 0
        for dataset in (None, "sims"):
            try:
                validate_splits(splits, dataset, task, "<stream>")
            except DataError:
                pass


def run(examples: int) -> None:
    """Fuzz with about `examples` inputs in all (60 % mutations, 30 % opcode sequences, 10 % random)."""
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)

    @settings(max_examples=max(1, examples * 6 // 10), **common)
    @given(st.integers(0, len(SEEDS) - 1), st.lists(mutation, min_size=1, max_size=6))
    def mutated(seed: int, steps: list) -> None:
        check(mutate(SEEDS[seed], steps))

    @settings(max_examples=max(1, examples * 3 // 10), **common)
    @given(st.sampled_from([b"\x80\x02", b"\x80\x04", b"\x80\x05", b""]), st.lists(token, max_size=40))
    def opcodes(header: bytes, tokens: list) -> None:
        check(header + b"".join(tokens) + b".")

    @settings(max_examples=max(1, examples // 10), **common)
    @given(st.binary(max_size=300))
    def random_bytes(blob: bytes) -> None:
        check(blob)

    for test in (mutated, opcodes, random_bytes):
        test()
        print(f"{test.__name__}: ok", flush=True)


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
