import sys, json
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from casd.checkpoint import load_model, recorded_synthetic
from casd.data import generate_synthetic, split_from_mmsa, apply_condition, make_loader, batch_to
from casd.data.oracle import oracle_variance
from casd.evaluate import validation_conditions
from casd.metrics import spearman
run = Path(sys.argv[1]); cname = sys.argv[2] if len(sys.argv) > 2 else "frame_0.0"
model, ck = load_model(run / "best.pt")
syn = recorded_synthetic(ck["metadata"])
cfg = json.loads((run / "config.json").read_text())
SPLIT = sys.argv[3] if len(sys.argv) > 3 else "valid"; raw = generate_synthetic(syn)[SPLIT]; split = split_from_mmsa(raw)
c = {c.name: c for c in validation_conditions(cfg["evaluation"]["seed"])}[cname]
deg, present = apply_condition(split, c)
batch = batch_to(next(iter(make_loader(deg, deg.num_samples, shuffle=False, present=present))), "cpu")
with torch.no_grad():
    mix = model(batch); pred = model.predict_from_mixture(mix)
    f = model.predictor(mix.mu).float().squeeze(-1).numpy()
    u = mix.component_uncertainty().numpy(); pi = mix.weights.numpy()
y = np.asarray(split.labels, dtype=np.float64); err = np.abs(pred.output.numpy() - y)
orc = oracle_variance(raw, syn, c)
ns = raw["noise_scale"]
print("mean pi", np.round(pi.mean(0), 2), " MAE", err.mean().round(3), " rho(oracle,err)", round(spearman(orc, err), 3))
names = ["t", "a", "v", "ta", "tv", "av", "tav"]
for k, n in enumerate(names):
    ek = np.abs(f[:, k] - y)
    print(f"{n:3s} MAE_k {ek.mean():.3f} rho(u_k,err) {spearman(u[:,k], err):+.3f} rho(u_k,err_k) {spearman(u[:,k], ek):+.3f} "
          f"rho(u_k,orc) {spearman(u[:,k], orc):+.3f} rho(orc,err_k) {spearman(orc, ek):+.3f} "
          f"rho(u_k,log sig_t) {spearman(u[:,k], ns[:,0]):+.3f} sd(u_k) {u[:,k].std():.3f}")
print("rho(noise_t, err)", round(spearman(ns[:,0], err),3), "rho(noise_a, err)", round(spearman(ns[:,1], err),3), "rho(noise_v, err)", round(spearman(ns[:,2], err),3))
print("rho(|y|, err)", round(spearman(np.abs(y), err),3), "rho(|y|,u_tav)", round(spearman(np.abs(y), u[:,6]),3))
