"""Running the study: its variants of a shared RunConfig, one run per variant and seed.

A variant is a named change to the shared config, applied with ``dataclasses.replace``. The
ablations of CASD are listed here; every other model kind in casd.registry.MODEL_KINDS is a
variant of its own, so registering a model adds it to the study.

A finished run (its results.json) is reused when its RunConfig equals the one the study would
run now, compared as dataclasses apart from where and how it ran (output, device, progress
bars); an interrupted run (last.pt, no results.json) is resumed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from casd import train
from casd.calibration import CalibrationConfig
from casd.checkpoint import BEFORE_ISSUE_11, recorded_before_issue_11
from casd.config import RECORD_KEY, DeviceConfig, OutputConfig, RunConfig
from casd.errors import ConfigError, OutputError
from casd.flags import config_from_flags
from casd.objective import FIRST_FORMULATION, ObjectiveConfig
from casd.registry import MODEL_KINDS
from casd.report import model_label
from casd.serialize import flatten, from_dict, to_dict

__all__ = ["Variant", "VARIANTS", "run_config", "saved_config", "run_one"]

log = logging.getLogger("casd")


@dataclass(frozen=True)
class Variant:
    """A named change to the shared config: ``{section: {field: value}}``; ``label`` is its name
    in plots ("CASD w/o distillation")."""

    name: str
    description: str
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def apply(self, config: RunConfig) -> RunConfig:
        for section, values in self.changes.items():
            config = replace(config, **{section: replace(getattr(config, section), **values)})
        return config

    def describe(self) -> list[str]:
        """The changes as text: ``["objective.lambda_cd = 0.0"]``."""
        return [f"{section}.{name} = {value}" for section, values in self.changes.items()
                for name, value in values.items()]


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("casd", "full CASD", label="CASD"),
    Variant("no_distill", "CASD without distillation (lambda_cd = 0)", {"objective": {"lambda_cd": 0.0}},
            "CASD w/o distillation"),
    Variant("uniform", "CASD with uniform component weights", {"model": {"weighting": "uniform"}},
            "CASD, uniform weights"),
    Variant("gaussian", "CASD with Gaussian embeddings", {"model": {"distribution": "gaussian"}},
            "CASD, Gaussian"),
    Variant("gaussian_no_distill", "CASD with Gaussian embeddings, without distillation",
            {"model": {"distribution": "gaussian"}, "objective": {"lambda_cd": 0.0}}, "CASD, Gaussian, w/o distillation"),
    Variant("inputs", "CASD with all 7 components computed from the (zero-filled) inputs instead of the hard "
            "availability mask", {"model": {"availability": "inputs"}}, "CASD, components from inputs"),
    # sigma enters no loss and pi is uniform: the same architecture as a deterministic model.
    Variant("deterministic", "the same architecture made deterministic: uniform pi, task loss on f(mu), no "
            "likelihood and no distillation (sigma is never used)",
            {"model": {"weighting": "uniform", "likelihood": "point"},
             "objective": {"lambda_cd": 0.0, "task_input": "mean"}}, "deterministic"),
    Variant("first_formulation", "CASD as first formulated (formulation §8): no frame scale, L1 task loss on "
            "samples, mixture KL, one tau = 1, lambda_cd 0.01, training missing rate 0.7",
            {"model": {"frame_scale": False, "likelihood": "point"}, "objective": dict(FIRST_FORMULATION),
             "train": {"missing_rate": 0.7}}, "CASD, first formulation"),
    *(Variant(kind.name, kind.description, {"model": {"kind": kind.name}}, model_label(kind.name))
      for kind in MODEL_KINDS.values() if kind.name != "casd"),
)}


def run_config(base: RunConfig, variant: str, seed: int, out: Path) -> RunConfig:
    """The config of one run: the shared ``base`` with the variant's changes, the seed and its folder.

    The variant's changes win over shared settings (``--lambda-cd 0.03`` sets it for every
    variant except no_distill); the seed and the output folder are the study's own.
    """
    config = VARIANTS[variant].apply(base)
    resume = (out / "last.pt").exists()
    # The study owns its run folders: a folder without last.pt (and without results.json, which
    # run_one reuses instead) holds a run that stopped before its first checkpoint; start it again.
    overwrite = not resume and not (out / "results.json").exists() and out.is_dir() and any(out.iterdir())
    return replace(config, train=replace(config.train, seed=seed, progress=False),
                   output=OutputConfig(dir=out, resume=resume, overwrite=overwrite))


def _comparable(config: RunConfig) -> RunConfig:
    """``config`` without what does not change results (where it ran and wrote, progress bars; the
    task weights of a model whose pi is uniform or that has none, for which both are the same; the
    calibration of a model that has no Laplace scale to calibrate, or how a calibration of 0 epochs
    would have run)."""
    objective, calibration = config.objective, config.calibration
    if config.model.kind != "casd" or config.model.weighting == "uniform":
        objective = replace(objective, task_weights=ObjectiveConfig.task_weights)
    if config.model.kind != "casd" or config.model.likelihood != "laplace":
        calibration = CalibrationConfig()
    elif calibration.epochs == 0:
        calibration = CalibrationConfig(epochs=0)
    return replace(config, output=OutputConfig(), device=DeviceConfig(), train=replace(config.train, progress=True),
                   objective=objective, calibration=calibration)


def saved_config(report: dict, where: Path) -> RunConfig:
    """The RunConfig recorded in a results.json, also one written before RunConfig existed
    (whose config held casd.train's parsed flags under "args")."""
    recorded = report["config"]
    if "args" in recorded:  # format of casd before RunConfig: the argparse namespace
        flags = {k: v for k, v in recorded["args"].items()}
        flags["data"] = None if flags.get("data") is None else Path(flags["data"])
        # it ran the first formulation: the issue-11 fields as they were then (casd.config)
        flags = {**{k: v for values in BEFORE_ISSUE_11.values() for k, v in values.items()},
                 "tau_rows": flags.get("tau", 1.0), **flags}
        return config_from_flags(flags)
    try:
        record = recorded.get(RECORD_KEY)
        network = record.get("model_config") if isinstance(record, dict) else None
        return from_dict(RunConfig, {k: v for k, v in recorded_before_issue_11(recorded, network).items()
                                     if k != RECORD_KEY})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def run_one(config: RunConfig, report_only: bool = False) -> dict:
    """results.json of the run ``config`` describes: reused if finished with the same config, else
    trained (or resumed, when its folder holds last.pt)."""
    out = config.output.dir
    results = out / "results.json"
    if results.exists():
        try:
            report = json.loads(results.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OutputError(f"{results}: cannot read this finished run's results ({exc}); remove the folder "
                              "to train it again") from exc
        saved = saved_config(report, results)
        if _comparable(saved) != _comparable(config):
            mine, theirs = flatten(to_dict(_comparable(config))), flatten(to_dict(_comparable(saved)))
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            if not all(k.startswith("calibration.") for k in diff):
                raise ConfigError(f"{out} holds a run with another config ({', '.join(diff)}); use another --out")
            # Calibration comes after training (casd.calibration): the trained run is kept and
            # only calibrated and evaluated again, by resuming it from its last.pt.
            if report_only or not (out / "last.pt").exists():
                raise ConfigError(f"{out} holds a run with another calibration ({', '.join(diff)})"
                                  + ("; run the study without --report-only to recalibrate it" if report_only
                                     else " and no last.pt to recalibrate it from; use another --out"))
            log.info("study: recalibrating %s (%s; its training is kept)", out, ", ".join(diff))
            return train.run(replace(config, output=OutputConfig(dir=out, resume=True)))
        log.info("study: reusing %s", out)
        return report
    if report_only:
        raise ConfigError(f"--report-only: no finished run in {out} (no results.json); run the study without it")
    log.info("study: training %s -> %s%s", config.model.kind, out, " (resuming)" if config.output.resume else "")
    return train.run(config)
