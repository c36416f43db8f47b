"""Provenance (casd.provenance): every run records the code and data that made it, and recording
never fails a run."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import casd
from casd import provenance as prov
from casd.data import SyntheticConfig, generate_synthetic, write_synthetic
from casd.train import main as train

TINY = ["--epochs", "1", "--hidden", "8", "--heads", "2", "--embed-dim", "4", "--batch-size", "16",
        "--threads", "1", "--no-progress"]
SMALL = SyntheticConfig(num_train=40, num_valid=16, num_test=24)
KEYS = {"casd", "python", "torch", "triton", "numpy", "git_commit", "git_dirty", "data_sha256", "data_hashed"}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_git_checkout_records_its_commit():
    state = prov.git_state()
    if state["git_commit"] == prov.UNKNOWN:
        pytest.skip("casd is not imported from a git checkout here")
    assert len(state["git_commit"]) == 40 and int(state["git_commit"], 16) >= 0
    assert isinstance(state["git_dirty"], bool)


def test_outside_a_checkout_or_without_git_it_says_unknown_and_never_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(prov, "PACKAGE_DIR", tmp_path)  # a folder git does not track
    assert prov.git_state() == {"git_commit": "unknown", "git_dirty": "unknown"}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert prov.git_state() == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_versions_are_the_running_ones():
    v = prov.versions()
    assert v["casd"] == casd.__version__ and v["torch"] == torch.__version__ and v["numpy"] == np.__version__
    assert v["triton"] != "" and v["python"].count(".") == 2


def test_array_digest_depends_on_content_not_on_key_order():
    rng = np.random.default_rng(0)
    a = {"train": {"x": rng.normal(size=(3, 2)).astype(np.float32), "id": np.array(["a", "b", "c"], dtype=object)}}
    reordered = {"train": {"id": a["train"]["id"].copy(), "x": a["train"]["x"].copy()}}
    assert prov.arrays_sha256(a) == prov.arrays_sha256(reordered)
    changed = {"train": {"x": a["train"]["x"].copy(), "id": a["train"]["id"]}}
    changed["train"]["x"][1, 1] = np.nextafter(changed["train"]["x"][1, 1], np.inf)  # one ulp
    retyped = {"train": {"x": a["train"]["x"].astype(np.float64), "id": a["train"]["id"]}}
    reshaped = {"train": {"x": a["train"]["x"].reshape(2, 3), "id": a["train"]["id"]}}
    renamed = {"train": {"x": a["train"]["x"], "id": np.array(["a", "b", "d"], dtype=object)}}
    digests = {prov.arrays_sha256(d) for d in (a, changed, retyped, reshaped, renamed)}
    assert len(digests) == 5


def test_file_digest_is_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 5000)  # over one read chunk
    assert prov.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def run_provenance(out):
    config = json.loads((out / "config.json").read_text())["record"]["provenance"]
    results = json.loads((out / "results.json").read_text())
    checkpoint = torch.load(out / "best.pt", weights_only=True)["provenance"]
    assert config == results["provenance"] == results["config"]["record"]["provenance"] == checkpoint
    assert set(config) == KEYS and config["casd"] == casd.__version__
    return config


@pytest.mark.slow
def test_runs_record_provenance_in_config_results_and_checkpoints(tmp_path):
    synthetic = ["--synthetic-samples", str(SMALL.num_train), str(SMALL.num_valid), str(SMALL.num_test)]
    assert train([*TINY, *synthetic, "--out", str(tmp_path / "synthetic")]) == 0
    record = run_provenance(tmp_path / "synthetic")
    assert record["data_hashed"] == "generated arrays"
    assert record["data_sha256"] == prov.arrays_sha256(generate_synthetic(SMALL))

    write_synthetic(SMALL, tmp_path / "feats.pkl")
    assert train([*TINY, "--data", str(tmp_path / "feats.pkl"), "--out", str(tmp_path / "file")]) == 0
    record = run_provenance(tmp_path / "file")
    assert record["data_hashed"] == "file"
    assert record["data_sha256"] == hashlib.sha256((tmp_path / "feats.pkl").read_bytes()).hexdigest()
