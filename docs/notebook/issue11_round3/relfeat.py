"""Could a low-capacity map of input-reliability statistics (fit on validation) rank test errors?
Features per sample: ubar, and per modality (present, kept fraction of valid frames, mean log frame RMS of kept frames)."""
import sys, json
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from casd.checkpoint import load_model, recorded_synthetic
from casd.data import generate_synthetic, split_from_mmsa, apply_condition, make_loader, batch_to
from casd.data.missing import condition_keep_masks
from casd.data.oracle import oracle_variance
from casd.evaluate import validation_conditions, test_conditions
from casd.metrics import spearman
from casd.modalities import MODALITIES

def feats(split, deg, cond, u):
    keep = condition_keep_masks(split, cond)
    cols = [np.log(u)]
    for m, k in zip(MODALITIES, keep):
        x = getattr(deg, m)  # [N, L, F]
        rms = np.sqrt((x.astype(np.float64) ** 2).mean(-1) + 1e-12)
        n = k.sum(1)
        valid_len = np.asarray(getattr(split, f"{m}_lengths"))
        frac = n / np.maximum(valid_len, 1)
        lr = np.where(n > 0, (np.log(rms) * k).sum(1) / np.maximum(n, 1), 0.0)
        p = (n > 0).astype(float)
        cols += [p, frac, lr * p, 1.0 / np.sqrt(np.maximum(n, 1)) * p]
    return np.stack(cols, 1)

def collect(run, which):
    model, ck = load_model(run / "best.pt"); syn = recorded_synthetic(ck["metadata"])
    cfg = json.loads((run / "config.json").read_text()); seed = cfg["evaluation"]["seed"]
    raw = generate_synthetic(syn)[which]; split = split_from_mmsa(raw)
    conds = validation_conditions(seed) if which == "valid" else test_conditions(seed)
    out = []
    for c in conds:
        deg, present = apply_condition(split, c)
        batch = batch_to(next(iter(make_loader(deg, deg.num_samples, shuffle=False, present=present))), "cpu")
        with torch.no_grad():
            pred = model.predict(batch)
        y = np.asarray(split.labels, np.float64); err = np.abs(pred.output.numpy() - y)
        u = pred.uncertainty.numpy().astype(np.float64)
        out.append((c, feats(split, deg, c, u), err, oracle_variance(raw, syn, c)))
    return out

for run in map(Path, sys.argv[1:]):
    va, te = collect(run, "valid"), collect(run, "test")
    X = np.concatenate([f for _, f, _, _ in va]); e = np.concatenate([e for _, _, e, _ in va])
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = np.c_[np.ones(len(X)), (X - mu) / sd]
    for lam in (1.0, 10.0, 100.0):
        for target in ("abs", "log"):
            t = e if target == "abs" else np.log(e + 0.05)
            w = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ t)
            rs, rm, ro = [], [], []
            for c, f, err, orc in te:
                s = np.c_[np.ones(len(f)), (f - mu) / sd] @ w
                rs.append(spearman(s, err)); rm.append(spearman(f[:, 0], err)); ro.append(spearman(orc, err))
            print(f"{run.name} lam {lam:5.0f} {target}: test rho fit {np.mean(rs):.3f}  model {np.mean(rm):.3f}  oracle {np.mean(ro):.3f}")
