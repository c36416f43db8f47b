"""RunConfig (casd.config), its JSON form (casd.serialize) and the casd.train flags (casd.flags)."""
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from casd.config import DataConfig, DeviceConfig, EvalConfig, ModelSpec, OutputConfig, RunConfig, load_config
from casd.data import SyntheticConfig
from casd.data.missing import TRAIN_PROTOCOLS
from casd.device import AMP_DTYPES
from casd.errors import ConfigError
from casd.flags import FLAGS, build_parser, config_from_argv, config_from_flags
from casd.objective import ObjectiveConfig
from casd.registry import MODEL_KINDS
from casd.serialize import from_dict, to_dict
from casd.trainer import TrainConfig
from casd.train import main as train
from casd.vocab import AMP_MODES, DATASETS, DISTRIBUTIONS, ENCODERS, NOISE_STRATEGIES, TASKS, WEIGHTINGS

# Every field away from its default (where the field allows it).
UNUSUAL = RunConfig(
    data=DataConfig(dataset="sims", task="classification",
                    synthetic=SyntheticConfig(seed=3, num_train=10, num_valid=5, num_test=7, signal=(0.5, 0.25, 1.0))),
    model=ModelSpec(kind="late_fusion", hidden=48, embed_dim=12, encoder_layers=2, heads=3, dropout=0.25,
                    nu_min=2.5, nu_init=7.0, weighting="uniform", distribution="gaussian"),
    objective=ObjectiveConfig(num_samples=3, lambda_cd=0.125, tau=0.5, noise="sample", backend="triton"),
    train=TrainConfig(epochs=3, batch_size=17, lr=3e-3, weight_decay=0.0, warmup_fraction=0.1, grad_clip=2.0,
                      patience=2, seed=9, amp="off", missing_protocol="frame", missing_rate=0.3,
                      eval_batch_size=64, max_bad_steps=3, progress=False),
    evaluation=EvalConfig(seed=5),
    device=DeviceConfig(name="cpu", threads=1),
    output=OutputConfig(dir=Path("runs/x"), resume=True),
)


@pytest.mark.parametrize("config", [RunConfig(), UNUSUAL,
                                    replace(RunConfig(), data=DataConfig(path=Path("data/mosi.pkl")))])
def test_run_config_round_trips_exactly_through_json(config):
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(config)))) == config


def test_a_partial_config_file_keeps_the_defaults_and_bad_files_name_the_field(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 3}, "data": {"path": "x.pkl"}, "record": {"ignored": 1}}))
    config = load_config(path)
    assert config == replace(RunConfig(), train=replace(TrainConfig(), epochs=3), data=DataConfig(path=Path("x.pkl")))
    for bad, message in [({"train": {"epoch": 3}}, "unknown field.*epoch"),
                         ({"train": {"epochs": "3"}}, "train.epochs: expected an integer"),
                         ({"train": {"epochs": 0}}, "train: epochs must be >= 1"),
                         ({"model": {"hidden": 30}}, "model: hidden .30. must be divisible by heads"),
                         ({"data": {"synthetic": {"signal": [1, 2]}}}, r"data.synthetic.signal: expected 3 values"),
                         ({"data": {"path": "x.pkl", "synthetic": {}}}, "not both"),
                         ({"objective": {"noise": "row"}}, "noise must be one of")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_config(path)


def test_every_flag_sets_a_config_field_and_the_defaults_are_run_configs():
    dests = {a.dest for a in build_parser()._actions if a.dest not in ("help", "config")}
    assert dests == set(FLAGS)
    assert config_from_argv([]) == RunConfig()
    assert config_from_flags(vars(build_parser().parse_args([]))) == RunConfig()  # shown defaults = RunConfig()


def test_flags_map_onto_the_config():
    config = config_from_argv(["--hidden", "30", "--heads", "2", "--model", "late_fusion", "--fused", "--tau", "0.5",
                               "--synthetic-samples", "5", "6", "7", "--no-progress", "--eval-seed", "3",
                               "--threads", "1", "--noise", "sample", "--layers", "2"])
    assert (config.model.hidden, config.model.heads, config.model.kind, config.model.encoder_layers) == \
        (30, 2, "late_fusion", 2)  # --hidden 30 with the default 4 heads alone would be refused
    assert config.objective == replace(ObjectiveConfig(), backend="triton", tau=0.5, noise="sample")
    assert config.data.synthetic == replace(SyntheticConfig(), num_train=5, num_valid=6, num_test=7)
    assert not config.train.progress and config.evaluation.seed == 3 and config.device.threads == 1
    with_data = config_from_argv(["--data", "x.pkl"])
    assert with_data.data.path == Path("x.pkl") and with_data.data.synthetic is None
    assert config_from_argv(["--data", "x.pkl", "--synthetic-seed", "3"]) == with_data  # not used with --data
    with pytest.raises(ConfigError, match="--hidden, --heads: hidden .30. must be divisible by heads .4."):
        config_from_argv(["--hidden", "30", "--heads", "4"])


def test_a_config_file_is_the_base_and_flags_override_it_but_never_the_output(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(UNUSUAL)))
    config = config_from_argv(["--config", str(path), "--seed", "4", "--out", str(tmp_path / "new")])
    assert config == replace(UNUSUAL, train=replace(UNUSUAL.train, seed=4), output=OutputConfig(dir=tmp_path / "new"))
    assert config_from_argv(["--config", str(path)]).output == OutputConfig()  # not resumed, not its folder


def test_vocabularies_are_the_choices_everywhere():
    actions = {a.dest: a for a in build_parser()._actions}
    assert tuple(actions["dataset"].choices) == DATASETS and tuple(actions["task"].choices) == TASKS
    assert tuple(actions["noise"].choices) == NOISE_STRATEGIES and tuple(actions["amp"].choices) == AMP_MODES
    assert tuple(actions["weighting"].choices) == WEIGHTINGS
    assert tuple(actions["distribution"].choices) == DISTRIBUTIONS
    assert tuple(actions["encoder"].choices) == ENCODERS
    assert tuple(actions["missing_protocol"].choices) == TRAIN_PROTOCOLS
    assert set(actions["model"].choices) == set(MODEL_KINDS)
    assert set(AMP_DTYPES) | {"auto"} == set(AMP_MODES)
    assert {f.name for f in fields(RunConfig)} == {"data", "model", "objective", "train", "calibration", "evaluation",
                                                   "device", "output"}


@pytest.mark.slow
def test_config_json_reproduces_the_run(tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    tiny = ["--synthetic-samples", "48", "24", "32", "--epochs", "2", "--hidden", "8", "--heads", "2",
            "--embed-dim", "4", "--batch-size", "16", "--threads", "1", "--no-progress", "--noise", "sample",
            "--tau", "0.7", "--missing-protocol", "frame"]
    assert train([*tiny, "--out", str(first)]) == 0
    recorded = load_config(first / "config.json")
    assert recorded == replace(config_from_argv(tiny), output=OutputConfig(dir=first))
    assert train(["--config", str(first / "config.json"), "--out", str(again)]) == 0
    a, b = (json.loads((run / "results.json").read_text()) for run in (first, again))
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    assert a["test"] == b["test"] and a["selection"] == b["selection"]
    assert load_config(again / "config.json") == replace(recorded, output=OutputConfig(dir=again))
