"""The study's report: statistics over seeds, markdown tables and the plot.

Input is each run's results.json ``test`` summary (casd.evaluate.summarise); ``build_study``
gathers them into study.json's dict, and ``write_markdown`` / ``plot_study`` render it.
"""
from __future__ import annotations

import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from casd.metrics import higher_is_better  # noqa: E402
from casd.modalities import COMBINATION_NAMES  # noqa: E402
from casd.report import headline_metrics  # noqa: E402

__all__ = ["aggregate", "paired_differences", "build_study", "protocol_tables", "summary_table",
           "write_markdown", "plot_study"]


# --- aggregation -------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "values": [float(x) for x in v]}


def aggregate(summaries: list[dict]) -> dict:
    """Mean and sample std over seeds of every metric of casd.evaluate.summarise's output."""
    frame = [s["frame"] for s in summaries]
    modality = [s["modality"] for s in summaries]
    names = list(frame[0]["metrics"])
    return {
        "frame": {
            "rates": frame[0]["rates"],
            "metrics": {n: [_stats([f["metrics"][n][i] for f in frame]) for i in range(len(frame[0]["rates"]))]
                        for n in names},
            "summary": {n: {k: _stats([f["summary"][n][k] for f in frame]) for k in ("mean", "auc")}
                        for n in names},
        },
        "modality": {
            "combinations": {c: {n: _stats([m["combinations"][c][n] for m in modality]) for n in names}
                             for c in modality[0]["combinations"]},
            "mean": {n: _stats([m["mean"][n] for m in modality]) for n in names},
        },
    }


def paired_differences(study: dict, reference: str, metric: str) -> dict:
    """Per-seed differences (reference minus variant) of the frame AUC and the modality mean."""
    out = {}
    ref = study["variants"][reference]["aggregate"]
    for name, variant in study["variants"].items():
        if name == reference:
            continue
        agg = variant["aggregate"]
        out[name] = {
            "frame_auc": _stats(np.subtract(ref["frame"]["summary"][metric]["auc"]["values"],
                                            agg["frame"]["summary"][metric]["auc"]["values"]).tolist()),
            "modality_mean": _stats(np.subtract(ref["modality"]["mean"][metric]["values"],
                                                agg["modality"]["mean"][metric]["values"]).tolist()),
        }
    return out


def build_study(runs: dict[str, dict[int, dict]], descriptions: dict[str, tuple[str, list[str]]],
                seeds: list[int], command: str) -> dict:
    """study.json's dict from every run's results.json (``runs[variant][seed]``).

    ``descriptions[variant]`` is (what it is, its changes to the shared RunConfig as text).
    """
    variants = list(runs)
    first = runs[variants[0]][seeds[0]]
    # The data description: under "record" since RunConfig, directly under "config" before.
    data = first["config"].get("record", first["config"])["data"]
    names = headline_metrics(data["dataset"], data["task"])
    study = {
        "command": command,
        "seeds": seeds,
        "data": data,
        "selection_metric": first["selection"]["metric"],
        "metrics": list(names),
        "primary_metric": first["selection"]["metric"],
        "plot": "study.png",
        "environment": f"torch {torch.__version__}, python {platform.python_version()}, "
                       f"{first['environment']['device']}",
        "variants": {
            v: {"description": descriptions[v][0], "changes": descriptions[v][1],
                "per_seed": {str(seed): r["test"] for seed, r in runs[v].items()},
                "best_epochs": {str(seed): r["selection"]["best_epoch"] for seed, r in runs[v].items()},
                "valid_scores": {str(seed): r["selection"]["valid_score"] for seed, r in runs[v].items()},
                "aggregate": aggregate([r["test"] for r in runs[v].values()])}
            for v in variants
        },
    }
    if "casd" in study["variants"] and len(study["variants"]) > 1:
        study["paired"] = {"reference": "casd",
                           "differences": paired_differences(study, "casd", study["primary_metric"])}
    study["plot_metrics"] = list(dict.fromkeys([study["primary_metric"], *names[:1],
                                                "Corr" if "Corr" in names else names[-1]]))
    return study


# --- report --------------------------------------------------------------------------------------
def _cell(stats: dict, bold: bool) -> str:
    text = f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    return f"**{text}**" if bold else text


def _table(rows: list[tuple[str, list[dict]]], variants: list[str], metric: str) -> list[str]:
    lines = ["| condition | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    pick = max if higher_is_better(metric) else min
    for label, cells in rows:
        best = pick(c["mean"] for c in cells)
        lines.append(f"| {label} | " + " | ".join(_cell(c, c["mean"] == best) for c in cells) + " |")
    return lines


def protocol_tables(study: dict, metric: str) -> tuple[list[str], list[str]]:
    """Markdown tables of ``metric``: frame-level sweep (+ mean, AUC) and modality combinations (+ mean)."""
    variants = list(study["variants"])
    aggs = [study["variants"][v]["aggregate"] for v in variants]
    rates = aggs[0]["frame"]["rates"]
    frame_rows = [(f"r = {r:.1f}", [a["frame"]["metrics"][metric][i] for a in aggs]) for i, r in enumerate(rates)]
    frame_rows += [("mean", [a["frame"]["summary"][metric]["mean"] for a in aggs]),
                   ("AUC", [a["frame"]["summary"][metric]["auc"] for a in aggs])]
    combos = [c for c in COMBINATION_NAMES if c in aggs[0]["modality"]["combinations"]]
    modality_rows = [("{" + ",".join(c) + "}", [a["modality"]["combinations"][c][metric] for a in aggs])
                     for c in combos]
    modality_rows.append(("mean", [a["modality"]["mean"][metric] for a in aggs]))
    return _table(frame_rows, variants, metric), _table(modality_rows, variants, metric)


def summary_table(study: dict, metrics: tuple[str, ...]) -> list[str]:
    """One row per variant: frame-level AUC and modality-combination mean of each metric."""
    header = "| variant | " + " | ".join(f"{m} frame AUC | {m} modality mean" for m in metrics) + " |"
    lines = [header, "|---|" + "---|" * (2 * len(metrics))]
    for name, variant in study["variants"].items():
        agg = variant["aggregate"]
        cells = []
        for m in metrics:
            cells += [_cell(agg["frame"]["summary"][m]["auc"], False), _cell(agg["modality"]["mean"][m], False)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(study: dict, path: Path) -> None:
    names, primary = study["metrics"], study["primary_metric"]
    variants = list(study["variants"])
    lines = [
        "# Robustness study", "",
        f"Command: `{study['command']}`", "",
        f"Data: {study['data']['source']} ({study['data']['sizes']}); training missingness "
        f"{study['data']['missing_protocol']} at rate {study['data']['missing_rate']}. "
        f"Seeds {', '.join(map(str, study['seeds']))}; each cell is the mean ± sample standard deviation "
        f"(ddof = 1) over seeds of the test-split metric; bold marks the best mean in a row. Each run "
        f"selects its epoch on the validation split only (mean {study['selection_metric']} over validation "
        f"conditions with their own seeds); the test conditions use fixed recorded seeds. AUC is the "
        f"normalised area under the metric-versus-r curve (the curve's average height).", "",
        "| variant | what it is | changes to the shared run config |", "|---|---|---|",
    ]
    for v in variants:
        changes = ", ".join(f"`{c}`" for c in study["variants"][v]["changes"]) or "(none)"
        lines.append(f"| {v} | {study['variants'][v]['description']} | {changes} |")
    lines += ["", "## Summary", "", "Frame-level AUC over r = 0.0..0.9 and mean over the 7 modality combinations.",
              "", *summary_table(study, tuple(study["plot_metrics"]))]
    for metric in [primary] + [n for n in names if n != primary]:
        frame, modality = protocol_tables(study, metric)
        lines += ["", f"## {metric}", "", "### Frame-level missing rate r (MMSA protocol)", "", *frame,
                  "", "### Modality combinations present (MMIN protocol)", "", *modality]
    if "paired" in study:
        reference = study["paired"]["reference"]
        lines += ["", f"## Paired differences ({reference} minus variant, {primary}, per seed)", "",
                  "Positive means the reference is higher" + (" (better)." if higher_is_better(primary) else
                                                             " (worse: lower is better for this metric)."), "",
                  "| variant | frame AUC | modality mean |", "|---|---|---|"]
        for name, d in study["paired"]["differences"].items():
            lines.append(f"| {name} | {_cell(d['frame_auc'], False)} | {_cell(d['modality_mean'], False)} |")
    lines += ["", f"Plot: `{study['plot']}`.", f"Environment: {study['environment']}.", ""]
    path.write_text("\n".join(lines))


def plot_study(study: dict, path: Path, metrics: tuple[str, ...]) -> None:
    """Panels: each metric vs the frame-level missing rate (mean +- std band), then grouped bars
    of the primary metric per modality combination."""
    variants = list(study["variants"])
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(3.6 * (len(metrics) + 1), 3.4), squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, metrics):
        for v in variants:
            agg = study["variants"][v]["aggregate"]["frame"]
            mean = np.array([s["mean"] for s in agg["metrics"][metric]])
            std = np.array([s["std"] for s in agg["metrics"][metric]])
            ax.plot(agg["rates"], mean, marker="o", markersize=3, label=v)
            ax.fill_between(agg["rates"], mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("frame-level missing rate r")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax, primary = axes[-1], metrics[0]
    combos = [c for c in COMBINATION_NAMES if c in study["variants"][variants[0]]["aggregate"]["modality"]["combinations"]]
    width = 0.8 / len(variants)
    low, high = np.inf, -np.inf
    for i, v in enumerate(variants):
        combos_agg = study["variants"][v]["aggregate"]["modality"]["combinations"]
        mean = np.array([combos_agg[c][primary]["mean"] for c in combos])
        std = np.array([combos_agg[c][primary]["std"] for c in combos])
        ax.bar(np.arange(len(combos)) + (i - (len(variants) - 1) / 2) * width, mean, width,
               yerr=std, label=v, capsize=1.5)
        low, high = min(low, float((mean - std).min())), max(high, float((mean + std).max()))
    pad = 0.1 * (high - low) + 1e-6
    ax.set_ylim(low - pad, high + pad)  # differences between variants, not the distance from 0
    ax.set_xticks(np.arange(len(combos)), ["{" + ",".join(c) + "}" for c in combos], fontsize=7)
    ax.set_title(f"{primary} by modalities present")
    fig.suptitle(f"Robustness study: {study['data']['source']}, {len(study['seeds'])} seeds (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
