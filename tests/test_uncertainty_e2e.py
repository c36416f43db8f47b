"""End to end: the default design learns, and its uncertainty ubar ranks its errors (issue 11)."""
from dataclasses import replace

import pytest

from casd import train
from casd.flags import config_from_argv

SMALL = ["--synthetic-samples", "600", "150", "300", "--epochs", "8", "--hidden", "32", "--heads", "2",
         "--embed-dim", "16", "--lr", "3e-3", "--batch-size", "32", "--no-progress", "--threads", "1"]


@pytest.mark.slow
def test_default_design_learns_and_its_uncertainty_ranks_the_errors(tmp_path):
    """~25 s. Annotator noise 0.1 (default 0.6) and heavier-tailed noise scales (noise_dof 1, default 2)
    make per-sample reliability, which the model can see, the main source of error, so 8 short
    epochs are enough for a clear signal. Measured on seeds 1111/1112: mean Spearman 0.054/0.072
    (positive in 16/17 and 14/17 conditions), pooled 0.073/0.128; the oracle on the same errors
    0.133/0.161. An uninformative ubar gives ~0 +- 0.015 for the mean (17 x 300 samples)."""
    # Without the held-out calibration: on this small validation split (150 samples) after 8 short
    # epochs, which have not memorised the training labels, refitting u on validation made the
    # ranking worse (mean Spearman -0.037, against 0.085 without it; -0.025 with confidence task
    # weights): a known limit of casd.calibration, documented in formulation §4.
    config = config_from_argv([*SMALL, "--calibration-epochs", "0", "--out", str(tmp_path / "run")])
    config = replace(config, data=replace(config.data, synthetic=replace(config.data.synthetic, noise_dof=1.0,
                                                                           annotator_noise=0.1)))
    report = train.run(config)
    # learning happened
    assert report["test"]["frame"]["metrics"]["Corr"][0] > 0.6
    assert report["history"][-1]["train_task_teacher"] < report["history"][0]["train_task_teacher"] - 0.3
    # ubar ranks the errors, within conditions and over all of them (whether mean ubar rises with the
    # frame rate is not yet settled after 8 short epochs: it did on seed 1112, not on 1111)
    summary = report["uncertainty"]["summary"]
    assert summary["model"]["spearman"] > 0.02, summary["model"]
    assert summary["model"]["pooled_spearman"] > 0.04, summary["model"]
    assert summary["model"]["confident_half_ratio"] < 1.0
    # the oracle's figures ride along on synthetic data, condition by condition
    assert summary["oracle"]["spearman"] > 0.05
    assert set(report["uncertainty"]["conditions"]["frame_0.5"]) == {"model", "oracle"}
