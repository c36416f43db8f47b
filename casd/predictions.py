"""predictions.npz: every test prediction of a run, so any metric can be recomputed later.

Layout (one flat npz; ``<condition>`` is an evaluation condition's name, e.g. ``frame_0.5``):

    ids                      str [N]      sample ids of the test split
    labels                   [N]          the test labels
    <condition>/output       [N] or [N, C] scores, or class logits
    <condition>/uncertainty  [N]          ubar = sum_k pi_k u_k (formulation §3): higher = less
                                          sure; NaN for models without one (late fusion)
    <condition>/weights      [N, K]       the component weights pi over the 7 combinations

Files written before the rename hold ``<condition>/confidence`` for the same ubar (the old
name said the opposite of its value: lower meant more confident). :func:`read_predictions`
reads both and always answers with ``uncertainty``; every reader of predictions.npz goes
through it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from casd.errors import DataError
from casd.outputs import atomic_write
from casd.evaluate import ConditionResult

__all__ = ["PER_CONDITION", "OLD_NAMES", "save_predictions", "read_predictions", "condition_names"]

PER_CONDITION = ("output", "uncertainty", "weights")
# Keys of older files and the names they have now.
OLD_NAMES = {"confidence": "uncertainty"}


def save_predictions(path: str | os.PathLike, results: Sequence[ConditionResult], ids: np.ndarray) -> None:
    """Write every condition's per-sample outputs, uncertainty and weights, with ids and labels."""
    arrays = {"ids": np.asarray(ids).astype(str), "labels": results[0].labels}
    for r in results:
        for key in PER_CONDITION:
            arrays[f"{r.condition.name}/{key}"] = getattr(r, key)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))  # never a torn file (casd.outputs)


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a predictions.npz, old names (``<condition>/confidence``) renamed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no predictions file {path}")
    with np.load(path, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    renamed = {}
    for key, value in arrays.items():
        condition, _, name = key.rpartition("/")
        if condition and name in OLD_NAMES:
            new = f"{condition}/{OLD_NAMES[name]}"
            if new in arrays:
                raise DataError(f"{path}: holds both {key!r} and {new!r}")
            key = new
        renamed[key] = value
    return renamed


def condition_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """The conditions present in a read predictions file, in file order."""
    return list(dict.fromkeys(key.rpartition("/")[0] for key in arrays if "/" in key))
