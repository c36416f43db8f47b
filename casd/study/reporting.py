"""``python -m casd.study``: the robustness study, one command.

Trains every variant with every seed by the identical protocol (``casd.train``: same data,
same training missingness, model selection on the validation split only, the same recorded
test conditions), then writes, under ``--out``:

- ``<variant>/seed_<seed>/``: each run's own outputs (results.json, predictions.npz, best.pt, ...);
- ``study.json``: per-seed results and the mean and sample standard deviation over seeds of
  every metric under every condition, plus the command and environment;
- ``study.md``: a table per protocol and headline metric (frame-level sweep r = 0.0..0.9 with
  its mean and AUC; the 7 modality combinations with their mean), and paired differences;
- ``study.png``: each variant's metrics against the frame-level missing rate (mean +- std over
  seeds) and the primary metric per modality combination;
- with ``--diagnose`` (synthetic data, regression), ``diagnostics.md``/``.json``: what the
  confidence weights of every CASD run do, on the *validation* split: how peaked they are, how
  they move under missing modalities, whether the mixture beats plain averaging, and whether
  the uncertainty tracks the noise planted in each modality.

Unknown flags are passed to ``casd.train`` for every run (e.g. ``--epochs 10 --threads 1``).
The study can be interrupted and rerun with the same command: finished runs are reused
(after checking they were made with the same flags) and interrupted ones resumed.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from scipy.stats import spearmanr  # noqa: E402

from casd import train  # noqa: E402
from casd.data import (SyntheticConfig, apply_condition, batch_to, evaluation_conditions,  # noqa: E402
                       generate_synthetic, make_loader, split_from_mmsa)
from casd.metrics import higher_is_better  # noqa: E402
from casd.modalities import COMBINATION_NAMES, MODALITIES  # noqa: E402
from casd.report import headline_metrics  # noqa: E402

log = logging.getLogger("casd")

# name -> (description, casd.train flags). Everything else is shared by all variants.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "casd": ("full CASD", []),
    "no_distill": ("CASD without distillation (lambda_cd = 0)", ["--lambda-cd", "0"]),
    "uniform": ("CASD with uniform component weights", ["--weighting", "uniform"]),
    "gaussian": ("CASD with Gaussian embeddings", ["--distribution", "gaussian"]),
    "late_fusion": ("late-fusion baseline (same encoders, modality dropout)", ["--model", "late_fusion"]),
}
DEFAULT_SEEDS = (1111, 1112, 1113)
# The study keys sampling noise by sample, so its numbers do not depend on how many processes
# ran them; shared flags come after and may override it.
STUDY_DEFAULTS = ["--noise", "sample"]
# Flags the study sets itself per run. (A variant's own flags come after the shared ones and
# win: `--lambda-cd 0.03` sets it for every variant except no_distill.)
RESERVED = {"--seed", "--out", "--resume"}
# Run arguments that may differ when a finished run is reused (they do not change results).
REUSE_FREE = {"out", "resume", "no_progress", "threads", "device"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m casd.study", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="training seeds")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="variants to train (default: all)")
    p.add_argument("--out", type=Path, default=Path("results/study"), help="output directory")
    p.add_argument("--report-only", action="store_true",
                   help="only aggregate the runs already in --out (every variant x seed must be there)")
    p.add_argument("--diagnose", action="store_true",
                   help="also write diagnostics.md/.json: the confidence weights of every CASD run on the "
                   "validation split (synthetic data, regression)")
    return p


# --- running -------------------------------------------------------------------------------
def run_args(variant: str, seed: int, out: Path, shared: list[str]) -> list[str]:
    return [*STUDY_DEFAULTS, *shared, *VARIANTS[variant][1], "--seed", str(seed), "--out", str(out),
            "--no-progress"]


def _comparable(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in REUSE_FREE}


def run_one(variant: str, seed: int, out: Path, shared: list[str], report_only: bool) -> dict:
    """results.json of one run: reused if finished with the same flags, else trained/resumed."""
    argv = run_args(variant, seed, out, shared)
    args = train.build_parser().parse_args(argv)
    # As results.json stores them (JSON: tuples become lists), so the two compare equal.
    expected = json.loads(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}))
    results = out / "results.json"
    if results.exists():
        report = json.loads(results.read_text())
        saved = report["config"]["args"]
        if _comparable(saved) != _comparable(expected):
            diff = sorted(k for k in _comparable(expected) if saved.get(k) != expected[k])
            raise ValueError(f"{out} holds a run with other flags ({', '.join(diff)}); use another --out")
        log.info("study: reusing %s", out)
        return report
    if report_only:
        raise FileNotFoundError(f"--report-only: no finished run in {out}")
    if (out / "last.pt").exists():
        args.resume = True
    log.info("study: training %s seed %d -> %s%s", variant, seed, out, " (resuming)" if args.resume else "")
    return train.run(args)


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
        "| variant | what it is | casd.train flags |", "|---|---|---|",
    ]
    lines += [f"| {v} | {study['variants'][v]['description']} | `{' '.join(study['variants'][v]['flags']) or '(defaults)'}` |"
              for v in variants]
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


# --- diagnostics of the confidence weights ---------------------------------------------------
DIAGNOSTIC_CONDITIONS = ("frame_0.0", "frame_0.5", "frame_0.9", "modality_ta", "modality_tv", "modality_av")


@torch.no_grad()
def confidence_diagnostics(run_dir: Path, split_name: str = "valid") -> dict:
    """What the confidence weights of the CASD model in ``run_dir/best.pt`` do on the synthetic
    data's ``split_name`` split (validation by default: nothing here looks at test data).

    - ``u_spread``: max - min over components of the mean uncertainty u_k (nats per dimension);
      with tau = 1 a spread of 0.2 gives weights within ~20 % of uniform;
    - ``max_weight``: mean over samples of max_k pi_k (uniform over 7 components: 1/7);
    - ``mae``: MAE of the mixture sum_k pi_k f(mu_k), of the plain mean of the 7 components'
      predictions, and of the {t,a,v} component alone, all inputs present;
    - ``rho_noise``: Spearman correlation of u of each single-modality component with the noise
      scale the generator planted in that modality (positive: noisier -> less confident);
    - ``weights``: mean pi per component under a few evaluation conditions.
    """
    from casd.predict import load_checkpoint  # casd.predict imports casd.train; import lazily

    model, checkpoint = load_checkpoint(run_dir / "best.pt", torch.device("cpu"))
    metadata = checkpoint["metadata"]
    if checkpoint.get("model_kind", "casd") != "casd" or metadata["task"] != "regression" or not metadata.get("synthetic"):
        raise ValueError(f"{run_dir}: diagnostics need a CASD regression model trained on the synthetic data")
    config = SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in metadata["synthetic"].items()})
    raw = generate_synthetic(config)[split_name]
    split = split_from_mmsa(raw, "regression")

    def mixture_of(degraded, present=None):
        batch = batch_to(next(iter(make_loader(degraded, degraded.num_samples, shuffle=False, present=present))), "cpu")
        return model(batch)

    mixture = mixture_of(split)
    u = mixture.component_uncertainty()  # [N, K]
    outputs = model.predictor(mixture.mu).float().squeeze(-1)  # [N, K]: each component's prediction
    labels = torch.as_tensor(split.labels)
    mae = lambda p: float((p - labels).abs().mean())  # noqa: E731
    conditions = {c.name: c for c in evaluation_conditions(1111 + train.VALID_SEED_OFFSET)}
    weights = {}
    for name in DIAGNOSTIC_CONDITIONS:
        weights[name] = mixture_of(*apply_condition(split, conditions[name])).weights.mean(0).tolist()
    u_mean = u.mean(0)
    return {
        "u_spread": float(u_mean.max() - u_mean.min()),
        "max_weight": float(mixture.weights.max(1).values.mean()),
        "mae": {"mixture": mae((mixture.weights * outputs).sum(1)), "uniform_mean": mae(outputs.mean(1)),
                "tav_component": mae(outputs[:, COMBINATION_NAMES.index("tav")])},
        "rho_noise": {m[0]: float(spearmanr(u[:, i].numpy(), raw["noise_scale"][:, i]).correlation)
                      for i, m in enumerate(MODALITIES)},
        "weights": weights,
    }


def write_diagnostics(out: Path, variants: list[str], seeds: list[int]) -> None:
    runs = {v: {s: confidence_diagnostics(out / v / f"seed_{s}") for s in seeds}
            for v in variants if v != "late_fusion"}
    (out / "diagnostics.json").write_text(json.dumps(runs, indent=2))
    mean = lambda values: f"{np.mean(values):.3f}"  # noqa: E731
    lines = ["# Confidence-weight diagnostics (validation split)", "",
             "Means over seeds; see `casd.study.confidence_diagnostics` for the definitions.", "",
             "| variant | u spread | mean max π (1/7 = 0.143) | MAE mixture | MAE plain mean | MAE {t,a,v} alone "
             "| ρ(u_t, σ_t) | ρ(u_a, σ_a) | ρ(u_v, σ_v) |", "|---|" + "---|" * 8]
    for v, per_seed in runs.items():
        d = list(per_seed.values())
        lines.append(f"| {v} | {mean([x['u_spread'] for x in d])} | {mean([x['max_weight'] for x in d])} | "
                     + " | ".join(mean([x["mae"][k] for x in d]) for k in ("mixture", "uniform_mean", "tav_component"))
                     + " | " + " | ".join(mean([x["rho_noise"][m] for x in d]) for m in "tav") + " |")
    lines += ["", "Mean weight π per component under missing modalities:", "",
              "| variant | condition | " + " | ".join(COMBINATION_NAMES) + " |", "|---|---|" + "---|" * len(COMBINATION_NAMES)]
    for v, per_seed in runs.items():
        for name in DIAGNOSTIC_CONDITIONS:
            w = np.mean([x["weights"][name] for x in per_seed.values()], axis=0)
            lines.append(f"| {v} | {name} | " + " | ".join(f"{x:.2f}" for x in w) + " |")
    (out / "diagnostics.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, shared = build_parser().parse_known_args(argv)
    reserved = sorted(RESERVED.intersection(a.split("=")[0] for a in shared))
    if reserved:
        print(f"casd.study: {', '.join(reserved)} are set by the study itself (per variant/seed)", file=sys.stderr)
        return 2
    train.build_parser().parse_args(run_args(args.variants[0], args.seeds[0], args.out, shared))  # fail fast
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, dict]] = {}
    try:
        for variant in args.variants:
            for seed in args.seeds:
                runs.setdefault(variant, {})[seed] = run_one(
                    variant, seed, args.out / variant / f"seed_{seed}", shared, args.report_only)
    except (FileNotFoundError, ValueError) as exc:
        print(f"casd.study: {exc}", file=sys.stderr)
        return 2

    first = runs[args.variants[0]][args.seeds[0]]
    data, task = first["config"]["data"], first["config"]["args"]["task"]
    names = headline_metrics(data["dataset"], task)
    study = {
        # --report-only aggregates exactly what the full command trains: record the full command.
        "command": "python -m casd.study " + shlex.join(a for a in argv if a != "--report-only"),
        "seeds": args.seeds,
        "data": data,
        "selection_metric": first["selection"]["metric"],
        "metrics": list(names),
        "primary_metric": first["selection"]["metric"],
        "plot": "study.png",
        "environment": f"torch {torch.__version__}, python {platform.python_version()}, "
                       f"{first['environment']['device']}",
        "variants": {
            v: {"description": VARIANTS[v][0], "flags": VARIANTS[v][1],
                "per_seed": {str(seed): r["test"] for seed, r in runs[v].items()},
                "best_epochs": {str(seed): r["selection"]["best_epoch"] for seed, r in runs[v].items()},
                "valid_scores": {str(seed): r["selection"]["valid_score"] for seed, r in runs[v].items()},
                "aggregate": aggregate([r["test"] for r in runs[v].values()])}
            for v in args.variants
        },
    }
    if "casd" in study["variants"] and len(study["variants"]) > 1:
        study["paired"] = {"reference": "casd",
                           "differences": paired_differences(study, "casd", study["primary_metric"])}
    study["plot_metrics"] = list(dict.fromkeys([study["primary_metric"], *names[:1],
                                                "Corr" if "Corr" in names else names[-1]]))
    (args.out / "study.json").write_text(json.dumps(study, indent=2))
    write_markdown(study, args.out / "study.md")
    plot_study(study, args.out / "study.png", tuple(study["plot_metrics"]))
    if args.diagnose:
        write_diagnostics(args.out, args.variants, args.seeds)
    primary_frame, primary_modality = protocol_tables(study, study["primary_metric"])
    print("\n".join(["", f"{study['primary_metric']}, frame-level sweep", *primary_frame, "",
                     f"{study['primary_metric']}, modality combinations", *primary_modality, ""]))
    print(f"wrote {args.out / 'study.md'}, study.json, study.png in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
