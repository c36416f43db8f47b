"""``python -m casd`` (console script ``casd``): MMSA's command line for casd's models.

    python -m casd -m casd -d mosi -s 1111 -s 1112 [--data feats.pkl] [-c config.json] [--out DIR]

The flags mean what they mean in MMSA's ``python -m MMSA``: ``-m/--model`` the model (here a
casd model kind or ablation; may be repeated), ``-d/--dataset`` the data set kind (its metric
family), ``-s/--seeds`` one seed per flag (default: MMSA's 1111 1112 1113 1114 1115),
``-c/--config`` a config file (here a casd RunConfig JSON: a run's config.json, or a partial
hand-written one), ``-g/--gpu-ids`` the GPU. casd reads one MMSA feature pickle holding all
three modalities (``--data``; default: the embedded synthetic data set), and writes everything
under ``--out`` (MMSA's ``--res-save-dir`` is accepted for it):

    DIR/<model>/seed_<seed>/   each run (casd.train's outputs: results.json, best.pt, ...)
    DIR/results.csv            every test number in long form: model, seed, condition, metric, value
    DIR/<dataset>.csv          MMSA's table: one row per model, "(mean, std)" x100 per metric

(casd/results_csv.py has the exact layouts.) Rerunning into the same DIR adds or replaces
models' rows; one DIR holds one data set's results (other data are refused before anything
trains). Each seed runs through the study machinery
(casd.study.running): a rerun reuses finished runs after checking that their recorded config
is the one it would run, and resumes interrupted ones. Other flags are casd.train flags
shared by every run (``--epochs 10 --threads 1``); without ``-c`` the runs key their sampling
noise by sample, as the study does, so ``-m casd -s 1111`` is the study's ``casd`` run of
seed 1111.

MMSA flags casd does not take (tuning, loader workers, verbosity, separate model and log
folders, per-modality feature files) are refused with the reason, not ignored.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from casd.cli import CommandParser, run_command
from casd.config import RECORD_KEY, DataConfig, OutputConfig, RunConfig, load_config
from casd.distributed import shutdown_distributed
from casd.errors import ConfigError, DataError
from casd.flags import build_parser as train_parser
from casd.flags import config_from_flags
from casd.provenance import file_sha256
from casd.results_csv import LONG_COLUMNS, MMSA_CONDITION, long_rows, merge_rows, mmsa_row, read_rows, write_rows
from casd.serialize import to_dict
from casd.study.cli import STUDY_DEFAULTS
from casd.study.running import VARIANTS, run_config, run_one
from casd.vocab import DATASETS

__all__ = ["MMSA_SEEDS", "UNSUPPORTED", "build_parser", "base_config", "model_config", "run", "main"]

log = logging.getLogger("casd")

PROG = "casd"
MMSA_SEEDS = (1111, 1112, 1113, 1114, 1115)  # MMSA_run's default seeds
# MMSA's flags that casd does not take, and why: refused, so nobody believes they took effect.
UNSUPPORTED = {
    ("-t", "--tune"): "casd has no built-in hyperparameter search; choose settings on the validation split "
                      "(python -m casd.study, docs/study.md)",
    ("-tt", "--tune-times"): "casd has no built-in hyperparameter search",
    ("-n", "--num-workers"): "casd holds the features in memory and batches them in-process: there are no "
                             "loader workers",
    ("-v", "--verbose"): "casd logs every epoch to the console and to each run's train.log",
    ("--model-save-dir",): "each run's checkpoints are in --out/<model>/seed_<seed>/",
    ("--log-dir",): "each run's train.log is in --out/<model>/seed_<seed>/",
    ("-Ft", "--feature-T"): "casd reads one MMSA pickle with all three modalities: pass --data FILE",
    ("-Fa", "--feature-A"): "casd reads one MMSA pickle with all three modalities: pass --data FILE",
    ("-Fv", "--feature-V"): "casd reads one MMSA pickle with all three modalities: pass --data FILE",
}
# casd.train flags this command sets itself.
RESERVED = {"--seed": "-s", "--out": "--out", "--resume": "(reruns resume by themselves)",
            "--model": "-m", "--dataset": "-d", "--config": "-c"}


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog=PROG, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any other flag is a casd.train flag shared by every run: "
                                "python -m casd.train --help lists them.")
    p.add_argument("-m", "--model", action="append", choices=list(VARIANTS), metavar="MODEL",
                   help="model to train, repeatable (default: casd); one of: "
                   + "; ".join(f"{v.name} ({v.description})" for v in VARIANTS.values()))
    p.add_argument("-d", "--dataset", choices=DATASETS,
                   help="data set kind: MOSI/MOSEI or SIMS metrics, and the name of DIR/<dataset>.csv "
                   "(default: the config's, else mosi)")
    p.add_argument("-s", "--seeds", action="append", type=int, metavar="SEED",
                   help="training seed, once per seed (default: " + " ".join(map(str, MMSA_SEEDS)) + ")")
    p.add_argument("-c", "--config", type=Path,
                   help="casd RunConfig JSON (a run's config.json or a partial one); flags override its fields")
    p.add_argument("--data", type=Path, help="MMSA feature pickle (default: the embedded synthetic data set)")
    p.add_argument("--out", "--res-save-dir", dest="out", type=Path, default=Path("runs/mmsa"),
                   help="output folder (default: runs/mmsa)")
    p.add_argument("-g", "--gpu-ids", action="append", type=int, metavar="ID",
                   help="the GPU to run on (one; default: casd.train's --device auto)")
    refused = p.add_argument_group("MMSA flags casd does not take (each is refused with its reason)")
    for flags, reason in UNSUPPORTED.items():
        refused.add_argument(*flags, dest=f"unsupported_{flags[-1].lstrip('-')}", nargs="?", const=True,
                             default=None, metavar="VALUE", help=reason)
    return p


def _refuse_unsupported(args: argparse.Namespace) -> None:
    for flags, reason in UNSUPPORTED.items():
        if getattr(args, f"unsupported_{flags[-1].lstrip('-')}") is not None:
            raise ConfigError(f"{'/'.join(flags)}: {reason}")


def base_config(args: argparse.Namespace, shared: list[str]) -> RunConfig:
    """The settings every run shares: -c's file, then -d, --data, -g and casd.train flags."""
    reserved = sorted({a.split("=")[0] for a in shared} & set(RESERVED))
    if reserved:
        raise ConfigError(", ".join(f"{flag}: use {RESERVED[flag]}" for flag in reserved))
    flags = [] if args.config is not None else list(STUDY_DEFAULTS)
    if args.dataset is not None:
        flags += ["--dataset", args.dataset]
    if args.data is not None:
        flags += ["--data", str(args.data)]
    if args.gpu_ids:
        if len(args.gpu_ids) > 1:
            raise ConfigError("-g/--gpu-ids: one GPU per run (for several, torchrun --nproc_per_node=N -m casd.train)")
        if any(a.split("=")[0] == "--device" for a in shared):
            raise ConfigError("-g/--gpu-ids and --device: give one")
        flags += ["--device", f"cuda:{args.gpu_ids[0]}"]
    flags += shared
    train_parser().parse_args(flags)  # --help and argparse's own errors of casd.train's flags (exit 2)
    given = vars(train_parser(show_defaults=False).parse_args(flags))
    base = None
    if args.config is not None:
        try:
            base = replace(load_config(args.config), output=OutputConfig())
        except ConfigError as exc:
            raise ConfigError(f"-c: {exc} (casd reads a RunConfig JSON, e.g. a run's config.json; MMSA's "
                              "per-model config files do not apply)") from exc
    return config_from_flags(given, base)


def model_config(base: RunConfig, model: str, seed: int, out: Path) -> RunConfig:
    """One run: the variant ``model`` of ``base``, on that variant's model kind whatever kind the
    base names (``-m casd`` with a late-fusion config file still trains CASD)."""
    kind = VARIANTS[model].changes.get("model", {}).get("kind", "casd")
    return run_config(replace(base, model=replace(base.model, kind=kind)), model, seed, out / model / f"seed_{seed}")


def _check_same_data(out: Path, models: list[str], data: DataConfig) -> None:
    """Rows of other models already in DIR's tables must come from the same data: their runs'
    recorded data settings, and the file's SHA-256, must be this command's (checked before
    anything trains)."""
    _, long_rows_ = read_rows(out / "results.csv")
    mine = json.loads(json.dumps(to_dict(data)))  # as results.json holds it (lists, not tuples)
    digest = None
    for other in sorted({r["model"] for r in long_rows_} - set(models)):
        for results in sorted((out / other).glob("seed_*/results.json")):
            recorded = json.loads(results.read_text())["config"]
            if "data" not in recorded:  # written before RunConfig: nothing comparable recorded
                continue
            theirs = recorded["data"]
            origin = recorded.get(RECORD_KEY, {}).get("provenance", {})
            if theirs != mine:
                raise DataError(f"{out} holds {other} results on other data ({results.parent}: "
                                f"{_describe(theirs)}; now {_describe(mine)}): use another --out")
            if data.path is not None and "data_sha256" in origin:
                digest = digest or file_sha256(data.path)
                if origin["data_sha256"] != digest:
                    raise DataError(f"{data.path} changed since {results.parent} was trained on it "
                                    "(another SHA-256): use another --out")


def _describe(data: dict) -> str:
    where = data["path"] if data.get("path") else f"synthetic {data.get('synthetic')}"
    return f"{where}, {data.get('dataset')}, {data.get('task')}"


def run(args: argparse.Namespace, shared: list[str]) -> dict[str, dict[int, dict]]:
    """Train (or reuse) every model x seed and write DIR/results.csv and DIR/<dataset>.csv."""
    _refuse_unsupported(args)
    seeds = args.seeds or list(MMSA_SEEDS)
    models = list(dict.fromkeys(args.model or ["casd"]))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"-s: seed(s) given twice: {sorted(s for s in set(seeds) if seeds.count(s) > 1)}")
    base = base_config(args, shared)
    configs = {m: {s: model_config(base, m, s, args.out) for s in seeds} for m in models}  # all checked first
    _check_same_data(args.out, models, base.data)
    args.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[int, dict]] = {}
    for i, (model, seed) in enumerate((m, s) for m in models for s in seeds):
        _console_logging()
        log.info("%s: %s, seed %d [%d/%d]", PROG, model, seed, i + 1, len(models) * len(seeds))
        reports.setdefault(model, {})[seed] = run_one(configs[model][seed])

    long_path, table_path = args.out / "results.csv", args.out / f"{base.data.dataset}.csv"
    rows = [row for m in models for s in seeds for row in long_rows(m, s, reports[m][s]["test"])]
    write_rows(long_path, LONG_COLUMNS, merge_rows(long_path, LONG_COLUMNS, rows, "model", set(models)))
    table = [mmsa_row(m, [_condition_metrics(reports[m][s]["test"], MMSA_CONDITION) for s in seeds]) for m in models]
    header = list(table[0])
    write_rows(table_path, header, merge_rows(table_path, header, table, "Model", set(models)))
    _print_table(table_path, header)
    return reports


def _console_logging() -> None:
    """Progress to the console between runs (a run logs to its own train.log while it trains;
    reused runs train nothing and would otherwise say nothing, or say it into the last run's log)."""
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _condition_metrics(test: dict, condition: str) -> dict[str, float]:
    frame = test["frame"]
    index = [f"frame_{r:.1f}" for r in frame["rates"]].index(condition)
    return {name: values[index] for name, values in frame["metrics"].items()}


def _print_table(path: Path, header: list[str]) -> None:
    _, rows = read_rows(path)
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in header]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(r[h].ljust(w) for h, w in zip(header, widths)) for r in rows]
    print("\n" + "\n".join(lines) + f"\n\n(mean, std) x100 over seeds, complete test inputs; wrote {path} "
          f"and {path.parent / 'results.csv'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m casd``: 0, or 2 with one line naming what to fix (casd.cli)."""
    return run_command(PROG, lambda: run(*build_parser().parse_known_args(argv)), cleanup=shutdown_distributed)
