"""``python -m casd``: MMSA's command line, run over seeds by the study machinery, with MMSA's CSV."""
import csv
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from casd.config import RunConfig
from casd.data import SyntheticConfig, write_synthetic
from casd.errors import OutputError
from casd.metrics import MOSI_METRICS
from casd.mmsa_run import MMSA_SEEDS, build_parser, main, model_config
from casd.results_csv import LONG_COLUMNS, long_rows, merge_rows, mmsa_cell

TINY = ["--epochs", "1", "--hidden", "8", "--heads", "2", "--embed-dim", "4", "--batch-size", "16",
        "--threads", "1"]
# A small MMSA pickle with feature sizes of its own (not the synthetic defaults).
SMALL = dict(num_train=48, num_valid=24, num_test=32, text_len=8, audio_len=10, vision_len=10, text_dim=12,
             audio_dim=6, vision_dim=5)
CONDITIONS = [f"frame_{r / 10:.1f}" for r in range(10)] + [f"modality_{c}" for c in
                                                             ("t", "a", "v", "ta", "tv", "av", "tav")]


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def parse_cell(cell: str) -> tuple[float, float]:
    mean, std = cell.strip("()").split(", ")
    return float(mean), float(std)


@pytest.mark.slow
def test_mmsa_command_writes_long_and_mmsa_tables_and_reuses_its_runs(tmp_path, capsys):
    data, out = tmp_path / "feats.pkl", tmp_path / "out"
    write_synthetic(SyntheticConfig(**SMALL), data)
    command = ["-m", "casd", "-d", "mosi", "-s", "1111", "-s", "1112", "--data", str(data), "--out", str(out), *TINY]
    assert main(command) == 0

    header, rows = read_csv(out / "results.csv")
    assert header == list(LONG_COLUMNS) == ["model", "seed", "condition", "metric", "value"]
    assert len(rows) == 2 * (17 + 3) * len(MOSI_METRICS)
    assert {r["condition"] for r in rows} == set(CONDITIONS) | {"frame_mean", "frame_auc", "modality_mean"}
    for seed in (1111, 1112):
        report = json.loads((out / "casd" / f"seed_{seed}" / "results.json").read_text())
        assert report["config"]["train"]["seed"] == seed and report["config"]["data"]["path"] == str(data)
        got = {(r["condition"], r["metric"]): float(r["value"]) for r in rows if r["seed"] == str(seed)}
        frame = report["test"]["frame"]
        assert got[("frame_0.3", "MAE")] == frame["metrics"]["MAE"][3]
        assert got[("frame_auc", "Corr")] == frame["summary"]["Corr"]["auc"]
        assert got[("modality_av", "Has0_acc_2")] == report["test"]["modality"]["combinations"]["av"]["Has0_acc_2"]

    header, table = read_csv(out / "mosi.csv")
    assert header == ["Model", *MOSI_METRICS] and [r["Model"] for r in table] == ["casd"]
    for metric in MOSI_METRICS:  # MMSA: round(., 4) per seed, then mean and population std x100, 2 decimals
        values = [round(float(r["value"]), 4) for r in rows if r["condition"] == "frame_0.0" and r["metric"] == metric]
        mean, std = parse_cell(table[0][metric])
        assert mean == pytest.approx(100 * statistics.fmean(values), abs=0.005 + 1e-9)
        assert std == pytest.approx(100 * statistics.pstdev(values), abs=0.005 + 1e-9)
    assert "(mean, std) x100" in capsys.readouterr().out

    # The same command again reuses both runs and writes the same tables.
    before = {p: p.stat().st_mtime_ns for p in out.glob("casd/seed_*/best.pt")}
    tables = [(out / name).read_text() for name in ("results.csv", "mosi.csv")]
    assert main(command) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("casd/seed_*/best.pt")} == before
    assert [(out / name).read_text() for name in ("results.csv", "mosi.csv")] == tables

    # Another model joins the tables (a row of its own), the first model's rows stay.
    assert main(["-m", "late_fusion", "-s", "1111", "--data", str(data), "--out", str(out), *TINY]) == 0
    _, table = read_csv(out / "mosi.csv")
    assert [r["Model"] for r in table] == ["casd", "late_fusion"]
    _, rows = read_csv(out / "results.csv")
    assert {(r["model"], r["seed"]) for r in rows} == {("casd", "1111"), ("casd", "1112"), ("late_fusion", "1111")}

    # Other data into the same folder is refused before anything trains.
    other = tmp_path / "other.pkl"
    write_synthetic(SyntheticConfig(seed=1, **SMALL), other)
    assert main(["-m", "gaussian", "-s", "1111", "--data", str(other), "--out", str(out), *TINY]) == 2
    assert "on other data" in capsys.readouterr().err and not (out / "gaussian").exists()


def test_flags_follow_mmsa():
    args, shared = build_parser().parse_known_args(["-m", "casd", "-d", "sims", "-s", "1111", "-s", "1112",
                                                    "-c", "c.json", "--res-save-dir", "r", "-g", "0", "--epochs", "3"])
    assert (args.model, args.dataset, args.seeds, args.config, args.out, args.gpu_ids) == (
        ["casd"], "sims", [1111, 1112], Path("c.json"), Path("r"), [0])
    assert shared == ["--epochs", "3"]  # a casd.train flag, shared by every run
    assert MMSA_SEEDS == (1111, 1112, 1113, 1114, 1115)


@pytest.mark.parametrize("argv,message", [
    (["-n", "4"], "-n/--num-workers: casd holds the features in memory"),
    (["-t"], "-t/--tune: casd has no built-in hyperparameter search"),
    (["-Fa", "audio.pkl"], "pass --data FILE"),
    (["--seed", "3"], "--seed: use -s"),
    (["--out", "x", "--resume"], "--resume: use (reruns resume by themselves)"),
    (["-s", "1111", "-s", "1111"], "seed(s) given twice: [1111]"),
    (["-g", "0", "-g", "1"], "one GPU per run"),
])
def test_what_casd_does_not_take_is_refused_with_its_reason(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "never")] if "--out" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("casd: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def test_a_config_file_of_mmsa_gets_a_hint(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"lf_dnn": {"commonParams": {}}}))
    assert main(["-c", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown field(s) lf_dnn" in capsys.readouterr().err


def test_each_model_runs_its_own_kind_whatever_the_base_config_says(tmp_path):
    base = RunConfig()
    late = model_config(base, "late_fusion", 7, tmp_path)
    assert late.model.kind == "late_fusion" and late.train.seed == 7
    assert late.output.dir == tmp_path / "late_fusion" / "seed_7"
    late_base = replace(base, model=replace(base.model, kind="late_fusion"))
    assert model_config(late_base, "casd", 7, tmp_path).model.kind == "casd"
    assert model_config(late_base, "no_distill", 7, tmp_path).objective.lambda_cd == 0.0


def test_mmsa_cells_round_like_metricstop_then_like_mmsa_run():
    # Per seed rounded to 4 decimals first: 0.84215 -> 0.8422 (half to even in binary), 0.83005 -> 0.8300.
    values = [0.842151, 0.830049]
    mean, std = parse_cell(mmsa_cell(values))
    assert mean == round((0.8422 + 0.8300) / 2 * 100, 2) == 83.61 and std == 0.61
    assert mmsa_cell([0.5]) == "(50.0, 0.0)"  # one seed: population std 0, as np.std
    assert mmsa_cell([float("nan"), 0.3]) == "(nan, nan)"  # Corr of a constant prediction


def test_long_rows_cover_every_condition_and_summary():
    test = {"frame": {"rates": [0.0, 0.5], "metrics": {"MAE": [0.5, 0.7]},
                      "summary": {"MAE": {"mean": 0.6, "auc": 0.6}}},
            "modality": {"combinations": {"t": {"MAE": 0.9}}, "mean": {"MAE": 0.9}}}
    rows = long_rows("casd", 3, test)
    assert [(r["condition"], r["value"]) for r in rows] == [
        ("frame_0.0", 0.5), ("frame_0.5", 0.7), ("modality_t", 0.9), ("frame_mean", 0.6), ("frame_auc", 0.6),
        ("modality_mean", 0.9)]
    assert all(r["model"] == "casd" and r["seed"] == 3 and r["metric"] == "MAE" for r in rows)
    assert not math.isnan(sum(r["value"] for r in rows))


def test_a_table_of_other_columns_is_not_overwritten(tmp_path):
    path = tmp_path / "mosi.csv"
    path.write_text("Model,Acc,F1\nx,1,2\n")
    with pytest.raises(OutputError, match="holds another kind of table"):
        merge_rows(path, ["Model", "MAE"], [{"Model": "casd", "MAE": "(1.0, 0.0)"}], "Model", {"casd"})
    assert merge_rows(tmp_path / "new.csv", ["Model"], [{"Model": "casd"}], "Model", {"casd"}) == [{"Model": "casd"}]
