"""``python -m casd.study``: the robustness study, one command.

Trains every variant with every seed by the identical protocol (``casd.train``: same data,
same training missingness, model selection on the validation split only, the same recorded
test conditions), then writes, under ``--out``:

- ``<variant>/seed_<seed>/``: each run's own outputs (results.json, predictions.npz, best.pt, ...);
- ``study.json``: per-seed results and the mean and sample standard deviation over seeds of
  every metric under every condition, plus the command and environment;
- ``study.md``: a table per protocol and headline metric (frame-level sweep r = 0.0..0.9 with
  its mean and AUC; the 7 modality combinations with their mean), and paired differences;
- ``study.png`` and ``study.pdf``: each variant's metrics against the frame-level missing rate
  and the primary metric per modality combination (mean +- s.d. over seeds as dots with error
  bars), and the paired per-seed differences of every variant against full CASD;
- with ``--diagnose`` (synthetic data, regression), ``diagnostics.md``/``.json``: what the
  confidence weights of every CASD run do, on the *validation* split: how peaked they are, how
  they move under missing modalities, whether the mixture beats plain averaging, and whether
  the uncertainty tracks the noise planted in each modality.

Unknown flags are ``casd.train`` flags shared by every run (e.g. ``--epochs 10 --threads 1``, or
``--config FILE``); each variant changes its own fields of that shared config.
The study can be interrupted and rerun with the same command: finished runs are reused
(after checking they were made with the same config) and interrupted ones resumed.

Modules: ``running`` (the variants of a shared RunConfig; training, reusing or resuming each
run), ``reporting`` (statistics over seeds, study.json/.md/.png), ``diagnostics`` (the
confidence weights on the validation split), ``cli`` (this command).
"""
from casd.study.cli import main

__all__ = ["main"]
