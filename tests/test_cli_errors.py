"""One error path: every failure a user can fix ends casd.train, casd.predict and casd.study
with one line ``<program>: error: <message naming the file, split, key or flag>`` and exit
status 2, before any output folder is created; bugs keep their traceback (casd.cli).

Each case of issue 9's list is here, run through ``main(argv)`` in-process (a few run the
real command in a subprocess, at the end). docs/reliability.md §3 maps each case to its test.
"""
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import casd.train
from casd.cli import run_command
from casd.data import SyntheticConfig, generate_synthetic
from casd.errors import CheckpointError, UserError
from casd.predict import main as predict
from casd.study.cli import main as study
from casd.train import main as train

import pickle_forge

FAST = ["--no-progress", "--threads", "1"]
TINY = ["--synthetic-samples", "32", "16", "16", "--epochs", "1", "--hidden", "8", "--heads", "2",
        "--embed-dim", "4", "--batch-size", "16", *FAST]


@pytest.fixture(autouse=True)
def fresh_log_handlers():
    """A run's log handlers write to the stdout of the test that made them: none from another test."""
    logging.getLogger("casd").handlers.clear()


def refused(capsys, program: str, code: int, *fragments: str) -> str:
    """The command exited 2 with exactly one line on stderr, ``<program>: error: ...``, holding every fragment."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model construction fails the test: the input must be refused before."""
    def build(*args, **kwargs):
        raise AssertionError("a model was built")
    monkeypatch.setattr(casd.train, "build_model_and_objective", build)


class RunsCode:
    """A pickle that calls os.system when unpickled by the stock unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else pickle.dumps(data, protocol=4))
    return path


def mmsa(**_) -> dict:
    return pickle_forge.mmsa_file(seed=5)


def emptied(split: dict) -> dict:
    return {key: value[:0] for key, value in split.items()}


def _drop(data: dict, split: str, key: str | None = None) -> dict:
    if key is None:
        del data[split]
    else:
        del data[split][key]
    return data


def _set(data: dict, split: str, key: str, index, value) -> dict:
    data[split][key] = np.array(data[split][key])
    data[split][key][index] = value
    return data


def _no_frames(data: dict) -> dict:
    data["test"]["vision"] = np.zeros((4, 0, 2), dtype=np.float32)
    data["test"]["vision_lengths"] = np.zeros(4, dtype=np.int64)
    return data


def _wider(data: dict) -> dict:
    data["test"]["audio"] = np.zeros((4, 6, 5))
    return data


def _emptied_valid(data: dict) -> dict:
    data["valid"] = emptied(data["valid"])
    return data


# (id, the file's bytes or a change to a valid file, extra flags, fragments of the message)
DATA_CASES = [
    ("object-array-over-raw-bytes", pickle_forge.object_array_over_bytes(), [], ["refused", "nothing was executed"]),
    ("field-past-itemsize", pickle_forge.field_past_itemsize(), [], ["refused", "dtype"]),
    ("zero-stride-24GB-claim", pickle_forge.zero_stride_array(), [], ["refused", "numpy.ndarray"]),
    ("memo-amplified", pickle_forge.memo_amplified(copies=100, megabytes=1), [], ["refused", "would decode to more than"]),
    ("length-claim-2**60", pickle_forge.huge_length_claim(), [], ["corrupt or truncated"]),
    ("out-of-band-buffer", pickle_forge.out_of_band_buffer(), [], ["refused", "out-of-band"]),
    ("deep-nesting", pickle_forge.deep_tuple(), [], ["refused", "nested more than"]),
    ("truncated", pickle.dumps(mmsa(), protocol=4)[:3000], [], ["corrupt or truncated"]),
    ("empty-file", b"", [], ["corrupt or truncated"]),
    ("not-a-pickle", b"label,text\n1,hello\n", [], ["corrupt or truncated"]),
    ("missing-split", lambda d: _drop(d, "valid"), [], ["missing split(s) ['valid']"]),
    ("missing-key", lambda d: _drop(d, "train", "vision"), [], ["split 'train'", "missing key 'vision'"]),
    ("vision-length-0", _no_frames, [], ["split 'test'", "'vision' has shape [4, 0, 2]"]),
    ("nan-train-label", lambda d: _set(d, "train", "regression_labels", 2, np.nan), [],
     ["split 'train'", "'regression_labels' must hold finite labels"]),
    ("inf-valid-label", lambda d: _set(d, "valid", "regression_labels", 0, np.inf), [],
     ["split 'valid'", "finite labels"]),
    ("nan-test-label", lambda d: _set(d, "test", "regression_labels", 1, np.nan), [], ["split 'test'", "finite labels"]),
    ("mismatched-widths", _wider, [], ["split 'test'", "feature widths", "differ from train's"]),
    ("empty-split", _emptied_valid, [], ["split 'valid'", "no samples"]),
    ("class-label-1e6", lambda d: _set(d, "train", "classification_labels", 1, 1e6), ["--task", "classification"],
     ["split 'train'", "1000000", "at most 100 classes"]),
    ("mosi-labels-as-sims", lambda d: _set(d, "train", "regression_labels", 0, 2.5), ["--dataset", "sims"],
     ["split 'train'", "the range of --dataset sims"]),
]


@pytest.mark.parametrize("name,content,flags,fragments", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_train_refuses_bad_data_in_one_line_before_a_model_or_a_folder(
        no_model, tmp_path, capsys, name, content, flags, fragments):
    path = write(tmp_path / "data.pkl", content if isinstance(content, bytes) else content(mmsa()))
    out = tmp_path / "run"
    refused(capsys, "casd.train", train(["--data", str(path), "--out", str(out), *flags, *FAST]), str(path), *fragments)
    assert not out.exists()


def test_code_in_a_data_pickle_never_runs(no_model, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "data.pkl", pickle.dumps({"train": RunsCode(marker)}))
    refused(capsys, "casd.train", train(["--data", str(path), "--out", str(tmp_path / "run"), *FAST]),
            "refused", "posix.system", "nothing was executed")
    assert not marker.exists()


def test_data_that_is_a_folder_or_missing(no_model, tmp_path, capsys):
    folder = tmp_path / "features"
    folder.mkdir()
    refused(capsys, "casd.train", train(["--data", str(folder), "--out", str(tmp_path / "run"), *FAST]),
            str(folder), "is a folder, not a feature pickle")
    refused(capsys, "casd.train", train(["--data", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "run"), *FAST]),
            "none.pkl", "no such file")
    assert not (tmp_path / "run").exists()


FLAG_CASES = [("--threads", "0"), ("--heads", "0"), ("--layers", "0"), ("--hidden", "0"), ("--embed-dim", "0"),
              ("--tau", "inf"), ("--tau", "nan"), ("--lambda-cd", "nan"), ("--lambda-cd", "-1"), ("--lr", "inf"),
              ("--lr", "nan"), ("--lr", "2"), ("--weight-decay", "nan"), ("--dropout", "1"), ("--missing-rate", "nan"),
              ("--patience", "0"), ("--max-bad-steps", "0"), ("--epochs", "0"), ("--samples", "0"),
              ("--seed", "-1"), ("--eval-seed", "-1"), ("--synthetic-seed", "-1"), ("--batch-size", "0"),
              ("--threads", "two"), ("--dataset", "iemocap"), ("--device", "tpu!"), ("--amp", "fp16")]


@pytest.mark.parametrize("flag,value", FLAG_CASES, ids=[f"{f}={v}" for f, v in FLAG_CASES])
def test_bad_flag_values_name_the_flag_before_any_work(no_model, tmp_path, capsys, flag, value):
    if flag == "--amp" and torch.cuda.is_available():
        pytest.skip("fp16 needs a GPU: valid here")
    out = tmp_path / "run"
    refused(capsys, "casd.train", train([*TINY, "--out", str(out), flag, value]), flag)
    assert not out.exists()


@pytest.mark.parametrize("section,values,fragment", [
    ("model", {"heads": 0}, "model: heads must be >= 1"),
    ("model", {"encoder_layers": 0}, "model: encoder_layers must be >= 1"),
    ("objective", {"tau": float("inf")}, "objective: tau must be finite"),
    ("objective", {"lambda_cd": float("nan")}, "objective: lambda_cd must be finite"),
    ("train", {"lr": float("nan")}, "train: lr must be finite"),
    ("device", {"threads": 0}, "device: threads must be >= 1"),
    ("evaluation", {"seed": -5}, "evaluation: seed -5"),
    ("train", {"epochs": "ten"}, "train.epochs: expected an integer"),
])
def test_bad_values_in_a_config_file_name_the_file_and_field(no_model, tmp_path, capsys, section, values, fragment):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({section: values}))  # Python's json writes NaN/Infinity, and reads them
    refused(capsys, "casd.train", train(["--config", str(path), "--out", str(tmp_path / "run"), *FAST]),
            str(path), fragment)
    assert not (tmp_path / "run").exists()


# --- output folders ---------------------------------------------------------------------------------
def test_out_that_is_a_file_or_lies_below_one(no_model, tmp_path, capsys):
    file = tmp_path / "results.txt"
    file.write_text("mine")
    refused(capsys, "casd.train", train([*TINY, "--out", str(file)]), f"--out {file}: is a file, not a folder")
    refused(capsys, "casd.train", train([*TINY, "--out", str(file / "run")]), f"{file} is a file, not a folder")
    assert file.read_text() == "mine"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write in a read-only folder")
def test_out_in_a_folder_without_write_permission(no_model, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        refused(capsys, "casd.train", train([*TINY, "--out", str(locked / "run")]), f"cannot write in {locked}")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_nobody_may_create_a_folder(no_model, tmp_path, capsys):
    """/proc takes no new entries, for root either (the check tries, rather than trusting modes)."""
    refused(capsys, "casd.train", train([*TINY, "--out", "/proc/casd-run"]), "--out /proc/casd-run: cannot write in /proc")


def test_out_holding_files_needs_resume_or_overwrite(no_model, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"test": "old"}')
    (out / "best.pt").write_bytes(b"old weights")
    refused(capsys, "casd.train", train([*TINY, "--out", str(out)]), "already holds a finished run", "--overwrite",
            "--resume")
    refused(capsys, "casd.train", train([*TINY, "--out", str(out), "--resume", "--overwrite"]), "--resume", "--overwrite")
    refused(capsys, "casd.train", train([*TINY, "--out", str(out), "--resume"]), "--resume: no checkpoint",
            str(out / "last.pt"))
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "results.json"]
    assert (out / "best.pt").read_bytes() == b"old weights"


# --- checkpoints ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (its folder): checkpoints to corrupt and to predict with."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train([*TINY, "--out", str(out)]) == 0
    return out


def corrupt_copies(source: Path, folder: Path) -> dict[str, Path]:
    """best.pt spoilt in the ways a file can be: torn, bit-flipped, emptied, foreign, hostile."""
    folder.mkdir(exist_ok=True)
    good = source.read_bytes()
    with zipfile.ZipFile(source) as archive:  # flip bits inside the largest tensor's data
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra) + record.file_size // 2
    flipped = bytearray(good)
    flipped[start: start + 16] = bytes(b ^ 0xFF for b in flipped[start: start + 16])
    marker = folder / "pwned"
    cases = {"torn": good[: len(good) // 3], "bit-flips-in-weights": bytes(flipped), "empty": b"",
             "random": np.random.default_rng(0).bytes(4096), "hostile": pickle.dumps(RunsCode(marker))}
    paths = {}
    for name, data in cases.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    torch.save({"weights": torch.zeros(2)}, folder / "foreign.pt")
    paths["foreign"] = folder / "foreign.pt"
    return paths


def test_predict_refuses_corrupt_checkpoints_in_one_line(trained, tmp_path, capsys):
    spoilt = corrupt_copies(trained / "best.pt", tmp_path)
    # Control: torch.load does not check the CRCs torch.save writes; flipped bits load as other weights.
    good, flipped = (torch.load(p, weights_only=True)["model"] for p in (trained / "best.pt", spoilt["bit-flips-in-weights"]))
    assert any(not torch.equal(good[k], flipped[k]) for k in good)
    for name, path in spoilt.items():
        message = refused(capsys, "casd.predict", predict(["--checkpoint", str(path), "--synthetic"]), str(path))
        assert ("not a readable checkpoint" in message or "not a casd.train checkpoint" in message
                or "do not fit" in message), (name, message)
    assert not (tmp_path / "pwned").exists()  # weights_only: the hostile checkpoint ran nothing
    refused(capsys, "casd.predict", predict(["--checkpoint", str(tmp_path), "--synthetic"]), "is a folder, not a checkpoint")
    refused(capsys, "casd.predict", predict(["--checkpoint", str(tmp_path / "none.pt"), "--synthetic"]), "no checkpoint")


def test_resume_refuses_a_corrupt_last_pt_and_leaves_the_folder_alone(trained, tmp_path, capsys):
    for name, path in corrupt_copies(trained / "last.pt", tmp_path / "bad").items():
        out = tmp_path / name
        out.mkdir()
        shutil.copy(path, out / "last.pt")
        refused(capsys, "casd.train", train([*TINY, "--out", str(out), "--resume"]), str(out / "last.pt"))
        assert [p.name for p in out.iterdir()] == ["last.pt"], name  # no train.log, no config.json
    assert not (tmp_path / "bad" / "pwned").exists()


def test_a_corrupt_best_pt_of_a_finished_run_is_one_line(trained, tmp_path, capsys):
    """Resuming a finished run only re-evaluates its best.pt; a spoilt one is named."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / "best.pt").write_bytes((trained / "best.pt").read_bytes()[:5000])
    refused(capsys, "casd.train", train([*TINY, "--out", str(out), "--resume"]),
            f"{out / 'best.pt'} is not a readable checkpoint")
    assert not (out / "results.json").exists()  # no results that another model produced


# --- casd.predict on bad data -----------------------------------------------------------------------
def synthetic_file(tmp_path: Path, change=None, name="new.pkl") -> Path:
    raw = generate_synthetic(SyntheticConfig(seed=9, num_train=4, num_valid=4, num_test=8))
    if change is not None:
        change(raw)
    return write(tmp_path / name, raw)


@pytest.mark.parametrize("change,flags,fragments", [
    (lambda raw: _set(raw, "test", "regression_labels", 3, np.nan), [], ["split 'test'", "finite labels"]),
    (lambda raw: raw.update(test=emptied(raw["test"])), [], ["split 'test'", "no samples"]),
    (lambda raw: raw["test"].update(audio=raw["test"]["audio"][:, :, :5]), [], ["audio feature dimension: data 5"]),
    (lambda raw: raw["test"].update(vision=raw["test"]["vision"][:, :0]), [], ["'vision' has shape [8, 0, 24]"]),
    (None, ["--dataset", "sims"], ["--dataset: given 'sims', checkpoint trained on 'mosi'"]),
    (lambda raw: raw.pop("test"), [], ["no split 'test'", "--split"]),
    (None, ["--condition", "frame_0.55"], ["--condition", "frame_0.55"]),
    (None, ["--eval-seed", "-1", "--condition", "frame_0.5"], ["--eval-seed -1"]),
    (None, ["--batch-size", "0"], ["--batch-size"]),
    (lambda raw: raw["test"].update(vision=raw["test"]["vision"] * 1e37), [],
     ["split 'test': the model's outputs are not finite", "on the scale it was trained on"]),
])
def test_predict_refuses_bad_data_and_flags_in_one_line(trained, tmp_path, capsys, change, flags, fragments):
    path = synthetic_file(tmp_path, change)
    out = tmp_path / "p.csv"
    code = predict(["--checkpoint", str(trained / "best.pt"), "--data", str(path), "--out", str(out), *flags])
    refused(capsys, "casd.predict", code, *fragments)
    assert not out.exists()


def test_predict_refuses_bad_files_and_outputs(trained, tmp_path, capsys):
    best = str(trained / "best.pt")
    refused(capsys, "casd.predict", predict(["--checkpoint", best, "--data", str(tmp_path)]), "is a folder")
    refused(capsys, "casd.predict", predict(["--checkpoint", best, "--data", str(tmp_path / "x.pkl")]), "no such file")
    hostile = write(tmp_path / "hostile.pkl", pickle_forge.object_array_over_bytes())
    refused(capsys, "casd.predict", predict(["--checkpoint", best, "--data", str(hostile)]), "nothing was executed")
    refused(capsys, "casd.predict", predict(["--checkpoint", best, "--synthetic", "--out", str(tmp_path)]),
            "--out", "is a folder, not a file")
    refused(capsys, "casd.predict", predict(["--checkpoint", best, "--synthetic", "--out", "/proc/p.csv"]),
            "cannot write in /proc")
    refused(capsys, "casd.predict", predict(["--checkpoint", best]), "--data", "--synthetic")  # argparse: one line


# --- casd.study -------------------------------------------------------------------------------------
def test_study_refuses_bad_flags_data_and_folders_in_one_line(no_model, tmp_path, capsys):
    out = tmp_path / "study"
    refused(capsys, "casd.study", study(["--out", str(out), *TINY, "--tau", "nan"]), "--tau")
    refused(capsys, "casd.study", study(["--out", str(out), *TINY, "--heads", "0"]), "--heads")
    refused(capsys, "casd.study", study(["--out", str(out), "--seeds", "x"]), "--seeds")
    refused(capsys, "casd.study", study(["--out", str(out), "--overwrite"]), "--overwrite")
    assert not out.exists()
    file = tmp_path / "file"
    file.write_text("")
    refused(capsys, "casd.study", study(["--out", str(file), *TINY]), "is a file, not a folder")
    refused(capsys, "casd.study", study(["--out", str(out), "--variants", "casd", "--seeds", "1", "--data", str(tmp_path),
                                         *FAST]), "is a folder, not a feature pickle")
    refused(capsys, "casd.study", study(["--out", str(out), "--seeds", "1", "--report-only", *TINY]),
            "--report-only: no finished run")


def test_the_synthetic_data_writer_refuses_in_one_line(tmp_path, capsys):
    from casd.data.synthetic import main as synthetic

    out = tmp_path / "syn.pkl"
    refused(capsys, "casd.data.synthetic", synthetic(["--out", str(out), "--num-train", "0"]), "--num-train")
    refused(capsys, "casd.data.synthetic", synthetic(["--out", str(out), "--noise-dof", "nan"]), "--noise-dof")
    refused(capsys, "casd.data.synthetic", synthetic(["--out", str(tmp_path)]), "is a folder, not a file")
    (tmp_path / "file").write_text("")
    refused(capsys, "casd.data.synthetic", synthetic(["--out", str(tmp_path / "file" / "x.pkl")]), "is a file, not a folder")
    assert not out.exists()
    assert synthetic(["--out", str(tmp_path / "new" / "syn.pkl"), "--num-train", "3", "--num-valid", "2",
                      "--num-test", "2"]) == 0  # creates its folder, as before


# --- the wrapper itself ------------------------------------------------------------------------------
def test_bugs_keep_their_traceback_and_user_errors_are_one_line(monkeypatch, capsys):
    def bug():
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        run_command("casd.x", bug)

    def multiline():
        raise CheckpointError("first\n  second\n")
    refused(capsys, "casd.x", run_command("casd.x", multiline), "first; second")
    monkeypatch.setenv("CASD_TRACEBACK", "1")  # for a bug report
    with pytest.raises(CheckpointError):
        run_command("casd.x", multiline)


@pytest.mark.parametrize("exc", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                                              "memory: you tried to allocate 40000000000000 bytes")])
def test_running_out_of_memory_is_one_line(capsys, exc):
    def body():
        raise exc
    refused(capsys, "casd.x", run_command("casd.x", body), "out of memory")


def test_interrupt_and_cleanup(capsys):
    cleaned = []

    def body():
        raise KeyboardInterrupt
    assert run_command("casd.x", body, cleanup=lambda: cleaned.append(1)) == 130
    assert capsys.readouterr().err == "casd.x: interrupted\n" and cleaned == [1]
    with pytest.raises(ValueError):
        run_command("casd.x", lambda: int("x"), cleanup=lambda: cleaned.append(2))
    assert cleaned == [1, 2]
    assert issubclass(CheckpointError, UserError) and UserError.exit_code == 2


# --- the real commands ---------------------------------------------------------------------------------
def test_commands_print_one_line_and_exit_2(trained, tmp_path):
    """The three commands as a user runs them (started together: each pays for importing torch)."""
    marker = tmp_path / "pwned"
    hostile = write(tmp_path / "hostile.pt", pickle.dumps(RunsCode(marker)))
    commands = {
        "train": (["casd.train", "--heads", "0", "--out", str(tmp_path / "run")], "--heads"),
        "predict": (["casd.predict", "--checkpoint", str(hostile), "--synthetic"], "nothing was executed"),
        "study": (["casd.study", "--lambda-cd", "nan", "--out", str(tmp_path / "study")], "--lambda-cd"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = {name: subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for name, (argv, _) in commands.items()}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        program, fragment = commands[name][0][0], commands[name][1]
        lines = err.strip().splitlines()
        assert process.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err
        assert fragment in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "study").exists() and not marker.exists()
