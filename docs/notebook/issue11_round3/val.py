"""Validation summary per run: rho(ubar,|err|), oracle rho, ratio, half, MAE mean, rho at frame_0.0."""
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
split_name = "valid"
args = sys.argv[1:]
if args and args[0] in ("valid", "test"):
    split_name, args = args[0], args[1:]
rows = []
for run in map(Path, args):
    model, ck = load_model(run / "best.pt")
    syn = recorded_synthetic(ck["metadata"])
    cfg = json.loads((run / "config.json").read_text())
    eval_seed = cfg["evaluation"]["seed"]
    raw = generate_synthetic(syn)[split_name]; split = split_from_mmsa(raw)
    conds = validation_conditions(eval_seed) if split_name == "valid" else test_conditions(eval_seed)
    r = {"rho": [], "orc": [], "half": [], "mae": [], "frame": [], "mod": []}
    for c in conds:
        deg, present = apply_condition(split, c)
        batch = batch_to(next(iter(make_loader(deg, deg.num_samples, shuffle=False, present=present))), "cpu")
        with torch.no_grad():
            pred = model.predict(batch)
        y = np.asarray(split.labels, dtype=np.float64); err = np.abs(pred.output.numpy() - y)
        u = pred.uncertainty.numpy()
        r["rho"].append(spearman(u, err)); r["orc"].append(spearman(oracle_variance(raw, syn, c), err))
        r["half"].append(confident_fraction_ratio(u, err)); r["mae"].append(err.mean())
        (r["frame"] if c.protocol == "frame" else r["mod"]).append((c.name, spearman(u, err)))
        r.setdefault("fmae" if c.protocol == "frame" else "mmae", []).append(err.mean())
    m = {k: float(np.mean(v)) for k, v in r.items() if k not in ("frame", "mod")}
    mae_split = f"fMAE {m['fmae']:.4f} mMAE {m['mmae']:.4f}"
    f0 = dict(r["frame"]).get("frame_0.0")
    fr = np.mean([v for _, v in r["frame"]]); mo = np.mean([v for _, v in r["mod"]])
    m["tl"] = (10 * fr + 7 * mo) / 17
    print(f"{str(run):45s} rho {m['rho']:+.3f} orc {m['orc']:.3f} ratio {m['rho']/m['orc']:.2f} half {m['half']:.3f} "
          f"MAE {m['mae']:.4f} {mae_split} | testlike {m['tl']:+.3f} frame {fr:+.3f} mod {mo:+.3f} | rho@f0 {f0:+.3f} | " + " ".join(f"{n.split('_')[1]}:{v:+.2f}" for n, v in r["frame"] + r["mod"]))
