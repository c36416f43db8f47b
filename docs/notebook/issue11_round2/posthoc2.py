"""2-fold post-hoc recalibration check on validation: fit the uncertainty head on one half, evaluate on
the other, both ways; prints held-out testlike rho / MAE at several epochs. posthoc2.py LR L2SP RUN..."""
import sys, json, copy
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from casd.checkpoint import load_model, recorded_synthetic
from casd.data import (generate_synthetic, split_from_mmsa, apply_condition, make_loader, batch_to,
                       TrainingMissingness, SplitDataset)
from casd.evaluate import validation_conditions
from casd.metrics import spearman
from casd.objective import component_losses, mixed
lr, l2sp = float(sys.argv[1]), float(sys.argv[2])
CHECK = (0, 10, 20, 30, 40)

def evaluate(m, split, conds, rows, cache):
    res = {"frame": [], "mod": [], "mae": []}
    for c in conds:
        if c.name not in cache:
            deg, present = apply_condition(split, c)
            cache[c.name] = batch_to(next(iter(make_loader(deg, split.num_samples, shuffle=False, present=present))), "cpu")
        with torch.no_grad():
            pred = m.predict(cache[c.name])
        y = np.asarray(split.labels, np.float64); err = np.abs(pred.output.numpy() - y)[rows]
        res["frame" if c.protocol == "frame" else "mod"].append(spearman(pred.uncertainty.numpy()[rows], err))
        res["mae"].append(err.mean())
    fr, mo = np.mean(res["frame"]), np.mean(res["mod"])
    return np.array([(10 * fr + 7 * mo) / 17, fr, mo, np.mean(res["mae"])])

for run in map(Path, sys.argv[3:]):
    model, ck = load_model(run / "best.pt")
    syn = recorded_synthetic(ck["metadata"]); cfg = json.loads((run / "config.json").read_text())
    split = split_from_mmsa(generate_synthetic(syn)["valid"]); n = split.num_samples
    conds = validation_conditions(cfg["evaluation"]["seed"]); cache = {}
    speaker = np.array([str(i).split("$_$")[0] for i in split.ids]); names = np.unique(speaker)
    chosen = set(np.random.default_rng(0).permutation(names)[: len(names) // 2])
    first = np.array([s in chosen for s in speaker]); halves = [np.flatnonzero(first), np.flatnonzero(~first)]
    table = {e: [] for e in CHECK}
    for fit, held in ((0, 1), (1, 0)):
        cal = copy.deepcopy(model); cal.eval()
        params = [*cal.head.log_sigma.parameters(), *cal.head.nu_raw.parameters(), cal.error_log_scale]
        init = [p.detach().clone() for p in params]
        for p in cal.parameters(): p.requires_grad_(False)
        for p in params: p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        data = SplitDataset(split.subset(halves[fit])); miss = TrainingMissingness("mixed", 0.9)
        gen = torch.Generator().manual_seed(0)
        table[0].append(evaluate(cal, split, conds, halves[held], cache))
        for epoch in range(1, max(CHECK) + 1):
            for batch in make_loader(data, 64, shuffle=True, generator=gen):
                loss = 0
                for view in (batch, miss.apply(batch, gen)):
                    mix = cal(view)
                    with torch.no_grad():
                        outputs = cal.predictor(mix.mu).unsqueeze(2)
                    avail = torch.isfinite(mix.log_pi)
                    w = torch.where(avail, -torch.log(avail.sum(-1, keepdim=True).float()), float("-inf"))
                    loss = loss + mixed(component_losses(outputs, view["labels"], "regression", cal.error_log_scale_of(mix)), w).mean()
                if l2sp:
                    loss = loss + l2sp * sum(((p - q) ** 2).sum() for p, q in zip(params, init))
                opt.zero_grad(); loss.backward(); opt.step()
            if epoch in CHECK:
                table[epoch].append(evaluate(cal, split, conds, halves[held], cache))
    print(run, f"lr {lr} l2sp {l2sp}")
    for e in CHECK:
        a = np.mean(table[e], 0)
        print(f"  epoch {e:3d} held-out testlike {a[0]:+.3f} frame {a[1]:+.3f} mod {a[2]:+.3f} MAE {a[3]:.4f}")
