"""The robustness study (`python -m casd.study`) and its late-fusion baseline."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from casd.baseline import LateFusionConfig, LateFusionModel, LateFusionObjective
from casd.errors import ConfigError
from casd.flags import config_from_argv
from casd.metrics import sweep_summary
from casd.modalities import COMBINATION_NAMES
from casd.objective import ObjectiveConfig
from casd.registry import MODEL_KINDS, build_model, model_kind
from casd.serialize import to_dict
from casd.study import main as study
from casd.study.cli import STUDY_DEFAULTS, replicates
from casd.study.reporting import EXACT_PAIRS, aggregate, paired_differences, sign_flip_p_value
from casd.study.running import VARIANTS, run_config, run_one

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
    # Its one "component" is the combination of all present modalities; no uncertainty.
    used = [COMBINATION_NAMES.index("".join(m for m, p in zip("tav", row) if p)) for row in present.tolist()]
    assert prediction.weights.argmax(1).tolist() == used and torch.all(prediction.weights.sum(1) == 1)
    assert torch.isnan(prediction.uncertainty).all()


def test_late_fusion_objective_trains_the_fused_output_and_every_present_head():
    model = LateFusionModel(LateFusionConfig(DIMS, hidden=16, heads=2, dropout=0.0))
    teacher = random_batch(8, torch.ones(8, 3, dtype=torch.bool))
    student = {**teacher, "present": random_presence(8)}
    losses = LateFusionObjective(ObjectiveConfig())(model, teacher, student)
    labels = teacher["labels"]

    def l1(batch):  # fused L1 + per sample the mean L1 of the present modalities' heads
        heads = (model.modality_outputs(batch).squeeze(-1) - labels[:, None]).abs()  # [B, 3]
        present = batch["present"].float()
        per_head = (heads * present).sum(1) / present.sum(1)
        return (model(batch).squeeze(-1) - labels).abs().mean() + per_head.mean()

    torch.testing.assert_close(losses.task_teacher, l1(teacher))
    torch.testing.assert_close(losses.task_student, l1(student))
    torch.testing.assert_close(losses.total, l1(teacher) + l1(student))
    # An absent modality's head gets no gradient from the student view's head term.
    only_text = {**teacher, "present": torch.tensor([[True, False, False]]).expand(8, 3)}
    model.zero_grad()
    LateFusionObjective(ObjectiveConfig())(model, only_text, only_text).total.backward()
    assert model.heads[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.heads[2].parameters())
    model.zero_grad()
    losses = LateFusionObjective(ObjectiveConfig())(model, teacher, student)
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
    assert diff["p_sign_flip"] == pytest.approx(sign_flip_p_value(aucs - aucs[::-1]))


def test_sign_flip_p_value_by_hand_and_against_scipy():
    # All n differences of one sign: only the identity and its mirror reach |mean|: 2 / 2**n.
    assert sign_flip_p_value([0.3, 0.1, 0.2, 0.5, 0.4]) == pytest.approx(2 / 32)
    assert sign_flip_p_value(-np.linspace(0.1, 1.0, 10)) == pytest.approx(2 / 1024)
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0  # no difference at all
    assert sign_flip_p_value([1.0, -1.0]) == 1.0  # mean 0: every pattern reaches it
    # [3, 1]: the four patterns give |mean| 2, 1, 1, 2; two reach the observed 2: p = 0.5.
    assert sign_flip_p_value([3.0, 1.0]) == pytest.approx(0.5)
    assert np.isnan(sign_flip_p_value([])) and np.isnan(sign_flip_p_value([1.0, np.nan]))
    stats = pytest.importorskip("scipy.stats")
    gen = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    for n in (3, 7, 10):
        d = gen.normal(0.3, 1.0, n)
        ref = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                     alternative="two-sided").pvalue
        assert sign_flip_p_value(d) == pytest.approx(ref), d
    # Beyond EXACT_PAIRS a seeded random sample of patterns: close to the exact value.
    d = gen.normal(0.2, 1.0, EXACT_PAIRS + 2)
    ref = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                 alternative="two-sided").pvalue
    assert sign_flip_p_value(d) == pytest.approx(ref, abs=0.01)
    assert sign_flip_p_value(d) == sign_flip_p_value(d)  # seeded: the report does not change between runs


def test_replicates_pair_training_seeds_with_data_seeds():
    base = config_from_argv([*STUDY_DEFAULTS])
    plain = replicates(base, [3, 4], None)
    assert list(plain) == ["3", "4"] and plain["4"][1:] == (4, Path("seed_4")) and plain["3"][0] is base
    both = replicates(base, [3, 4], [0, 5])
    assert list(both) == ["0/3", "0/4", "5/3", "5/4"]
    config, seed, folder = both["5/4"]
    assert (config.data.synthetic.seed, seed, folder) == (5, 4, Path("data_5") / "seed_4")
    assert config.data.synthetic.num_train == base.data.synthetic.num_train  # only the seed changes
    with pytest.raises(ConfigError, match="--data-seeds: seed"):
        replicates(base, [3], [1, 1])
    with pytest.raises(ConfigError, match="--seeds: seed"):
        replicates(base, [3, 3], None)


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
        assert [r["config"]["train"]["seed"] for r in runs] == [3, 4]
        assert runs[0]["config"]["model"]["kind"] == variant
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
    assert (out / "study.png").stat().st_size > 10_000 and (out / "study.pdf").stat().st_size > 10_000

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


@pytest.mark.slow
def test_study_over_data_seeds_pairs_runs_and_reports_p_values(tmp_path):
    out = tmp_path / "study"
    command = ["--seeds", "3", "--data-seeds", "0", "1", "--variants", "casd", "no_distill", "--out", str(out), *TINY]
    assert study(command) == 0
    report = json.loads((out / "study.json").read_text())
    assert report["replicates"] == ["0/3", "1/3"] and report["data_seeds"] == [0, 1] and report["seeds"] == [3]
    for d in (0, 1):
        run = json.loads((out / "casd" / f"data_{d}" / "seed_3" / "results.json").read_text())
        assert run["config"]["data"]["synthetic"]["seed"] == d and run["config"]["train"]["seed"] == 3
    per_run = report["variants"]["casd"]["per_seed"]
    assert per_run["0/3"]["frame"]["metrics"] != per_run["1/3"]["frame"]["metrics"]  # other data, other numbers
    diff = report["paired"]["differences"]["no_distill"]["frame_auc"]
    assert len(diff["values"]) == 2 and diff["p_sign_flip"] == pytest.approx(sign_flip_p_value(diff["values"]))
    curves = report["variants"]["casd"]["curves"]
    assert list(curves) == ["0/3", "1/3"] and all(len(c["valid"]) == len(c["train"]) == 1 for c in curves.values())
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "curves.pdf").exists()
    markdown = (out / "study.md").read_text()
    assert "sign-flip" in markdown and "data sets with seeds 0, 1 (2 runs per variant)" in markdown
    assert "## Convergence" in markdown and "| casd | 1/1, 1/1 |" in markdown
    assert study([*command, "--report-only"]) == 0  # the layout is found again


def test_variants_are_config_changes_and_every_model_kind_is_one():
    base = config_from_argv(["--noise", "sample", "--lambda-cd", "0.03", "--hidden", "32"])
    no_distill = run_config(base, "no_distill", 7, Path("/tmp/x"))
    assert no_distill.objective.lambda_cd == 0.0  # the variant's change wins over the shared flag
    assert no_distill.model.hidden == 32 and no_distill.objective.noise == "sample"
    assert no_distill.train.seed == 7 and not no_distill.train.progress
    assert run_config(base, "casd", 7, Path("/tmp/x")).objective.lambda_cd == 0.03
    assert {k for k in MODEL_KINDS if k != "casd"} <= set(VARIANTS)
    assert run_config(base, "late_fusion", 1, Path("/tmp/x")).model.kind == "late_fusion"


def test_finished_runs_are_reused_with_the_same_config_and_refused_with_another(tmp_path):
    """results.json stores the RunConfig as JSON (tuples become lists): reuse compares dataclasses."""
    out = tmp_path / "casd" / "seed_7"
    out.mkdir(parents=True)
    base = config_from_argv(STUDY_DEFAULTS)
    config = run_config(base, "casd", 7, out)
    saved = {"config": {**to_dict(config), "record": {"argv": []}}, "test": {"marker": 1}}
    (out / "results.json").write_text(json.dumps(saved))
    assert run_one(config, report_only=True)["test"] == {"marker": 1}
    # Where and how it ran does not matter.
    elsewhere = run_config(config_from_argv([*STUDY_DEFAULTS, "--threads", "1", "--no-progress"]), "casd", 7, out)
    assert run_one(elsewhere, report_only=True)["test"] == {"marker": 1}
    with pytest.raises(ConfigError, match="objective.lambda_cd"):
        run_one(run_config(config_from_argv([*STUDY_DEFAULTS, "--lambda-cd", "0.5"]), "casd", 7, out),
                report_only=True)


def test_runs_written_before_run_config_are_reused_by_their_recorded_flags(tmp_path):
    """A results.json of the branch-point casd held the parsed casd.train flags (config.args)."""
    out = tmp_path / "casd" / "seed_7"
    out.mkdir(parents=True)
    args = {"data": None, "dataset": "mosi", "task": "regression", "synthetic_seed": 0,
            "synthetic_samples": [64, 32, 48], "model": "casd", "hidden": 16, "embed_dim": 8, "layers": 1,
            "heads": 2, "dropout": 0.1, "tau": 1.0, "weighting": "confidence", "distribution": "student_t",
            "lambda_cd": 0.01, "samples": 4, "fused": False, "noise": "sample", "epochs": 1, "batch_size": 64,
            "lr": 0.001, "weight_decay": 0.01, "patience": 6, "seed": 7, "amp": "auto",
            "missing_protocol": "mixed", "missing_rate": 0.7, "eval_seed": 1111, "device": "auto",
            "threads": 1, "out": str(out), "resume": False, "no_progress": True}
    (out / "results.json").write_text(json.dumps({"config": {"args": args}, "test": {"marker": 2}}))
    tiny = ["--synthetic-samples", "64", "32", "48", "--epochs", "1", "--hidden", "16", "--heads", "2",
            "--embed-dim", "8"]
    # It ran the first formulation: today's defaults are another run (formulation §8) ...
    with pytest.raises(ConfigError, match="objective.distill"):
        run_one(run_config(config_from_argv([*STUDY_DEFAULTS, *tiny]), "casd", 7, out), report_only=True)
    # ... and the first formulation's flags reuse it.
    first = ["--no-frame-scale", "--likelihood", "point", "--tau", "1", "--tau-rows", "1", "--lambda-cd", "0.01",
             "--distill", "mixture", "--no-cd-per-dim", "--task-input", "samples", "--missing-rate", "0.7"]
    tiny += first
    config = run_config(config_from_argv([*STUDY_DEFAULTS, *tiny]), "casd", 7, out)
    assert run_one(config, report_only=True)["test"] == {"marker": 2}
    with pytest.raises(ConfigError, match="model.hidden"):
        run_one(run_config(config_from_argv([*STUDY_DEFAULTS, *tiny, "--hidden", "8"]), "casd", 7, out),
                report_only=True)


# --- the plot ------------------------------------------------------------------------------------
def test_study_plot_reads_as_a_paper_figure(monkeypatch, tmp_path):
    """Dots with error bars (no bars), axis labels that say which way is better, readable names,
    paired differences against CASD; PNG and PDF. Drawn from the committed study, which predates
    variant labels (they come from casd.study.running.VARIANTS then)."""
    from matplotlib.container import BarContainer

    from casd.study import reporting

    study_ = json.loads((Path(__file__).parents[1] / "results" / "study" / "study.json").read_text())
    figures = []
    real_save = reporting.save_figure
    monkeypatch.setattr(reporting, "save_figure", lambda fig, path: figures.append(fig) or real_save(fig, path))
    written = reporting.plot_study(study_, tmp_path / "study.png", tuple(study_["plot_metrics"]))
    assert [p.name for p in written] == ["study.png", "study.pdf"] and all(p.stat().st_size > 10_000 for p in written)
    axes = [ax for ax in figures[0].get_axes() if ax.get_visible()]
    assert len(axes) == len(study_["plot_metrics"]) + 2
    assert not any(isinstance(c, BarContainer) for ax in axes for c in ax.containers)
    for ax in axes[:-1]:
        assert ax.get_ylabel().endswith(("(lower is better)", "(higher is better)")), ax.get_ylabel()
    assert "advantage in MAE" in axes[-1].get_xlabel() and "> 0: CASD better" in axes[-1].get_xlabel()
    names = [t.get_text() for sub in figures[0].subfigs for legend in sub.legends for t in legend.get_texts()]
    assert names == ["CASD", "CASD w/o distillation", "CASD, uniform weights", "CASD, Gaussian", "late fusion"]
    assert "synthetic data (seed 0)" in figures[0].get_suptitle() and "synthetic(" not in figures[0].get_suptitle()


def test_paired_advantages_point_towards_the_better_model():
    from casd.study.reporting import advantages

    def variant(mae, corr):
        summary = lambda values: {"frame": {"summary": {"MAE": {"auc": {"values": values[0]}},  # noqa: E731
                                                        "Corr": {"auc": {"values": values[1]}}}},
                                  "modality": {"mean": {"MAE": {"values": values[0]}, "Corr": {"values": values[1]}}}}
        return {"aggregate": summary((mae, corr))}

    study_ = {"variants": {"casd": variant([0.5, 0.6], [0.8, 0.7]), "worse": variant([0.7, 0.7], [0.6, 0.6])}}
    np.testing.assert_allclose(advantages(study_, "casd", "MAE")["worse"]["frame AUC"], [0.2, 0.1])
    np.testing.assert_allclose(advantages(study_, "casd", "Corr")["worse"]["modality mean"], [0.2, 0.1])
