"""``python -m casd.study``: parse the study's flags, run every variant x seed, write the report."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from casd.cli import CommandParser, run_command
from casd.errors import ConfigError
from casd.flags import config_from_argv
from casd.outputs import check_writable_folder, write_json
from casd.study.reporting import build_study, plot_study, protocol_tables, write_markdown
from casd.study.running import VARIANTS, run_config, run_one

__all__ = ["DEFAULT_SEEDS", "STUDY_DEFAULTS", "RESERVED", "build_parser", "main"]

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
    configs = {v: {s: run_config(base, v, s, args.out / v / f"seed_{s}") for s in args.seeds}
               for v in args.variants}  # every variant's config is checked before anything runs
    check_writable_folder(args.out, "--out")
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        for seed in args.seeds:
            runs.setdefault(variant, {})[seed] = run_one(configs[variant][seed], args.report_only)

    descriptions = {v: (VARIANTS[v].description, VARIANTS[v].describe()) for v in args.variants}
    # --report-only aggregates exactly what the full command trains: record the full command.
    command = "python -m casd.study " + shlex.join(a for a in argv if a != "--report-only")
    study = build_study(runs, descriptions, args.seeds, command)
    write_json(args.out / "study.json", study)
    write_markdown(study, args.out / "study.md")
    plot_study(study, args.out / "study.png", tuple(study["plot_metrics"]))
    if args.diagnose:
        from casd.study.diagnostics import write_diagnostics  # loads checkpoints: only needed here

        casd_runs = [v for v in args.variants if configs[v][args.seeds[0]].model.kind == "casd"]
        write_diagnostics(args.out, casd_runs, args.seeds)
    primary_frame, primary_modality = protocol_tables(study, study["primary_metric"])
    print("\n".join(["", f"{study['primary_metric']}, frame-level sweep", *primary_frame, "",
                     f"{study['primary_metric']}, modality combinations", *primary_modality, ""]))
    print(f"wrote {args.out / 'study.md'}, study.json, study.png/.pdf in {time.perf_counter() - started:.0f}s")
