"""The study's report: statistics over seeds, markdown tables and the plot.

Input is each run's results.json ``test`` summary (casd.evaluate.summarise); ``build_study``
gathers them into study.json's dict, and ``write_markdown`` / ``plot_study`` render it.
"""
from __future__ import annotations

import math
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from casd.metrics import higher_is_better  # noqa: E402
from casd.modalities import COMBINATION_NAMES  # noqa: E402
from casd.report import (axis_label, combination_label, describe_source, headline_metrics,  # noqa: E402
                         metric_name, save_figure)
from casd.study.running import VARIANTS  # noqa: E402

__all__ = ["aggregate", "sign_flip_p_value", "paired_t_pvalue", "paired_differences", "uncertainty_summary",
           "advantages", "build_study", "protocol_tables", "summary_table", "plot_learning_curves",
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


# Up to this many pairs every sign pattern is enumerated (2**16 x 16 signs: 8 MB).
EXACT_PAIRS = 16
RANDOM_FLIPS = 1 << 16


def sign_flip_p_value(differences) -> float:
    """Two-sided p-value of the paired randomisation (sign-flip) test of "mean difference 0".

    Under the null hypothesis each pair's difference is as likely to have either sign, so the
    p-value is the share of the 2**n sign patterns whose |mean| reaches the observed |mean|
    (the identity pattern included). It assumes no distribution of the differences, which a
    handful of seeds could not check. Exact up to EXACT_PAIRS pairs; beyond, RANDOM_FLIPS
    seeded random patterns plus the observed one, (1 + hits) / (1 + RANDOM_FLIPS). The
    smallest attainable value is 2 / 2**n: 0.0625 with 5 pairs, 0.002 with 10.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0 or not np.isfinite(d).all():
        return float("nan")
    observed = abs(d.mean())
    # float sums of the same values in another order may differ in the last bits: count ties
    reach = observed * (1.0 - 1e-9)
    if d.size <= EXACT_PAIRS:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return float(np.mean(np.abs(signs @ d) / d.size >= reach))
    signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(RANDOM_FLIPS, d.size))
    return float((1 + np.sum(np.abs(signs @ d) / d.size >= reach)) / (1 + RANDOM_FLIPS))


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz's
    method; Numerical Recipes §6.4), so that the p-values need no scipy at run time."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def paired_t_pvalue(differences: list[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean per-seed difference is 0.

    t = mean / (s / sqrt(n)) with n - 1 degrees of freedom; p = P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2).
    NaN with fewer than 2 seeds; 0 differences of one sign and no spread give p = 0."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return math.nan
    std = float(np.std(d, ddof=1))
    if std == 0.0:
        return 1.0 if float(np.mean(d)) == 0.0 else 0.0
    t = float(np.mean(d)) / (std / math.sqrt(d.size))
    df = d.size - 1
    return _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def uncertainty_summary(reports: list[dict | None]) -> dict | None:
    """Mean and std over seeds of the uncertainty figures of results.json (casd.uncertainty_report),
    and how many seeds have ū rising with the frame rate; None for models without an uncertainty."""
    if not reports or any(r is None for r in reports):
        return None
    summaries = [r["summary"] for r in reports]
    out = {name: _stats([s["model"][name] for s in summaries])
           for name in ("spearman", "pooled_spearman", "confident_half_ratio", "aurc_normalised")}
    if all("oracle" in s for s in summaries):
        out["oracle_spearman"] = _stats([s["oracle"]["spearman"] for s in summaries])
        out["spearman_ratio_to_oracle"] = _stats([s["spearman_ratio_to_oracle"] for s in summaries])
    out["ubar_rises"] = sum(bool(s["frame_trend"].get("ubar_rises")) for s in summaries)
    return out


def paired_differences(study: dict, reference: str, metric: str) -> dict:
    """Per-run differences (reference minus variant) of the frame AUC and the modality mean,
    paired by (data seed, training seed), each with two two-sided p-values: the paired t-test's
    (``p``) and the exact sign-flip test's (``p_sign_flip``), which assumes no distribution but
    cannot go below 2 / 2**n with n pairs."""
    out = {}
    ref = study["variants"][reference]["aggregate"]
    for name, variant in study["variants"].items():
        if name == reference:
            continue
        agg = variant["aggregate"]
        diffs = {
            "frame_auc": np.subtract(ref["frame"]["summary"][metric]["auc"]["values"],
                                     agg["frame"]["summary"][metric]["auc"]["values"]).tolist(),
            "modality_mean": np.subtract(ref["modality"]["mean"][metric]["values"],
                                         agg["modality"]["mean"][metric]["values"]).tolist(),
        }
        out[name] = {key: {**_stats(d), "p": paired_t_pvalue(d), "p_sign_flip": sign_flip_p_value(d)}
                     for key, d in diffs.items()}
    return out


def build_study(runs: dict[str, dict[str, dict]], descriptions: dict[str, tuple[str, list[str]]],
                seeds: list[int], command: str, data_seeds: list[int] | None = None) -> dict:
    """study.json's dict from every run's results.json (``runs[variant][replicate]``).

    A replicate is a training seed (``"1111"``) or, with several synthetic data sets, a data
    seed and a training seed (``"0/1111"``); every variant ran the same replicates in the same
    order, and paired statistics pair them by position. ``descriptions[variant]`` is (what
    it is, its changes to the shared RunConfig as text).
    """
    variants = list(runs)
    replicates = list(runs[variants[0]])
    first = runs[variants[0]][replicates[0]]
    # The data description: under "record" since RunConfig, directly under "config" before.
    data = first["config"].get("record", first["config"])["data"]
    names = headline_metrics(data["dataset"], data["task"])
    study = {
        "command": command,
        "seeds": seeds,
        "data_seeds": data_seeds,
        "replicates": replicates,
        "data": data,
        "selection_metric": first["selection"]["metric"],
        "metrics": list(names),
        "primary_metric": first["selection"]["metric"],
        "plot": "study.png",
        "environment": f"torch {torch.__version__}, python {platform.python_version()}, "
                       f"{first['environment']['device']}",
        "variants": {
            v: {"description": descriptions[v][0], "changes": descriptions[v][1],
                "label": VARIANTS[v].label if v in VARIANTS else v,
                "per_seed": {str(key): r["test"] for key, r in runs[v].items()},
                "best_epochs": {str(key): r["selection"]["best_epoch"] for key, r in runs[v].items()},
                "valid_scores": {str(key): r["selection"]["valid_score"] for key, r in runs[v].items()},
                # per run, the validation score and training loss of every epoch (learning curves)
                "curves": {str(key): {"valid": [h["valid_score"] for h in r["history"]],
                                      "train": [h["train_total"] for h in r["history"]]}
                           for key, r in runs[v].items()},
                "aggregate": aggregate([r["test"] for r in runs[v].values()]),
                "uncertainty": uncertainty_summary([r.get("uncertainty") for r in runs[v].values()])}
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
        f"Data: {_data_text(study, study['data']['source'])} ({study['data']['sizes']}); training missingness "
        f"{study['data']['missing_protocol']} at rate {study['data']['missing_rate']}. "
        f"{_replicates_text(study)}; each cell is the mean ± sample standard deviation "
        f"(ddof = 1) over these runs of the test-split metric; bold marks the best mean in a row. Each run "
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
        lines += ["", f"## Paired differences ({reference} minus variant, {primary}, per run)", "",
                  "Positive means the reference is higher" + (" (better)." if higher_is_better(primary) else
                                                             " (worse: lower is better for this metric).")
                  + " Runs pair by data seed and training seed. p (t): two-sided paired t-test; p (sign flip): "
                  "the exact paired sign-flip test (no distributional assumption), whose smallest attainable "
                  f"value with {len(study.get('replicates') or study['seeds'])} pairs is "
                  f"{2 / 2 ** len(study.get('replicates') or study['seeds']):.4g}.", "",
                  "| variant | frame AUC | p (t) | p (sign flip) | modality mean | p (t) | p (sign flip) |",
                  "|---|---|---|---|---|---|---|"]
        for name, d in study["paired"]["differences"].items():
            lines.append(f"| {name} | {_cell(d['frame_auc'], False)} | {_p(d['frame_auc'], 'p')} | "
                         f"{_p(d['frame_auc'], 'p_sign_flip')} | {_cell(d['modality_mean'], False)} | "
                         f"{_p(d['modality_mean'], 'p')} | {_p(d['modality_mean'], 'p_sign_flip')} |")
    uncertain = {v: x["uncertainty"] for v, x in study["variants"].items() if x.get("uncertainty")}
    if uncertain:
        lines += ["", "## Uncertainty: does ū rank the errors? (test split, formulation §7)", "",
                  "Mean over the 17 conditions of Spearman(ū, |error|), its ratio to the oracle's on the same "
                  "errors, the confident-half MAE ratio (mean ± std over seeds), and on how many seeds mean ū "
                  "rises with the frame missing rate.", "",
                  "| variant | Spearman | oracle | ratio | confident half | ū rises |", "|---|---|---|---|---|---|"]
        for v, u in uncertain.items():
            oracle = [_cell(u[k], False) if k in u else "-" for k in ("oracle_spearman", "spearman_ratio_to_oracle")]
            lines.append(f"| {v} | {_cell(u['spearman'], False)} | {oracle[0]} | {oracle[1]} | "
                         f"{_cell(u['confident_half_ratio'], False)} | {u['ubar_rises']}/{len(u['spearman']['values'])} |")
    with_curves = {v: x for v, x in study["variants"].items() if "curves" in x}
    if with_curves:
        lines += ["", "## Convergence", "",
                  "The epoch each run selected on validation, of the epochs it trained (early stopping may end "
                  "a run sooner); a selected epoch at the end means the run may still have been improving. "
                  "Learning curves: `curves.png`.", "",
                  "| variant | selected epoch / epochs trained, per run |", "|---|---|"]
        for v, x in with_curves.items():
            cells = [f"{x['best_epochs'][k]}/{len(c['valid'])}" for k, c in x["curves"].items()]
            lines.append(f"| {v} | {', '.join(cells)} |")
    lines += ["", f"Plot: `{study['plot']}`.", f"Environment: {study['environment']}.", ""]
    path.write_text("\n".join(lines))


def _p(stats: dict, key: str) -> str:
    """A p-value cell; study.json files written before the tests carry none."""
    value = stats.get(key)
    return "-" if value is None or value != value else f"{value:.3g}"


def _data_text(study: dict, source: str | None = None) -> str:
    """The data set's description; with several synthetic data sets, all their seeds."""
    if study.get("data_seeds"):
        return f"synthetic data (seeds {', '.join(map(str, study['data_seeds']))})"
    return source if source is not None else describe_source(study["data"]["source"])


def _replicates_text(study: dict) -> str:
    seeds = ", ".join(map(str, study["seeds"]))
    if not study.get("data_seeds"):
        return f"Seeds {seeds}"
    return (f"Training seeds {seeds} on each of the synthetic data sets with seeds "
            f"{', '.join(map(str, study['data_seeds']))} ({len(study['replicates'])} runs per variant)")


def _label(study: dict, name: str) -> str:
    """A variant's name in plots; study.json files written before labels fall back to VARIANTS."""
    return study["variants"][name].get("label") or (VARIANTS[name].label if name in VARIANTS else name)


def _dodge(count: int, width: float) -> np.ndarray:
    """x offsets that put ``count`` series side by side within ``width``, centred on 0."""
    return (np.arange(count) - (count - 1) / 2) * (width / max(count, 1))


def advantages(study: dict, reference: str, metric: str) -> dict[str, dict[str, np.ndarray]]:
    """Per seed, how much better ``reference`` is than each other variant in ``metric`` (> 0:
    the reference is better, for either direction of the metric), for the frame AUC and the
    modality mean. Seeds pair up by position: every variant ran the study's seeds in order."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    ref = study["variants"][reference]["aggregate"]

    def summaries(agg: dict) -> dict[str, np.ndarray]:
        return {"frame AUC": np.asarray(agg["frame"]["summary"][metric]["auc"]["values"]),
                "modality mean": np.asarray(agg["modality"]["mean"][metric]["values"])}

    mine = summaries(ref)
    return {name: {k: sign * (mine[k] - v) for k, v in summaries(variant["aggregate"]).items()}
            for name, variant in study["variants"].items() if name != reference}


def plot_study(study: dict, path: Path, metrics: tuple[str, ...]) -> list[Path]:
    """The study in one figure, PNG and PDF.

    Top row: each metric against the frame-level missing rate. Bottom: the primary metric
    (``metrics[0]``) for each set of present modalities, and the paired differences against
    full CASD (each seed's difference as a dot, their mean +- s.d. as a bar). Every point is a
    mean over seeds with a +- 1 s.d. error bar; variants sit side by side, not on top of each
    other; y-axes start where the data do (no bars, so nothing is truncated) and every axis
    label says which direction is better.
    """
    variants = list(study["variants"])
    runs = len(study.get("replicates") or study["seeds"])
    primary = metrics[0]
    colors = {v: f"C{i}" for i, v in enumerate(variants)}
    reference = study.get("paired", {}).get("reference")
    fig = plt.figure(figsize=(4.0 * max(len(metrics), 3), 8.4), layout="constrained")
    # Two rows laid out on their own, so the long variant names of the paired panel do not
    # squeeze the top row.
    top, bottom = fig.subfigures(2, 1, height_ratios=(1, 1.1))
    top_axes = top.subplots(1, len(metrics), squeeze=False)[0]
    if reference:
        combo_ax, paired_ax = bottom.subplots(1, 2, gridspec_kw={"width_ratios": (2, 1)})
    else:
        combo_ax, paired_ax = bottom.subplots(1, 1), None

    # Metric vs frame-level missing rate: the rates are 0.1 apart, the variants share 0.05 of it.
    for ax, metric in zip(top_axes, metrics):
        for v, dx in zip(variants, _dodge(len(variants), 0.05)):
            agg = study["variants"][v]["aggregate"]["frame"]
            rates = np.asarray(agg["rates"]) + dx
            mean = [s["mean"] for s in agg["metrics"][metric]]
            std = [s["std"] for s in agg["metrics"][metric]]
            ax.plot(rates, mean, color=colors[v], linewidth=0.8, alpha=0.45)
            ax.errorbar(rates, mean, yerr=std, fmt="o", markersize=3.5, capsize=2, elinewidth=1,
                        color=colors[v], label=_label(study, v))
        ax.set_xticks(np.round(np.arange(0.0, 1.0, 0.2), 1))
        ax.set_xlabel("frame-level missing rate r (test)")
        ax.set_ylabel(axis_label(metric))
        ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    top.legend(handles, labels, loc="outside upper center", ncol=len(variants), frameon=False)

    # The primary metric per modality combination.
    combos = [c for c in COMBINATION_NAMES if c in study["variants"][variants[0]]["aggregate"]["modality"]["combinations"]]
    ax = combo_ax
    for v, dx in zip(variants, _dodge(len(variants), 0.7)):
        agg = study["variants"][v]["aggregate"]["modality"]["combinations"]
        ax.errorbar(np.arange(len(combos)) + dx, [agg[c][primary]["mean"] for c in combos],
                    yerr=[agg[c][primary]["std"] for c in combos], fmt="o", markersize=4, capsize=2,
                    elinewidth=1, color=colors[v])
    for boundary in np.arange(len(combos) - 1) + 0.5:
        ax.axvline(boundary, color="0.85", linewidth=0.8)
    ax.set_xticks(np.arange(len(combos)), [combination_label(c) for c in combos])
    ax.set_xlim(-0.5, len(combos) - 0.5)
    ax.set_xlabel("modalities present (test; the others missing in every sample)")
    ax.set_ylabel(axis_label(primary))
    ax.grid(axis="y", alpha=0.3)

    if reference:  # paired differences: what each change does to full CASD, seed by seed
        ax = paired_ax
        others = [v for v in variants if v != reference]
        for row, v in enumerate(others):
            for (kind, values), dy, marker in zip(advantages(study, reference, primary)[v].items(), (-0.15, 0.15),
                                                  ("o", "s")):
                y = len(others) - 1 - row + dy
                ax.scatter(values, np.full(len(values), y), s=12, color=colors[v], alpha=0.45, marker=marker,
                           linewidths=0)
                spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                ax.errorbar(float(np.mean(values)), y, xerr=spread, fmt=marker, markersize=6, capsize=3,
                            color=colors[v], markerfacecolor="white" if kind == "modality mean" else colors[v])
        ax.axvline(0.0, color="0.3", linewidth=1)
        for x, text, align in ((0.02, "← variant better", "left"), (0.98, f"{_label(study, reference)} better →", "right")):
            ax.text(x, 1.01, text, transform=ax.transAxes, ha=align, va="bottom", fontsize=8, color="0.35")
        ax.set_yticks(np.arange(len(others))[::-1], [_label(study, v) for v in others])
        ax.set_ylim(-0.6, len(others) - 0.4)
        ax.set_xlabel(f"{_label(study, reference)}'s advantage in {metric_name(primary)}\n"
                      f"(> 0: {_label(study, reference)} better; per run)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(handles=[plt.Line2D([], [], marker="o", color="0.3", linestyle=""),
                           plt.Line2D([], [], marker="s", color="0.3", markerfacecolor="white", linestyle="")],
                  labels=["frame AUC", "modality mean"], fontsize=8, loc="best")
        ax.set_title(f"paired differences vs {_label(study, reference)}", fontsize=10, pad=16)

    fig.suptitle(f"Robustness to missing modalities on {_data_text(study)}: "
                 f"test split, mean ± s.d. over {runs} run{'s' if runs != 1 else ''}"
                 + (f" ({len(study['seeds'])} seeds x {len(study['data_seeds'])} data sets)" if study.get("data_seeds") else ""))
    return save_figure(fig, path)


def plot_learning_curves(study: dict, path: Path) -> list[Path] | None:
    """Validation score and training loss against the epoch, per variant: every run as a thin
    line, the mean over runs (while all of them are still training) as a thick one, and each
    run's selected epoch as a dot. Shows whether the runs converged within their epochs.
    None for a study.json written before the curves were recorded."""
    variants = [v for v in study["variants"] if "curves" in study["variants"][v]]
    if not variants:
        return None
    metric = study["selection_metric"]
    fig, (valid_ax, train_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, v in enumerate(variants):
        entry, color = study["variants"][v], f"C{i}"
        curves = list(entry["curves"].values())
        for key, curve in entry["curves"].items():
            epochs = np.arange(1, len(curve["valid"]) + 1)
            valid_ax.plot(epochs, curve["valid"], color=color, linewidth=0.6, alpha=0.35)
            train_ax.plot(epochs, curve["train"], color=color, linewidth=0.6, alpha=0.35)
            best = entry["best_epochs"][key]
            valid_ax.plot(best, curve["valid"][best - 1], "o", color=color, markersize=3)
        common = min(len(c["valid"]) for c in curves)
        epochs = np.arange(1, common + 1)
        valid_ax.plot(epochs, np.mean([c["valid"][:common] for c in curves], axis=0), color=color, linewidth=2,
                      label=_label(study, v))
        train_ax.plot(epochs, np.mean([c["train"][:common] for c in curves], axis=0), color=color, linewidth=2)
    valid_ax.set_ylabel(f"validation {axis_label(metric)}")
    train_ax.set_ylabel("training loss (each variant's own objective)")
    for ax in (valid_ax, train_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    valid_ax.legend(fontsize=8)
    runs = len(study.get("replicates") or study["seeds"])
    fig.suptitle(f"Learning curves: each run (thin), mean over {runs} runs (thick), selected epoch (dot)")
    return save_figure(fig, path)

