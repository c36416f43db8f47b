"""Hand-made feature pickles for the loader tests: small real-format MMSA files and hostile ones.

Each hostile file is a complete MMSA dict of splits, so it reaches every step a real file
goes through; one array in it is replaced by the attack. The attacks are written with
`_Reduce`, whose ``__reduce__`` returns whatever call and state we ask for: the stock
pickler then writes exactly the opcodes a malicious file would contain.
"""
from __future__ import annotations

import pickle

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

SPLITS = ("train", "valid", "test")


class _Reduce:
    """Pickles as ``func(*args)`` followed by ``BUILD state`` (when a state is given)."""

    def __init__(self, func, args, state=None):
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.value


def forged_dtype(typestr: str, state: tuple) -> _Reduce:
    """A dtype as ``numpy.dtype(typestr, False, True)`` with an arbitrary __setstate__ state."""
    return _Reduce(np.dtype, (typestr, False, True), state)


def forged_array(dtype, shape: tuple, data, fortran: bool = False) -> _Reduce:
    """An array as numpy pickles one (``_reconstruct`` + BUILD), with any dtype and data."""
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, data))


def mmsa_split(rng: np.random.Generator, n: int = 4, lt: int = 5, la: int = 6, lv: int = 4) -> dict:
    """One split in MMSA's layout (numpy 1.x era dtypes: float32/float64, -inf in audio,
    object arrays of id / raw_text strings, lengths as a list, labels [N, 1])."""
    text_lengths = rng.integers(2, lt + 1, size=n)
    mask = (np.arange(lt)[None, :] < text_lengths[:, None]).astype(np.float64)
    ids = rng.integers(1000, 30000, size=(n, lt)) * mask
    audio = rng.standard_normal((n, la, 3))
    audio[0, 1, 2] = -np.inf
    return {
        "raw_text": np.array([f"utterance {i} é" for i in range(n)], dtype=object),
        "audio": audio,
        "vision": rng.standard_normal((n, lv, 2)).astype(np.float32),
        "id": np.array([f"clip{i}$_${i % 3}" for i in range(n)], dtype=object),
        "text": (rng.standard_normal((n, lt, 4)) * mask[:, :, None]).astype(np.float32),
        "text_bert": np.stack([ids, mask, np.zeros_like(mask)], axis=1),
        "audio_lengths": [int(v) for v in rng.integers(1, la + 1, size=n)],
        "vision_lengths": rng.integers(1, lv + 1, size=n),
        "annotations": ["Positive"] * n,
        "classification_labels": rng.integers(0, 3, size=n).astype(np.float64),
        "regression_labels": rng.uniform(-3, 3, size=(n, 1)).astype(np.float32),
    }


def mmsa_file(seed: int = 0, **sizes) -> dict:
    rng = np.random.default_rng(seed)
    return {name: mmsa_split(rng, **sizes) for name in SPLITS}


def with_attack(key: str, attack, split: str = "train", seed: int = 0, protocol: int = 4) -> bytes:
    """A valid MMSA file whose `split`[`key`] is replaced by `attack`."""
    data = mmsa_file(seed)
    data[split][key] = attack
    return pickle.dumps(data, protocol=protocol)


# ---- the three attacks of issue 9 -------------------------------------------------------------

def object_array_over_bytes(n: int = 4) -> bytes:
    """An object array whose data is raw bytes: numpy reads them as PyObject pointers.

    numpy asks for a list of objects when the dtype's flags say it holds references; this
    dtype's state says flags 0, which numpy believes.
    """
    dtype = forged_dtype("O8", (3, "|", None, None, None, -1, -1, 0))
    return with_attack("id", forged_array(dtype, (n,), b"\x41" * 8 * n))


def object_field_over_bytes(n: int = 4) -> bytes:
    """The same with a structured dtype whose one field is an object (flags 0 again)."""
    dtype = forged_dtype("V8", (3, "|", None, ("x",), {"x": (np.dtype("O"), 0)}, 8, 1, 0))
    return with_attack("id", forged_array(dtype, (n,), b"\x41" * 8 * n))


def field_past_itemsize(n: int = 4, la: int = 6) -> bytes:
    """A 4-byte dtype with one float32 field at offset 4096; an all-zero array of it.

    Casting it to float32 reads 4 bytes from 4 KB past each item: heap memory.
    """
    dtype = forged_dtype("V4", (3, "|", None, ("x",), {"x": (np.dtype("<f4"), 4096)}, 4, 1, 16))
    return with_attack("audio", forged_array(dtype, (n, la, 1), bytes(4 * n * la)))


ZERO_STRIDE_SHAPE = (4, 750_000, 1000)  # 3e9 float64 = 24 GB


def zero_stride_array() -> bytes:
    """``numpy.ndarray(shape, float64, buffer=8 bytes, offset 0, strides 0)``: 24 GB claimed."""
    attack = _Reduce(np.ndarray, (ZERO_STRIDE_SHAPE, np.dtype("<f8"), b"\x00" * 8, 0, (0, 0, 0)))
    return with_attack("vision", attack)


# ---- further attacks on the loader ------------------------------------------------------------

def memo_amplified(copies: int = 100, megabytes: int = 1) -> bytes:
    """One `megabytes` MB buffer referenced by `copies` arrays (each a fresh copy when built)."""
    data = mmsa_file()
    raw = bytes(megabytes << 20)
    data["train"]["extra"] = [forged_array(np.dtype("u1"), (len(raw),), raw) for _ in range(copies)]
    return pickle.dumps(data, protocol=4)  # the pickler memoizes `raw` and writes it once


def deep_tuple(depth: int = 200_000) -> bytes:
    """A tuple nested `depth` deep used as a dict key: hashing it recurses in C."""
    body = b"\x80\x04}" + b")" + b"\x85" * depth + b"K\x01s."  # {((((),),)...): 1}
    return body


def huge_length_claim() -> bytes:
    """A BINBYTES8 that claims 2**60 bytes in a 30-byte file."""
    return b"\x80\x04\x8e" + (1 << 60).to_bytes(8, "little") + b"abc."


def out_of_band_buffer() -> bytes:
    """A protocol-5 array whose data lives outside the pickle (NEXT_BUFFER)."""
    return pickle.dumps(np.arange(8.0), protocol=5, buffer_callback=lambda buffer: False)


def subarray_dtype_past_itemsize(n: int = 4, la: int = 6) -> bytes:
    """A 4-byte dtype that says it is a subarray of 64 float32 (256 bytes)."""
    dtype = forged_dtype("V4", (3, "|", (np.dtype("<f4"), (64,)), None, None, 4, 1, 0))
    return with_attack("audio", forged_array(dtype, (n, la, 1), bytes(4 * n * la)))


def short_data_array(n: int = 4, la: int = 6) -> bytes:
    """A float64 [n, la, 3] array given 16 bytes of data."""
    return with_attack("audio", forged_array(np.dtype("<f8"), (n, la, 3), bytes(16)))


HOSTILE = {
    "object_array_over_bytes": object_array_over_bytes,
    "object_field_over_bytes": object_field_over_bytes,
    "field_past_itemsize": field_past_itemsize,
    "zero_stride_array": zero_stride_array,
    "subarray_dtype_past_itemsize": subarray_dtype_past_itemsize,
    "short_data_array": short_data_array,
    "memo_amplified": memo_amplified,
    "deep_tuple": deep_tuple,
    "huge_length_claim": huge_length_claim,
    "out_of_band_buffer": out_of_band_buffer,
}
