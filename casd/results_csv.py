"""The CSV tables of ``python -m casd``: every number in long form, and MMSA's per-data-set table.

``results.csv`` (long form, one number per row, for pandas/R):

    model,seed,condition,metric,value
    casd,1111,frame_0.0,MAE,0.6173...

with every test condition of every run (``frame_0.0`` .. ``frame_0.9``, ``modality_t`` ..
``modality_tav``) and the summaries ``frame_mean``, ``frame_auc`` and ``modality_mean``
(casd.evaluate.summarise); values are the unrounded metrics.

``<dataset>.csv`` is the table MMSA's ``MMSA_run`` keeps per data set (``mosi.csv``): a
``Model`` column, then one column per metric in MMSA's order, and one row per model whose
cells read ``(mean, std)``. As in MMSA, each seed's metric is first rounded to 4 decimals
(``metricsTop`` returns rounded values), then ``mean = round(np.mean(values) * 100, 2)`` and
``std = round(np.std(values) * 100, 2)``: the population standard deviation (ddof = 0), in
percent for every metric, MAE and Corr included. The metrics are those of the complete test
inputs (condition ``frame_0.0``: nothing dropped), which is what MMSA's test reports.

Both files may hold other models' rows: writing a model replaces its rows and keeps the
others' (MMSA appends a row per invocation; a rerun here reuses its runs, so it replaces the
row instead of repeating it).
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from casd.errors import OutputError
from casd.outputs import write_text

__all__ = ["LONG_COLUMNS", "MMSA_CONDITION", "long_rows", "mmsa_cell", "mmsa_row", "merge_rows", "read_rows",
           "write_rows"]

LONG_COLUMNS = ("model", "seed", "condition", "metric", "value")
# The condition whose metrics fill MMSA's table: frame rate 0 drops nothing, so every modality
# of every sample is present, as in MMSA's own test.
MMSA_CONDITION = "frame_0.0"
MMSA_DECIMALS = 4  # metricsTop rounds each metric to 4 decimals before the mean over seeds


def long_rows(model: str, seed: int, test: dict) -> list[dict]:
    """The long-form rows of one run's ``test`` summary (results.json)."""
    rows = []

    def add(condition: str, metrics: dict) -> None:
        rows.extend({"model": model, "seed": seed, "condition": condition, "metric": name, "value": value}
                    for name, value in metrics.items())

    frame = test.get("frame")
    if frame:
        names = list(frame["metrics"])
        for i, rate in enumerate(frame["rates"]):
            add(f"frame_{rate:.1f}", {n: frame["metrics"][n][i] for n in names})
    modality = test.get("modality")
    if modality:
        for combination, metrics in modality["combinations"].items():
            add(f"modality_{combination}", metrics)
    if frame:
        add("frame_mean", {n: frame["summary"][n]["mean"] for n in names})
        add("frame_auc", {n: frame["summary"][n]["auc"] for n in names})
    if modality:
        add("modality_mean", modality["mean"])
    return rows


def mmsa_cell(values: Sequence[float]) -> str:
    """MMSA's ``(mean, std)`` of one metric over seeds, x100, as pandas writes the tuple."""
    # numpy's rounding, as MMSA's round() of numpy floats (np.round: scale, round half to even).
    rounded = np.round(np.asarray(values, dtype=np.float64), MMSA_DECIMALS)
    mean, std = (float(np.round(stat(rounded) * 100, 2)) for stat in (np.mean, np.std))
    return f"({_number(mean)}, {_number(std)})"


def _number(x: float) -> str:
    return "nan" if math.isnan(x) else repr(x)


def mmsa_row(model: str, per_seed: Sequence[dict[str, float]]) -> dict[str, str]:
    """One row of MMSA's table from each seed's metrics (of the complete test inputs)."""
    names = list(per_seed[0])
    return {"Model": model, **{n: mmsa_cell([metrics[n] for metrics in per_seed]) for n in names}}


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a CSV file; ([], []) when it does not exist."""
    if not path.exists():
        return [], []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def merge_rows(path: Path, header: Sequence[str], rows: Iterable[dict], key: str, replaced: set[str]) -> list[dict]:
    """The rows of ``path`` whose ``key`` is not in ``replaced``, then ``rows``; the file's header
    must be ``header`` (a table of other metrics cannot take these rows)."""
    old_header, old_rows = read_rows(path)
    if old_rows and old_header != list(header):
        raise OutputError(f"{path} has columns {old_header}, not {list(header)}: it holds another kind of "
                          "table; use another --out")
    return [r for r in old_rows if r[key] not in replaced] + list(rows)


def write_rows(path: Path, header: Sequence[str], rows: Iterable[dict]) -> None:
    """Write a CSV atomically (a crash leaves the old file or the new one, never half of one)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(header))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())
