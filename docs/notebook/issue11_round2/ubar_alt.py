"""Validation diagnostic: which per-sample score ranks |error| best (mean Spearman over conditions)."""
import sys, json
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from casd.checkpoint import load_model, recorded_synthetic
from casd.data import generate_synthetic, split_from_mmsa, apply_condition, make_loader, batch_to
from casd.data.oracle import oracle_variance
from casd.evaluate import validation_conditions, test_conditions
from casd.metrics import spearman
from casd.uncertainty_metrics import confident_fraction_ratio

split_name = sys.argv[1]
table = {}
for run in map(Path, sys.argv[2:]):
    model, ck = load_model(run / "best.pt")
    syn = recorded_synthetic(ck["metadata"])
    cfg = json.loads((run / "config.json").read_text())
    eval_seed = cfg["evaluation"]["seed"]
    raw = generate_synthetic(syn)[split_name]; split = split_from_mmsa(raw)
    conds = validation_conditions(eval_seed) if split_name == "valid" else test_conditions(eval_seed)
    for c in conds:
        deg, present = apply_condition(split, c)
        batch = batch_to(next(iter(make_loader(deg, deg.num_samples, shuffle=False, present=present))), "cpu")
        with torch.no_grad():
            mix = model(batch); pred = model.predict_from_mixture(mix)
            f = model.predictor(mix.mu).float().squeeze(-1)
            u = mix.component_uncertainty(); pi = mix.weights
        y = torch.as_tensor(split.labels).float(); err = (pred.output - y).abs().numpy()
        c0 = float(model.error_log_scale)
        b = torch.where(pi > 0, (u + c0).exp(), torch.zeros_like(u))
        dev = (f - pred.output[:, None]).abs()
        scores = {
            "ubar": pred.uncertainty.numpy(),
            "log_sum_pi_b": torch.log((pi * b).sum(1)).numpy(),
            "pred_mad": torch.log((pi * (b + dev)).sum(1)).numpy(),
            "disagree": (pi * dev).sum(1).numpy(),
            "u_argmax": u.gather(1, pi.argmax(1, keepdim=True)).squeeze(1).numpy(),
            "oracle": oracle_variance(raw, syn, c),
        }
        for k, v in scores.items():
            table.setdefault(k, []).append((spearman(v, err), confident_fraction_ratio(v, err)))
for k, v in table.items():
    a = np.array(v)
    print(f"{k:14s} rho {a[:,0].mean():+.3f}  half {a[:,1].mean():.3f}  n={len(a)}")
