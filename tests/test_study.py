"""The robustness study (`python -m casd.study`) and its late-fusion baseline."""
import json

import numpy as np
import pytest
import torch

from casd.baseline import LateFusionConfig, LateFusionModel, LateFusionObjective, build_model, model_kind
from casd.metrics import sweep_summary
from casd.modalities import COMBINATION_NAMES
from casd.objective import ObjectiveConfig
from casd.study import aggregate, main as study, paired_differences, run_args, run_one
from casd.train import build_parser as train_parser

DIMS = (12, 5, 7)


def random_batch(batch: int, present: torch.Tensor) -> dict:
    out = {}
    for name, dim, length in zip(("text", "audio", "vision"), DIMS, (9, 13, 11)):
        out[name] = torch.randn(batch, length, dim)
        out[f"{name}_lengths"] = torch.randint(1, length + 1, (batch,))
    out["present"] = present
    out["labels"] = 6 * torch.rand(batch) - 3
    return out


def random_presence(batch: int) -> torch.Tensor:
    present = torch.rand(batch, 3) < 0.5
    present[torch.arange(batch), torch.randint(0, 3, (batch,))] = True
    return present


# --- the late-fusion baseline -------------------------------------------------------------------
def test_late_fusion_mixes_only_present_modalities_with_learned_weights():
    model = LateFusionModel(LateFusionConfig(DIMS, hidden=16, heads=2, dropout=0.0)).eval()
    with torch.no_grad():
        model.fusion_logits.copy_(torch.randn(3))
    present = random_presence(16)
    batch = random_batch(16, present)
    per_modality = model.modality_outputs(batch).squeeze(-1)  # [B, 3]
    logits = model.fusion_logits.detach().expand(16, 3).masked_fill(~present, float("-inf"))
    expected = (torch.softmax(logits, 1) * per_modality).sum(1)
    prediction = model.predict(batch)
    torch.testing.assert_close(prediction.output, expected)
    # Changing an absent modality's features changes nothing.
    changed = dict(batch, vision=batch["vision"] + 5 * torch.randn_like(batch["vision"]))
    rows = ~present[:, 2]
    torch.testing.assert_close(model.predict(changed).output[rows], prediction.output[rows])
    # Its one "component" is the combination of all present modalities; no confidence.
    used = [COMBINATION_NAMES.index("".join(m for m, p in zip("tav", row) if p)) for row in present.tolist()]
    assert prediction.weights.argmax(1).tolist() == used and torch.all(prediction.weights.sum(1) == 1)
    assert torch.isnan(prediction.confidence).all()


def test_late_fusion_objective_is_the_l1_task_loss_of_both_views():
    model = LateFusionModel(LateFusionConfig(DIMS, hidden=16, heads=2, dropout=0.0))
    teacher = random_batch(8, torch.ones(8, 3, dtype=torch.bool))
    student = {**teacher, "present": random_presence(8)}
    losses = LateFusionObjective(ObjectiveConfig())(model, teacher, student)
    l1 = lambda batch: (model(batch).squeeze(-1) - teacher["labels"]).abs().mean()  # noqa: E731
    torch.testing.assert_close(losses.task_teacher, l1(teacher))
    torch.testing.assert_close(losses.task_student, l1(student))
    torch.testing.assert_close(losses.total, l1(teacher) + l1(student))
    losses.total.backward()
    assert all(p.grad is not None for p in model.parameters())
    rebuilt = build_model(model_kind(model), model.config.to_dict())
    assert type(rebuilt) is LateFusionModel and rebuilt.config == model.config


# --- aggregation -----------------------------------------------------------------------------
def random_summary(rng: np.random.Generator) -> dict:
    rates = [r / 10 for r in range(10)]
    metrics = {"MAE": rng.uniform(0.5, 1.5, 10).tolist(), "Corr": rng.uniform(0, 1, 10).tolist()}
    combos = {c: {"MAE": float(rng.uniform(0.5, 1.5)), "Corr": float(rng.uniform(0, 1))} for c in COMBINATION_NAMES}
    return {
        "frame": {"rates": rates, "metrics": metrics,
                  "summary": {n: sweep_summary(rates, v) for n, v in metrics.items()}},
        "modality": {"combinations": combos,
                     "mean": {n: float(np.mean([c[n] for c in combos.values()])) for n in ("MAE", "Corr")}},
    }


def test_aggregate_gives_mean_and_sample_std_of_every_metric_and_condition():
    rng = np.random.default_rng()
    summaries = [random_summary(rng) for _ in range(3)]
    agg = aggregate(summaries)
    for name in ("MAE", "Corr"):
        values = np.array([s["frame"]["metrics"][name] for s in summaries])  # [seeds, rates]
        np.testing.assert_allclose([c["mean"] for c in agg["frame"]["metrics"][name]], values.mean(0))
        np.testing.assert_allclose([c["std"] for c in agg["frame"]["metrics"][name]], values.std(0, ddof=1))
        aucs = [s["frame"]["summary"][name]["auc"] for s in summaries]
        assert agg["frame"]["summary"][name]["auc"]["values"] == aucs
        assert agg["frame"]["summary"][name]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
        for combo in COMBINATION_NAMES:
            values = [s["modality"]["combinations"][combo][name] for s in summaries]
            assert agg["modality"]["combinations"][combo][name]["mean"] == pytest.approx(np.mean(values))
    single = aggregate(summaries[:1])
    assert single["modality"]["mean"]["MAE"]["std"] == 0.0
    study_ = {"variants": {"casd": {"aggregate": agg}, "other": {"aggregate": aggregate(summaries[::-1])}}}
    diff = paired_differences(study_, "casd", "MAE")["other"]["frame_auc"]
    aucs = np.array([s["frame"]["summary"]["MAE"]["auc"] for s in summaries])
    np.testing.assert_allclose(diff["values"], aucs - aucs[::-1])


# --- end to end --------------------------------------------------------------------------------
TINY = ["--synthetic-samples", "64", "32", "48", "--epochs", "1", "--hidden", "16", "--heads", "2",
        "--embed-dim", "8", "--threads", "1"]


@pytest.mark.slow
def test_study_runs_variants_and_seeds_reports_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "study"
    command = ["--seeds", "3", "4", "--variants", "casd", "late_fusion", "--out", str(out), "--diagnose", *TINY]
    assert study(command) == 0
    report = json.loads((out / "study.json").read_text())
    assert list(report["variants"]) == ["casd", "late_fusion"] and report["seeds"] == [3, 4]
    for variant in ("casd", "late_fusion"):
        runs = [json.loads((out / variant / f"seed_{s}" / "results.json").read_text()) for s in (3, 4)]
        assert [r["config"]["args"]["seed"] for r in runs] == [3, 4]
        assert runs[0]["config"]["model_kind"] == variant
        agg = report["variants"][variant]["aggregate"]
        for name, per_rate in agg["frame"]["metrics"].items():
            values = np.array([r["test"]["frame"]["metrics"][name] for r in runs])
            np.testing.assert_allclose([c["mean"] for c in per_rate], values.mean(0))
        tav = [r["test"]["modality"]["combinations"]["tav"]["MAE"] for r in runs]
        assert agg["modality"]["combinations"]["tav"]["MAE"]["std"] == pytest.approx(np.std(tav, ddof=1))
    markdown = (out / "study.md").read_text()
    for row in [f"| r = {r / 10:.1f} |" for r in range(10)] + ["| mean |", "| AUC |", "| {t,a,v} |", "| {a} |"]:
        assert row in markdown
    assert markdown.count("### Frame-level") == len(report["metrics"]) and "Paired differences" in markdown
    assert (out / "study.png").stat().st_size > 10_000

    # Diagnostics of the confidence weights (CASD runs only), on the validation split.
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert list(diagnostics) == ["casd"] and list(diagnostics["casd"]) == ["3", "4"]
    for d in diagnostics["casd"].values():
        assert 1 / 7 - 1e-6 <= d["max_weight"] <= 1 and d["u_spread"] >= 0
        assert set(d["rho_noise"]) == {"t", "a", "v"} and all(-1 <= r <= 1 for r in d["rho_noise"].values())
        for name, w in d["weights"].items():
            assert sum(w) == pytest.approx(1, abs=1e-5), name
        ta = d["weights"]["modality_ta"]  # only {t}, {a}, {t,a} are available
        assert max(ta[i] for i in (2, 4, 5, 6)) == 0 and min(ta[i] for i in (0, 1, 3)) > 0
    assert "| casd |" in (out / "diagnostics.md").read_text()

    # Rerunning reuses the finished runs (same numbers); other shared flags are refused.
    assert study([*command, "--no-progress"]) == 0
    assert json.loads((out / "study.json").read_text())["variants"] == report["variants"]
    assert study([*command, "--hidden", "8"]) == 2
    assert "hidden" in capsys.readouterr().err
    assert study(["--seed", "5", "--out", str(out)]) == 2


def test_finished_runs_are_reused_with_default_flags_and_refused_with_others(tmp_path):
    """results.json stores args as JSON (tuple defaults become lists): reuse must still match."""
    out = tmp_path / "casd" / "seed_7"
    out.mkdir(parents=True)
    args = vars(train_parser().parse_args(run_args("casd", 7, out, [])))
    saved = {"config": {"args": json.loads(json.dumps({k: str(v) if hasattr(v, "parts") else v
                                                       for k, v in args.items()}))}, "test": {"marker": 1}}
    (out / "results.json").write_text(json.dumps(saved))
    assert run_one("casd", 7, out, [], report_only=True)["test"] == {"marker": 1}
    with pytest.raises(ValueError, match="lambda_cd"):
        run_one("casd", 7, out, ["--lambda-cd", "0.5"], report_only=True)
