"""Output safety (casd.outputs): nothing overwritten by accident, no results of another model,
every file written atomically and durably, results.json strict JSON."""
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import casd.evaluate
import casd.outputs
from casd.checkpoint import atomic_save
from casd.errors import OutputError
from casd.flags import config_from_argv
from casd.outputs import RUN_FILES, atomic_write, prepare_output_dir, strict_json, write_json
from casd.study.cli import STUDY_DEFAULTS
from casd.study.running import run_config
from casd.train import main as train

import faults

TINY = ["--synthetic-samples", "32", "16", "16", "--epochs", "1", "--hidden", "8", "--heads", "2", "--embed-dim", "4",
        "--batch-size", "16", "--no-progress", "--threads", "1"]


def strict(path: Path):
    """The file's JSON, refusing the non-JSON tokens NaN, Infinity and -Infinity."""
    def refuse(token):
        raise AssertionError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync and os.replace, in order: ("file" | "dir" | "replace", path or name)."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", None))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_atomic_write_fsyncs_the_file_renames_then_fsyncs_the_folder(tmp_path, fsyncs):
    target = tmp_path / "results.json"
    write_json(target, {"a": 1})
    assert fsyncs == [("file", None), ("replace", "results.json"), ("dir", None)]
    fsyncs.clear()
    atomic_save({"w": torch.ones(3)}, tmp_path / "last.pt")  # checkpoints go the same way
    assert fsyncs == [("file", None), ("replace", "last.pt"), ("dir", None)]
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "results.json"]  # no temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("old")

    def half(handle):
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        atomic_write(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]
    with pytest.raises(OutputError, match=r"missing/x.json: cannot write: No such file"):
        write_json(tmp_path / "missing" / "x.json", {})


def test_strict_json_writes_null_for_undefined_values(tmp_path):
    value = {"Corr": float("nan"), "list": [math.inf, -math.inf, np.float32(1.5), np.float64("nan")],
             "n": np.int64(3), "ok": np.bool_(True), "array": np.array([1.0, np.nan]), "path": tmp_path}
    write_json(tmp_path / "r.json", value)
    assert strict(tmp_path / "r.json") == {"Corr": None, "list": [None, None, 1.5, None], "n": 3, "ok": True,
                                           "array": [1.0, None], "path": str(tmp_path)}
    assert strict_json((1, {"x": np.float32("inf")})) == [1, {"x": None}]


def test_results_json_is_strict_with_an_undefined_metric(monkeypatch, tmp_path):
    """A constant prediction has no correlation (NaN): results.json says null, as the report does."""
    real = casd.evaluate.compute_metrics

    def with_undefined_corr(*args, **kwargs):
        return {**real(*args, **kwargs), "Corr": float("nan")}
    monkeypatch.setattr(casd.evaluate, "compute_metrics", with_undefined_corr)
    out = tmp_path / "run"
    assert train([*TINY, "--out", str(out)]) == 0
    report = strict(out / "results.json")
    assert report["test"]["frame"]["metrics"]["Corr"] == [None] * 10
    assert report["test"]["modality"]["mean"]["Corr"] is None
    assert math.isfinite(report["test"]["frame"]["metrics"]["MAE"][0])
    strict(out / "config.json")


def test_overwrite_removes_the_old_run_before_the_new_one_can_fail(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    assert train([*TINY, "--out", str(out), "--seed", "1"]) == 0
    (out / "notes.txt").write_text("mine")
    old = {name: (out / name).read_bytes() for name in RUN_FILES}

    # Refused runs change nothing, --overwrite or not: the folder is touched only after validation.
    assert train([*TINY, "--out", str(out), "--seed", "2"]) == 2
    assert train([*TINY, "--out", str(out), "--seed", "2", "--overwrite", "--heads", "0"]) == 2
    assert train([*TINY, "--out", str(out), "--seed", "2", "--overwrite", "--data", str(tmp_path)]) == 2
    assert {name: (out / name).read_bytes() for name in RUN_FILES} == old
    capsys.readouterr()

    # The new run fails in its first epoch: none of the old run's results or weights remain.
    with monkeypatch.context() as patch:
        faults.install(patch, lambda call, rank: "loss")
        assert train([*TINY, "--out", str(out), "--seed", "2", "--overwrite"]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt", "train.log"]
    assert strict(out / "config.json")["train"]["seed"] == 2
    assert "INFO epoch 1 " not in (out / "train.log").read_text()  # a fresh log: the old run's epoch is gone

    assert train([*TINY, "--out", str(out), "--seed", "2", "--overwrite"]) == 0
    assert strict(out / "results.json")["config"]["train"]["seed"] == 2 and (out / "notes.txt").read_text() == "mine"


def test_a_resumed_run_drops_its_results_until_it_writes_new_ones(monkeypatch, tmp_path):
    out = tmp_path / "run"
    assert train([*TINY, "--out", str(out)]) == 0
    with monkeypatch.context() as patch:  # one more epoch, which fails
        faults.install(patch, lambda call, rank: "loss")
        assert train([*TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 2
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.pt", "config.json", "last.pt", "train.log"]  # resumable, no stale results
    assert train([*TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert len(strict(out / "results.json")["history"]) == 2


def test_leftover_temporaries_are_removed_and_the_folder_is_created_late(tmp_path):
    out = tmp_path / "a" / "b"
    assert prepare_output_dir(out, overwrite=False) == [] and out.is_dir()
    (out / "last.pt.tmp").write_bytes(b"torn")
    (out / "results.json").write_text("{}")
    assert prepare_output_dir(out, overwrite=False) == ["last.pt.tmp"]
    assert prepare_output_dir(out, overwrite=True) == ["results.json"]


def test_the_study_restarts_its_own_runs_that_never_checkpointed(tmp_path):
    base = config_from_argv(STUDY_DEFAULTS)
    fresh, failed, interrupted, finished = (tmp_path / name for name in ("fresh", "failed", "interrupted", "finished"))
    for folder, files in ((failed, ["train.log", "config.json"]), (interrupted, ["train.log", "last.pt"]),
                          (finished, ["results.json", "last.pt"])):
        folder.mkdir()
        for name in files:
            (folder / name).write_text("")
    output = {folder.name: run_config(base, "casd", 1, folder).output for folder in (fresh, failed, interrupted, finished)}
    assert [(o.resume, o.overwrite) for o in output.values()] == [(False, False), (False, True), (True, False),
                                                                   (True, False)]
    casd.outputs.check_output_dir(failed, output["failed"].resume, output["failed"].overwrite)  # accepted
