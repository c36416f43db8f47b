"""``python -m casd.study``: parse the study's flags, run every variant x seed, write the report."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from casd.cli import CommandParser, run_command
from casd.config import RunConfig
from casd.errors import ConfigError
from casd.flags import config_from_argv
from casd.outputs import check_writable_folder, write_json
from casd.study.reporting import build_study, plot_learning_curves, plot_study, protocol_tables, write_markdown
from casd.study.running import VARIANTS, run_config, run_one

__all__ = ["DEFAULT_SEEDS", "STUDY_DEFAULTS", "RESERVED", "build_parser", "replicates", "main"]

DEFAULT_SEEDS = (1111, 1112, 1113)
# The study keys sampling noise by sample, so its numbers do not depend on how many processes
# ran them; shared flags come after and may override it.
STUDY_DEFAULTS = ["--noise", "sample"]
# casd.train flags the study sets itself per run.
RESERVED = {"--seed", "--out", "--resume", "--overwrite"}


def build_parser() -> argparse.ArgumentParser:
    from casd import study  # the package's docstring is the command's description (imported by now)

    p = CommandParser(prog="python -m casd.study", description=study.__doc__, allow_abbrev=False,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="training seeds")
    p.add_argument("--data-seeds", type=int, nargs="+",
                   help="seeds of the synthetic data set: every training seed runs on each of these data sets "
                   "(runs in <variant>/data_<D>/seed_<S>/; paired tests pair by data and training seed). "
                   "Default: the one data set of the shared flags, runs in <variant>/seed_<S>/")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="variants to train (default: all)")
    p.add_argument("--out", type=Path, default=Path("results/study"), help="output directory")
    p.add_argument("--report-only", action="store_true",
                   help="only aggregate the runs already in --out (every variant x seed must be there)")
    p.add_argument("--diagnose", action="store_true",
                   help="also write diagnostics.md/.json: the confidence weights of every CASD run on the "
                   "validation split (synthetic data, regression)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m casd.study``: 0, or 2 with one line naming what to fix (casd.cli)."""
    return run_command("casd.study", lambda: run_study(sys.argv[1:] if argv is None else argv))


def replicates(base: RunConfig, seeds: list[int], data_seeds: list[int] | None) -> dict[str, tuple[RunConfig, int, Path]]:
    """The runs every variant makes: label -> (shared config, training seed, folder under the variant).

    One data set: labels are the training seeds ("1111", folders ``seed_1111``, as before data
    seeds existed, so earlier studies are reused). Several synthetic data sets: "0/1111" in
    ``data_0/seed_1111``, each with the shared config's synthetic settings at that seed.
    """
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: seed(s) given twice: {sorted(s for s in set(seeds) if seeds.count(s) > 1)}")
    if data_seeds is None:
        return {str(s): (base, s, Path(f"seed_{s}")) for s in seeds}
    if base.data.synthetic is None:
        raise ConfigError("--data-seeds: only for the embedded synthetic data set, not with --data")
    if len(set(data_seeds)) != len(data_seeds):
        raise ConfigError(f"--data-seeds: seed(s) given twice: {sorted(d for d in set(data_seeds) if data_seeds.count(d) > 1)}")
    out = {}
    for d in data_seeds:
        shared = replace(base, data=replace(base.data, synthetic=replace(base.data.synthetic, seed=d)))
        out.update({f"{d}/{s}": (shared, s, Path(f"data_{d}") / f"seed_{s}") for s in seeds})
    return out


def run_study(argv: list[str]) -> None:
    """Parse the study's flags, run (or reuse) every variant x seed, write the report."""
    args, shared = build_parser().parse_known_args(argv)
    reserved = sorted(RESERVED.intersection(a.split("=")[0] for a in shared))
    if reserved:
        raise ConfigError(f"{', '.join(reserved)}: set by the study itself per variant and seed (it reuses "
                          "finished runs and resumes interrupted ones)")
    started = time.perf_counter()
    runs: dict[str, dict[int, dict]] = {}
    base = config_from_argv([*STUDY_DEFAULTS, *shared])  # the shared flags, checked
    plan = replicates(base, args.seeds, args.data_seeds)
    configs = {v: {key: run_config(shared_config, v, seed, args.out / v / folder)
                   for key, (shared_config, seed, folder) in plan.items()}
               for v in args.variants}  # every variant's config is checked before anything runs
    check_writable_folder(args.out, "--out")
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (variant, key) in enumerate((v, k) for v in args.variants for k in plan):
        print(f"study: {variant} {key} [{i + 1}/{len(args.variants) * len(plan)}]", flush=True)
        runs.setdefault(variant, {})[key] = run_one(configs[variant][key], args.report_only)

    descriptions = {v: (VARIANTS[v].description, VARIANTS[v].describe()) for v in args.variants}
    # --report-only aggregates exactly what the full command trains: record the full command.
    command = "python -m casd.study " + shlex.join(a for a in argv if a != "--report-only")
    study = build_study(runs, descriptions, args.seeds, command, args.data_seeds)
    write_json(args.out / "study.json", study)
    write_markdown(study, args.out / "study.md")
    plot_study(study, args.out / "study.png", tuple(study["plot_metrics"]))
    plot_learning_curves(study, args.out / "curves.png")
    if args.diagnose:
        from casd.study.diagnostics import write_diagnostics  # loads checkpoints: only needed here

        first = next(iter(plan))
        casd_runs = [v for v in args.variants if configs[v][first].model.kind == "casd"]
        write_diagnostics(args.out, casd_runs, {key: folder for key, (_, _, folder) in plan.items()})
    primary_frame, primary_modality = protocol_tables(study, study["primary_metric"])
    print("\n".join(["", f"{study['primary_metric']}, frame-level sweep", *primary_frame, "",
                     f"{study['primary_metric']}, modality combinations", *primary_modality, ""]))
    print(f"wrote {args.out / 'study.md'}, study.json, study.png/.pdf, curves.png/.pdf in {time.perf_counter() - started:.0f}s")
