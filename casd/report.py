"""Human-readable output of an evaluation: a plain-text table, a robustness plot, and the
labels every casd plot uses (metric names with their direction, model names, data sources)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from casd.metrics import higher_is_better  # noqa: E402
from casd.modalities import COMBINATION_NAMES  # noqa: E402
from casd.outputs import atomic_write  # noqa: E402

__all__ = ["headline_metrics", "format_table", "format_uncertainty_table", "plot_robustness", "metric_name", "axis_label", "model_label",
           "describe_source", "combination_label", "save_figure"]

_HEADLINE = {
    "regression": ("Has0_acc_2", "Non0_F1_score", "Mult_acc_7", "MAE", "Corr"),
    "sims": ("Mult_acc_2", "Mult_acc_5", "F1_score", "MAE", "Corr"),
    "classification": ("Acc", "F1_weighted", "F1_macro"),
}
# How a paper names MMSA's metrics ("has-0": labels of 0 count as positive; "non-0": they are left out).
_METRIC_NAMES = {
    "Has0_acc_2": "Acc-2 (has-0)", "Has0_F1_score": "F1 (has-0)", "Non0_acc_2": "Acc-2 (non-0)",
    "Non0_F1_score": "F1 (non-0)", "Mult_acc_2": "Acc-2", "Mult_acc_3": "Acc-3", "Mult_acc_5": "Acc-5",
    "Mult_acc_7": "Acc-7", "F1_score": "F1", "MAE": "MAE", "Corr": "Corr", "Acc": "Accuracy",
    "F1_weighted": "weighted F1", "F1_macro": "macro F1",
}
_MODEL_LABELS = {"casd": "CASD", "late_fusion": "late fusion"}


def headline_metrics(dataset: str, task: str) -> tuple[str, ...]:
    if task == "classification":
        return _HEADLINE["classification"]
    return _HEADLINE["sims"] if dataset == "sims" else _HEADLINE["regression"]


def metric_name(metric: str) -> str:
    """The name a paper uses for one of casd.metrics' metrics: "Acc-2 (has-0)" for Has0_acc_2."""
    return _METRIC_NAMES.get(metric, metric)


def axis_label(metric: str) -> str:
    """An axis label that says which way is better: "MAE (lower is better)"."""
    return f"{metric_name(metric)} ({'higher' if higher_is_better(metric) else 'lower'} is better)"


def model_label(kind: str) -> str:
    """A model kind's name in plots and tables: "CASD", "late fusion"."""
    return _MODEL_LABELS.get(kind, kind.replace("_", " "))


def describe_source(source: str) -> str:
    """A data description for a title: "synthetic data (seed 0)" or the feature file's name."""
    match = re.fullmatch(r"synthetic\(seed=(-?\d+)\)", source)
    return f"synthetic data (seed {match.group(1)})" if match else Path(source).name


def combination_label(name: str) -> str:
    """"ta" -> "{t,a}": the modalities present."""
    return "{" + ",".join(name) + "}"


def save_figure(fig, path: Path) -> list[Path]:
    """``path`` (PNG, for the README and a quick look) and the same figure as vector PDF (for a paper)."""
    path = Path(path)
    written = [path, path.with_suffix(".pdf")]
    atomic_write(written[0], lambda f: fig.savefig(f, format="png", dpi=150))  # never a torn file (casd.outputs)
    atomic_write(written[1], lambda f: fig.savefig(f, format="pdf"))
    plt.close(fig)
    return written


def _row(label: str, metrics: dict[str, float], names: tuple[str, ...]) -> str:
    return f"{label:<14}" + "".join(f"{metrics[n]:>15.4f}" for n in names)


def format_table(summary: dict, names: tuple[str, ...]) -> str:
    """The frame-level sweep (with mean and AUC) and the modality combinations (with mean)."""
    header = f"{'condition':<14}" + "".join(f"{n:>15}" for n in names)
    lines = []
    if "frame" in summary:
        frame = summary["frame"]
        lines += ["frame-level missing rate r", header, "-" * len(header)]
        for i, rate in enumerate(frame["rates"]):
            lines.append(_row(f"r={rate:.1f}", {n: frame["metrics"][n][i] for n in names}, names))
        lines.append(_row("mean", {n: frame["summary"][n]["mean"] for n in names}, names))
        lines.append(_row("AUC", {n: frame["summary"][n]["auc"] for n in names}, names))
        lines.append("")
    if "modality" in summary:
        modality = summary["modality"]
        lines += ["modality combination (present)", header, "-" * len(header)]
        for name in COMBINATION_NAMES:
            if name in modality["combinations"]:
                lines.append(_row(combination_label(name), modality["combinations"][name], names))
        lines.append(_row("mean", modality["mean"], names))
    return "\n".join(lines)


# Columns of the uncertainty table (casd.uncertainty_report): Spearman(ubar, |error|) (higher is
# better), normalised excess AURC (0 ideal, 1 a coin), MAE of the most confident half / all.
_UNCERTAINTY_COLUMNS = {"spearman": "rho", "aurc_normalised": "nAURC", "confident_half_ratio": "half"}


def format_uncertainty_table(uncertainty: dict) -> str:
    """Per condition the model's uncertainty figures and mean ubar, the oracle's beside them (synthetic
    data), the means, the ratio to the oracle and whether mean ubar rises with the frame rate."""
    has_oracle = "oracle" in uncertainty["summary"]
    sources = ("model", "oracle") if has_oracle else ("model",)
    header = f"{'condition':<14}" + "".join(f"{s + ' ' + c:>13}" for s in sources for c in _UNCERTAINTY_COLUMNS.values())
    header += f"{'mean ubar':>11}"
    lines = ["uncertainty: does ubar rank the errors? (rho = Spearman(ubar, |error|), higher is better; "
             "nAURC 0 ideal, 1 coin; half = MAE of the most confident half / all)", header, "-" * len(header)]
    for name, entry in uncertainty["conditions"].items():
        lines.append(f"{name:<14}" + "".join(f"{entry[s][c]:>13.4f}" for s in sources for c in _UNCERTAINTY_COLUMNS)
                     + f"{entry['model']['mean_uncertainty']:>11.4f}")
    summary = uncertainty["summary"]
    lines.append(f"{'mean':<14}" + "".join(f"{summary[s][c]:>13.4f}" for s in sources for c in _UNCERTAINTY_COLUMNS))
    pooled = f"pooled Spearman over all conditions: model {summary['model']['pooled_spearman']:.4f}"
    if has_oracle:
        pooled += (f", oracle {summary['oracle']['pooled_spearman']:.4f}; mean Spearman model / oracle "
                   f"{summary['spearman_ratio_to_oracle']:.3f}")
    lines.append(pooled)
    trend = summary["frame_trend"]
    if trend:
        lines.append(f"mean ubar vs frame missing rate: slope {trend['slope']:+.4f}, Spearman "
                     f"{trend['spearman_rate_uncertainty']:+.3f} -> {'rises' if trend['ubar_rises'] else 'does not rise'}")
    return "\n".join(lines)


def _plot_uncertainty(axes: list, uncertainty: dict) -> None:
    """Two panels: Spearman(ubar, |error|) per condition (model, and the oracle on the same errors),
    and mean ubar against the frame missing rate."""
    conditions = uncertainty["conditions"]
    frame = [n for n in conditions if n.startswith("frame_")]
    modality = [n for n in conditions if n.startswith("modality_")]
    names = frame + modality
    ax = axes[0]
    sources = [("model", "C0", "model ubar")] + ([("oracle", "C1", "oracle Var(s|x)")] if "oracle" in uncertainty["summary"] else [])
    for source, color, label in sources:
        ax.plot(range(len(names)), [conditions[n][source]["spearman"] for n in names], "o", markersize=4,
                color=color, label=label)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n.split("_", 1)[1] if n in frame else combination_label(n.split("_", 1)[1])
                                      for n in names], fontsize=6, rotation=90)
    ax.set_xlabel("condition (frame rate r; modalities present)")
    ax.set_ylabel("Spearman(uncertainty, |error|)\n(higher is better)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    trend = uncertainty["summary"]["frame_trend"]
    ax = axes[1]
    if trend:
        ax.plot(trend["rates"], trend["mean_uncertainty"], marker="o", markersize=4, linewidth=1, color="C0")
        ax.set_xticks([round(0.2 * i, 1) for i in range(5)])
    ax.set_xlabel("frame-level missing rate r")
    ax.set_ylabel("mean ubar (should rise with r)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)


def plot_robustness(summary: dict, names: tuple[str, ...], path: Path, title: str = "",
                    uncertainty: dict | None = None) -> list[Path]:
    """One run's test metrics: each headline metric against the frame-level missing rate, and
    the first of ``names`` for each set of present modalities. Dots are the measured
    conditions (one run: no error bars); the y-axes start where the data do, and each label
    says which direction is better. With ``uncertainty`` (casd.uncertainty_report) two more
    panels: Spearman(ubar, |error|) per condition beside the oracle's, and mean ubar against r.
    Writes PNG and PDF."""
    panels = [("frame", name) for name in names if "frame" in summary]
    panels += [("modality", names[0])] if "modality" in summary else []
    panels += [("uncertainty", ""), ("uncertainty", "")] if uncertainty is not None else []
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.2 * rows + 0.4), squeeze=False,
                             layout="constrained")
    axes = list(axes.flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if uncertainty is not None:
        _plot_uncertainty(axes[len(panels) - 2:len(panels)], uncertainty)
    for ax, (protocol, name) in zip(axes, panels):
        if protocol == "uncertainty":
            continue
        if protocol == "frame":
            frame = summary["frame"]
            ax.plot(frame["rates"], frame["metrics"][name], marker="o", markersize=4, linewidth=1, color="C0")
            ax.set_xticks([round(0.2 * i, 1) for i in range(5)])
            ax.set_xlabel("frame-level missing rate r")
        else:
            combos = [c for c in COMBINATION_NAMES if c in summary["modality"]["combinations"]]
            ax.plot(range(len(combos)), [summary["modality"]["combinations"][c][name] for c in combos], "o",
                    color="C0")
            ax.set_xticks(range(len(combos)), [combination_label(c) for c in combos], fontsize=8)
            ax.set_xlabel("modalities present")
        ax.set_ylabel(axis_label(name))
        ax.ticklabel_format(axis="y", useOffset=False)  # tick labels show the values themselves
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
