"""The flags of ``python -m casd.train`` and how each one sets a field of ``RunConfig``.

The defaults shown by ``--help`` are ``RunConfig()``'s. A flag changes the config only when it
is given, so ``--config RUN/config.json`` reproduces that run and flags given with it override
single fields (``--config RUN/config.json --seed 7``). Where to write (``--out``, ``--resume``)
always comes from the command line: reproducing a run never writes into its folder by accident.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from casd.cli import CommandParser
from casd.config import OutputConfig, RunConfig, load_config
from casd.data.missing import TRAIN_PROTOCOLS
from casd.errors import ConfigError
from casd.registry import MODEL_KINDS
from casd.vocab import (AMP_MODES, AVAILABILITIES, CALIBRATION_FITS, DATASETS, DISTILL_MODES, DISTRIBUTIONS,
                        ENCODERS, LIKELIHOODS, NOISE_STRATEGIES, TASK_INPUTS, TASK_WEIGHTS, TASKS, WEIGHTINGS)

__all__ = ["build_parser", "config_from_argv", "config_from_flags"]

DESCRIPTION = """Train CASD (or another model kind) and report its robustness to missing modalities.

With no arguments it trains on the embedded synthetic data set (generated from a seed) and
evaluates on its test split under the frame-level sweep r = 0.0..0.9 and all 7 modality
combinations. ``--data PATH.pkl`` trains on an MMSA feature pickle instead. ``--model
late_fusion`` trains the late-fusion baseline by the same protocol. ``--config RUN/config.json``
reruns a recorded run.

Several processes: ``torchrun --nproc_per_node=N -m casd.train ...`` (DistributedDataParallel,
NCCL on GPUs, gloo on CPUs; --batch-size stays the global batch; see casd/distributed.py).
"""


def build_parser(show_defaults: bool = True) -> argparse.ArgumentParser:
    """The casd.train parser; with ``show_defaults=False`` only the flags given appear in the result."""
    d = RunConfig()
    synthetic = d.data.synthetic

    def default(value: Any) -> Any:
        return value if show_defaults else argparse.SUPPRESS

    p = CommandParser(prog="python -m casd.train", description=DESCRIPTION,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, default=default(None),
                   help="start from this RunConfig (JSON; a run's config.json reproduces that run); "
                   "flags given with it override its fields, except that --out/--resume are never taken from it")
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, default=default(None),
                      help="MMSA feature pickle (aligned_50.pkl, unaligned_50.pkl, ...); "
                      "default: the embedded synthetic data set")
    data.add_argument("--dataset", choices=DATASETS, default=default(d.data.dataset),
                      help="data set kind: selects the metric family (MOSI/MOSEI or SIMS)")
    data.add_argument("--task", choices=TASKS, default=default(d.data.task),
                      help="classification reads `classification_labels` (IEMOCAP-style)")
    data.add_argument("--synthetic-seed", type=int, default=default(synthetic.seed),
                      help="seed of the embedded synthetic data set (not used with --data)")
    data.add_argument("--synthetic-samples", type=int, nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                      default=default((synthetic.num_train, synthetic.num_valid, synthetic.num_test)),
                      help="split sizes of the synthetic data set (not used with --data)")
    data.add_argument("--synthetic-turning", action=argparse.BooleanOptionalAction,
                      default=default(synthetic.turning),
                      help="the synthetic sentiment direction turns over the frames (default); with "
                      "--no-synthetic-turning it is constant, the easy-encoder variant where a linear "
                      "readout (--encoder linear) of the mean frame suffices (not used with --data)")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=sorted(MODEL_KINDS), default=default(d.model.kind),
                       help="; ".join(f"{k.name}: {k.description}" for k in MODEL_KINDS.values())
                       + ". A kind uses the model flags its network has (late_fusion: no --embed-dim, "
                       "--weighting, --distribution)")
    model.add_argument("--hidden", type=int, default=default(d.model.hidden), help="width H of the encoders")
    model.add_argument("--embed-dim", type=int, default=default(d.model.embed_dim), help="D of the embeddings")
    model.add_argument("--layers", type=int, default=default(d.model.encoder_layers),
                       help="Transformer layers per modality encoder")
    model.add_argument("--heads", type=int, default=default(d.model.heads),
                       help="attention heads (must divide --hidden)")
    model.add_argument("--dropout", type=float, default=default(d.model.dropout), help="dropout probability")
    model.add_argument("--weighting", choices=WEIGHTINGS, default=default(d.model.weighting),
                       help="component weights: by confidence, or uniform over the available ones (ablation)")
    model.add_argument("--distribution", choices=DISTRIBUTIONS, default=default(d.model.distribution),
                       help="component family; gaussian fixes nu at 1e4 (ablation)")
    model.add_argument("--frame-scale", action=argparse.BooleanOptionalAction, default=default(d.model.frame_scale),
                       help="feed each frame's log RMS beside its LayerNorm-ed features, so the encoders see "
                       "how reliable a frame is (formulation §2.1)")
    model.add_argument("--encoder", choices=ENCODERS, default=default(d.model.encoder),
                       help="per-modality encoder: transformer, or linear (a linear readout of the mean frame; "
                       "the easy-encoder variant, with --no-synthetic-turning)")
    model.add_argument("--availability", choices=AVAILABILITIES, default=default(d.model.availability),
                       help="mask: only components whose modalities are all present (hard mask); inputs: all 7 "
                       "components from what the inputs hold, absent modalities zero-filled (ablation)")
    model.add_argument("--likelihood", choices=LIKELIHOODS, default=default(d.model.likelihood),
                       help="laplace: the task loss is the Laplace NLL of y with log-scale u_k + c, which ties "
                       "the uncertainty to the error; point: plain L1 / cross-entropy (first formulation)")
    obj = p.add_argument_group("objective")
    obj.add_argument("--lambda-cd", type=float, default=default(d.objective.lambda_cd),
                     help="weight of the consistency-distillation loss (0 disables it); the default was tuned "
                     "on the synthetic validation split (docs/study.md)")
    obj.add_argument("--tau", type=float, default=default(d.objective.tau),
                     help="confidence temperature of the component weights pi = softmax(-u / tau)")
    obj.add_argument("--tau-rows", type=float, default=default(d.objective.tau_rows),
                     help="temperature of the L_cd row weights w_b = B softmax_b(-ubar_b / tau_rows)")
    obj.add_argument("--distill", choices=DISTILL_MODES, default=default(d.objective.distill),
                     help="L_cd per component (each student component towards its teacher component) or between "
                     "the two mixtures (first formulation)")
    obj.add_argument("--cd-per-dim", action=argparse.BooleanOptionalAction, default=default(d.objective.cd_per_dim),
                     help="L_cd in nats per embedding dimension (divided by D)")
    obj.add_argument("--lambda-warmup", type=float, default=default(d.objective.lambda_warmup),
                     help="fraction of training over which lambda_cd ramps up linearly from 0")
    obj.add_argument("--task-input", choices=TASK_INPUTS, default=default(d.objective.task_input),
                     help="the task loss scores f(mu_k), as predicted (mean), or f of the samples (first formulation)")
    obj.add_argument("--task-weights", choices=TASK_WEIGHTS, default=default(d.objective.task_weights),
                     help="weigh each component's task loss by its confidence weight pi, or uniformly over the "
                     "available components (each component learns on every sample that has it; pi only mixes)")
    obj.add_argument("--samples", type=int, default=default(d.objective.num_samples),
                     help="S reparameterised samples per component")
    obj.add_argument("--fused", action="store_true", default=default(False),
                     help="run sampling and distillation with the Triton kernels")
    obj.add_argument("--noise", choices=NOISE_STRATEGIES, default=default(d.objective.noise),
                     help="sample: each sample's noise keyed by (epoch, view, sample index), identical for any "
                     "number of processes; batch: one random key per step and rank")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=default(d.train.epochs),
                       help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--batch-size", type=int, default=default(d.train.batch_size),
                       help="global batch size (split over the processes under torchrun)")
    train.add_argument("--lr", type=float, default=default(d.train.lr),
                       help="peak AdamW learning rate (warm-up, then cosine)")
    train.add_argument("--weight-decay", type=float, default=default(d.train.weight_decay), help="AdamW weight decay")
    train.add_argument("--patience", type=int, default=default(d.train.patience),
                       help="epochs without validation improvement before stopping")
    train.add_argument("--max-bad-steps", type=int, default=default(d.train.max_bad_steps),
                       help="training steps with a non-finite loss or gradients (skipped) in a row before the "
                       "run stops")
    train.add_argument("--seed", type=int, default=default(d.train.seed), help="seed of every training random stream")
    train.add_argument("--amp", choices=AMP_MODES, default=default(d.train.amp),
                       help="autocast dtype; auto: bf16 on GPUs that support it, fp16 on older ones, off on CPU")
    train.add_argument("--missing-protocol", choices=TRAIN_PROTOCOLS, default=default(d.train.missing_protocol),
                       help="missingness of the student view in training")
    train.add_argument("--missing-rate", type=float, default=default(d.train.missing_rate),
                       help="max frame-drop rate / modality-drop probability in training")
    train.add_argument("--calibration-fit", choices=CALIBRATION_FITS, default=default(d.calibration.fit),
                       help="what the held-out calibration refits besides the Laplace offset: reliability = the "
                       "shift of log sigma by statistics of the inputs (kept frames, their loudness), heads = the "
                       "log-scale and nu heads")
    train.add_argument("--calibration-epochs", type=int, default=default(d.calibration.epochs),
                       help="after training, refit what sets the uncertainty u (--calibration-fit) on the "
                       "validation split for this many passes, the rest frozen (0: no calibration; models "
                       "without the Laplace likelihood have none)")
    train.add_argument("--calibration-lr", type=float, default=default(d.calibration.lr),
                       help="Adam learning rate of the held-out calibration")
    train.add_argument("--eval-seed", type=int, default=default(d.evaluation.seed),
                       help="base seed of the evaluation masks")
    train.add_argument("--device", default=default(d.device.name), help="auto, cpu, cuda, cuda:1, ...")
    train.add_argument("--threads", type=int, default=default(d.device.threads),
                       help="CPU threads for torch (default: torch's choice). On a busy CPU use 1: with other "
                       "jobs running, torch's 2 intra-op threads were ~10x slower than 1 for these small models")
    train.add_argument("--out", type=Path, default=default(d.output.dir),
                       help="output directory (default: runs/<timestamp>)")
    train.add_argument("--resume", action="store_true", default=default(False),
                       help="continue the run in --out from its last.pt; --lr, --epochs, --patience and "
                       "--max-bad-steps may differ from the run's (the change is logged), nothing else may")
    train.add_argument("--overwrite", action="store_true", default=default(False),
                       help="replace the run in --out (a folder that holds files is refused without "
                       "--overwrite or --resume); its files are removed once the new run is validated")
    train.add_argument("--no-progress", action="store_true", default=default(False),
                       help="no progress bars (logs only)")
    return p


# Flag (argparse dest) -> (the config section it sets, value -> {field: new value}).
# "data.synthetic" is the synthetic data set's SyntheticConfig inside the data section; its
# flags do nothing when the data come from a file (as they always did).
FLAGS: dict[str, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    "data": ("data", lambda path: {} if path is None else {"path": path, "synthetic": None}),
    "dataset": ("data", lambda v: {"dataset": v}),
    "task": ("data", lambda v: {"task": v}),
    "synthetic_seed": ("data.synthetic", lambda v: {"seed": v}),
    "synthetic_turning": ("data.synthetic", lambda v: {"turning": v}),
    "synthetic_samples": ("data.synthetic", lambda v: dict(zip(("num_train", "num_valid", "num_test"), v))),
    "model": ("model", lambda v: {"kind": v}),
    "hidden": ("model", lambda v: {"hidden": v}),
    "embed_dim": ("model", lambda v: {"embed_dim": v}),
    "layers": ("model", lambda v: {"encoder_layers": v}),
    "heads": ("model", lambda v: {"heads": v}),
    "dropout": ("model", lambda v: {"dropout": v}),
    "weighting": ("model", lambda v: {"weighting": v}),
    "distribution": ("model", lambda v: {"distribution": v}),
    "frame_scale": ("model", lambda v: {"frame_scale": v}),
    "availability": ("model", lambda v: {"availability": v}),
    "encoder": ("model", lambda v: {"encoder": v}),
    "likelihood": ("model", lambda v: {"likelihood": v}),
    "lambda_cd": ("objective", lambda v: {"lambda_cd": v}),
    "tau": ("objective", lambda v: {"tau": v}),
    "tau_rows": ("objective", lambda v: {"tau_rows": v}),
    "distill": ("objective", lambda v: {"distill": v}),
    "cd_per_dim": ("objective", lambda v: {"cd_per_dim": v}),
    "lambda_warmup": ("objective", lambda v: {"lambda_warmup": v}),
    "task_input": ("objective", lambda v: {"task_input": v}),
    "task_weights": ("objective", lambda v: {"task_weights": v}),
    "samples": ("objective", lambda v: {"num_samples": v}),
    "fused": ("objective", lambda on: {"backend": "triton"} if on else {}),
    "noise": ("objective", lambda v: {"noise": v}),
    "epochs": ("train", lambda v: {"epochs": v}),
    "batch_size": ("train", lambda v: {"batch_size": v}),
    "lr": ("train", lambda v: {"lr": v}),
    "weight_decay": ("train", lambda v: {"weight_decay": v}),
    "patience": ("train", lambda v: {"patience": v}),
    "max_bad_steps": ("train", lambda v: {"max_bad_steps": v}),
    "seed": ("train", lambda v: {"seed": v}),
    "amp": ("train", lambda v: {"amp": v}),
    "missing_protocol": ("train", lambda v: {"missing_protocol": v}),
    "missing_rate": ("train", lambda v: {"missing_rate": v}),
    "no_progress": ("train", lambda on: {"progress": False} if on else {}),
    "calibration_fit": ("calibration", lambda v: {"fit": v}),
    "calibration_epochs": ("calibration", lambda v: {"epochs": v}),
    "calibration_lr": ("calibration", lambda v: {"lr": v}),
    "eval_seed": ("evaluation", lambda v: {"seed": v}),
    "device": ("device", lambda v: {"name": v}),
    "threads": ("device", lambda v: {"threads": v}),
    "out": ("output", lambda v: {"dir": v}),
    "resume": ("output", lambda on: {"resume": True} if on else {}),
    "overwrite": ("output", lambda on: {"overwrite": True} if on else {}),
}


def _flag_names(dests: list[str]) -> str:
    return ", ".join("--" + dest.replace("_", "-") for dest in dests)


def _culprits(dests: list[str], flags: dict[str, Any], message: str) -> list[str]:
    """The given flags whose config field the error ``message`` names (all of them if none is named):
    "encoder_layers must be >= 1" -> ["layers"]."""
    named = [dest for dest in dests
             if any(re.search(rf"\b{name}\b", message) for name in FLAGS[dest][1](flags[dest]))]
    return named or dests


def config_from_flags(flags: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """``base`` (default ``RunConfig()``) with the given flags (argparse dest -> value) applied.

    Each section is replaced once with all of its flags, so checks that tie fields together
    (--hidden and --heads) see the final values. A bad value is a ConfigError naming its flags.
    """
    config = base if base is not None else RunConfig()
    unknown = sorted(set(flags) - set(FLAGS) - {"config"})
    if unknown:
        raise ConfigError(f"unknown flag(s) {', '.join(unknown)}")
    changes: dict[str, dict[str, Any]] = {}
    dests: dict[str, list[str]] = {}
    for dest, (section, to_fields) in FLAGS.items():
        if dest in flags:
            changes.setdefault(section, {}).update(to_fields(flags[dest]))
            dests.setdefault(section, []).append(dest)
    if "data.synthetic" in changes:  # the synthetic set's settings; ignored when the data come from a file
        names = dests.pop("data.synthetic")
        synthetic_changes = changes.pop("data.synthetic")
        if changes.get("data", {}).get("path", config.data.path) is None:
            try:
                synthetic = replace(config.data.synthetic, **synthetic_changes)
            except ValueError as exc:
                raise ConfigError(f"{_flag_names(_culprits(names, flags, str(exc)))}: {exc}") from exc
            changes.setdefault("data", {})["synthetic"] = synthetic
            dests.setdefault("data", [])
    for section, fields_ in changes.items():
        try:
            config = replace(config, **{section: replace(getattr(config, section), **fields_)})
        except ValueError as exc:
            raise ConfigError(f"{_flag_names(_culprits(dests[section], flags, str(exc)))}: {exc}") from exc
    return config


def config_from_argv(argv: list[str] | None = None) -> RunConfig:
    """The RunConfig of a casd.train command line (``--config FILE`` first, then the given flags)."""
    build_parser().parse_args(argv)  # --help, and argparse's own errors (exit 2)
    given = vars(build_parser(show_defaults=False).parse_args(argv))
    base = None
    if "config" in given:
        base = replace(load_config(given["config"]), output=OutputConfig())
    return config_from_flags(given, base)
