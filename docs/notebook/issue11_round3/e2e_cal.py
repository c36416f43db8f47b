import sys
from dataclasses import replace
from casd import train
from casd.flags import config_from_argv
SMALL = ["--synthetic-samples", "600", "150", "300", "--epochs", "8", "--hidden", "32", "--heads", "2",
         "--embed-dim", "16", "--lr", "3e-3", "--batch-size", "32", "--no-progress", "--threads", "1"]
seed, extra = sys.argv[1], sys.argv[2:]
config = config_from_argv([*SMALL, "--seed", seed, *extra, "--out", f"/tmp/e2e_{seed}_{'_'.join(extra) or 'default'}", "--overwrite"])
config = replace(config, data=replace(config.data, synthetic=replace(config.data.synthetic, noise_dof=1.0, annotator_noise=0.1)))
r = train.run(config)
s = r["uncertainty"]["summary"]
print(seed, extra, "rho", round(s["model"]["spearman"], 3), "pooled", round(s["model"]["pooled_spearman"], 3), "half", round(s["model"]["confident_half_ratio"], 3),
      "oracle", round(s["oracle"]["spearman"], 3), "rises", s["frame_trend"]["ubar_rises"], "Corr0", round(r["test"]["frame"]["metrics"]["Corr"][0], 3), "MAEauc", round(r["test"]["frame"]["summary"]["MAE"]["auc"], 4))
