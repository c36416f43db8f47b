"""Human-readable output of an evaluation: a plain-text table and a robustness plot."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from casd.modalities import COMBINATION_NAMES  # noqa: E402

__all__ = ["headline_metrics", "format_table", "plot_robustness"]

_HEADLINE = {
    "regression": ("Has0_acc_2", "Non0_F1_score", "Mult_acc_7", "MAE", "Corr"),
    "sims": ("Mult_acc_2", "Mult_acc_5", "F1_score", "MAE", "Corr"),
    "classification": ("Acc", "F1_weighted", "F1_macro"),
}


def headline_metrics(dataset: str, task: str) -> tuple[str, ...]:
    if task == "classification":
        return _HEADLINE["classification"]
    return _HEADLINE["sims"] if dataset == "sims" else _HEADLINE["regression"]


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
                lines.append(_row("{" + ",".join(name) + "}", modality["combinations"][name], names))
        lines.append(_row("mean", modality["mean"], names))
    return "\n".join(lines)


def plot_robustness(summary: dict, names: tuple[str, ...], path: Path, title: str = "") -> None:
    """One panel per headline metric against the frame-level missing rate, and one bar chart
    of the primary metric per modality combination."""
    panels = len(names) + ("modality" in summary)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.0), squeeze=False)
    axes = axes[0]
    if "frame" in summary:
        frame = summary["frame"]
        for ax, name in zip(axes, names):
            ax.plot(frame["rates"], frame["metrics"][name], marker="o")
            ax.set_xlabel("missing rate r")
            ax.set_title(name)
            ax.grid(alpha=0.3)
    if "modality" in summary:
        ax = axes[-1]
        combos = [c for c in COMBINATION_NAMES if c in summary["modality"]["combinations"]]
        ax.bar(combos, [summary["modality"]["combinations"][c][names[0]] for c in combos])
        ax.set_title(f"{names[0]} by modalities present")
        ax.set_xlabel("present modalities")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
