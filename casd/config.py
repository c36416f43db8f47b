"""``RunConfig``: everything that defines a training run, as typed dataclasses.

The command line (casd.flags), a config file (``--config RUN/config.json``) and the study
(``dataclasses.replace`` on a base config) all produce one ``RunConfig``; ``casd.train.run``
takes it and nothing else. Its sections:

    data        DataConfig       which data (MMSA pickle or the synthetic set), data set kind, task
    model       ModelSpec        the model kind (casd.registry) and its hyperparameters
    objective   ObjectiveConfig  terms, temperature, sampling noise, kernel backend (casd.objective)
    train       TrainConfig      optimiser, schedule, epochs, seed, AMP, training missingness (casd.trainer)
    evaluation  EvalConfig       the seeds of the evaluation conditions
    device      DeviceConfig     where to compute (and with how many CPU threads)
    output      OutputConfig     where to write, and whether to resume the run there

casd.serialize converts it to and from JSON values exactly:
``from_dict(RunConfig, json.loads(json.dumps(to_dict(c)))) == c``. A config file may leave
out any field (it keeps its default) but may not name a field that does not exist.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from casd.calibration import CalibrationConfig
from casd.checkpoint import recorded_before_issue_11
from casd.data import FRAME_RATES, SyntheticConfig
from casd.errors import ConfigError
from casd.evaluate import VALID_SEED_OFFSET, test_conditions, validation_conditions
from casd.model import ModelConfig
from casd.objective import ObjectiveConfig
from casd.registry import MODEL_KINDS, model_config
from casd.serialize import from_dict
from casd.trainer import TrainConfig
from casd.vocab import DATASETS, TASKS

__all__ = ["DataConfig", "ModelSpec", "EvalConfig", "DeviceConfig", "OutputConfig", "RunConfig",
           "load_config", "RECORD_KEY"]

# A run's config.json is its RunConfig plus this key, which holds what the run derived (the
# network config, the data description, the command line, ...). load_config skips it.
RECORD_KEY = "record"


@dataclass(frozen=True)
class DataConfig:
    """The data a run trains and evaluates on."""

    path: Path | None = None  # an MMSA feature pickle; None: the embedded synthetic data set
    dataset: str = "mosi"  # data set kind: selects the metric family (casd.vocab.DATASETS)
    task: str = "regression"  # casd.vocab.TASKS
    # The synthetic data set's generator settings (used when path is None; then the default
    # is SyntheticConfig()).
    synthetic: SyntheticConfig | None = None

    def __post_init__(self) -> None:
        if self.path is None and self.synthetic is None:
            object.__setattr__(self, "synthetic", SyntheticConfig())
        if self.path is not None and self.synthetic is not None:
            raise ValueError("give a data path or synthetic settings, not both")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


@dataclass(frozen=True)
class ModelSpec:
    """The model kind and its hyperparameters; the data fill in feature dims and output size.

    One set of fields serves every kind: a kind uses those its network config has (the
    late-fusion baseline has no embed_dim, weighting or distribution). The confidence
    temperature is the objective's (ObjectiveConfig.tau), passed to the network when it is built.
    """

    kind: str = "casd"  # a key of casd.registry.MODEL_KINDS
    hidden: int = ModelConfig.hidden  # width H of the encoders
    embed_dim: int = ModelConfig.embed_dim  # D of the embeddings
    encoder_layers: int = ModelConfig.encoder_layers  # Transformer layers per modality encoder
    heads: int = ModelConfig.heads
    dropout: float = ModelConfig.dropout
    nu_min: float = ModelConfig.nu_min
    nu_init: float = ModelConfig.nu_init
    weighting: str = ModelConfig.weighting  # casd.vocab.WEIGHTINGS
    distribution: str = ModelConfig.distribution  # casd.vocab.DISTRIBUTIONS
    # The issue-11 design (formulation §8), chosen on the synthetic validation split; the network
    # configs keep the first formulation's values as theirs, so that old checkpoints rebuild.
    frame_scale: bool = True  # the encoders see each frame's log RMS (formulation §2.1)
    # casd.vocab.AVAILABILITIES. "mask" (the hard availability mask) won on validation over "inputs"
    # (all 7 components from the zero-filled inputs), which is kept as an ablation (formulation §8).
    availability: str = "mask"
    likelihood: str = "laplace"  # casd.vocab.LIKELIHOODS: the Laplace NLL calibrates u (formulation §4)
    encoder: str = ModelConfig.encoder  # casd.vocab.ENCODERS; "linear" for the easy-encoder variant

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {self.kind!r}")
        self.network_config((1, 1, 1), 1, ObjectiveConfig.tau)  # the kind's own checks, now

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kind"}

    def network_config(self, feature_dims: tuple[int, ...], output_dim: int, tau: float):
        """The kind's network config (what checkpoints store and build_model takes)."""
        return model_config(self.kind, feature_dims, output_dim, tau=tau, **self.hyperparameters())


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation conditions' seeds (validation uses its own, derived ones: casd.evaluate)."""

    seed: int = 1111  # base seed of the frame-level test masks

    def __post_init__(self) -> None:
        # The conditions derive their mask seeds from it (casd.evaluate); those must lie in [0, 2**32).
        try:
            test_conditions(self.seed), validation_conditions(self.seed)  # EvalCondition checks its seeds
        except ValueError as exc:
            raise ValueError(f"seed {self.seed} gives condition seeds outside [0, 2**32) "
                             f"(allowed: 0 to {2**32 - 1 - VALID_SEED_OFFSET - 3 * len(FRAME_RATES)})") from exc


@dataclass(frozen=True)
class DeviceConfig:
    name: str = "auto"  # auto, cpu, cuda, cuda:1, ... (casd.device.resolve_device)
    threads: int | None = None  # CPU threads for torch; None: torch's choice

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes (casd.outputs: a folder holding files is refused unless resume or overwrite)."""

    dir: Path | None = None  # None: runs/<timestamp>
    resume: bool = False  # continue the run in dir from its last.pt
    overwrite: bool = False  # replace the run in dir (its files are removed once the new run is validated)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("resume continues the run in the folder and overwrite replaces it: pass one of them")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def network_config(self, feature_dims: tuple[int, ...], output_dim: int):
        """The network config of this run's model for data of these sizes."""
        return self.model.network_config(feature_dims, output_dim, self.objective.tau)


def load_config(path: str | os.PathLike) -> RunConfig:
    """The RunConfig in a JSON file: a run's config.json, or a hand-written (partial) one.

    A run's config.json written before the issue-11 fields existed is read as that run ran
    (``recorded_before_issue_11``); a hand-written file's missing fields keep today's defaults."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"--config: no file {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: {path} is not JSON ({exc})") from exc
    if isinstance(data, dict):
        record = data.get(RECORD_KEY)
        data = recorded_before_issue_11(data, record.get("model_config") if isinstance(record, dict) else None)
        data = {k: v for k, v in data.items() if k != RECORD_KEY}
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
