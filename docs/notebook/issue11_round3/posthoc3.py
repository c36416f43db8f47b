"""2-fold (speaker-disjoint halves of validation) check of calibration designs:
  heads: refit log-sigma/nu heads + c (current)      rel: a reliability shift delta_k(r) on log sigma + c
  both : heads + delta + c
posthoc3.py MODE LR RUN...   prints held-out testlike rho / MAE at several epochs."""
import sys, json, copy
from pathlib import Path
import numpy as np, torch
from torch import nn
torch.set_num_threads(1)
from casd.checkpoint import load_model, recorded_synthetic
from casd.data import (generate_synthetic, split_from_mmsa, apply_condition, make_loader, batch_to,
                       TrainingMissingness, SplitDataset)
from casd.encoders import length_mask, log_frame_scale
from casd.evaluate import validation_conditions
from casd.metrics import spearman
from casd.modalities import MODALITIES, component_availability, combination_membership
from casd.objective import component_losses, mixed
mode, lr = sys.argv[1], float(sys.argv[2])
CHECK = (0, 5, 10, 20, 40)

def stats(batch):
    out = []
    for m in MODALITIES:
        x = batch[m]; valid = length_mask(batch[f"{m}_lengths"], x.shape[1])
        kept = valid & (x.abs().amax(-1) > 0)
        n = kept.sum(1).float(); L = batch[f"{m}_lengths"].clamp(min=1).float()
        ls = log_frame_scale(x).squeeze(-1)
        mls = (ls * kept).sum(1) / n.clamp(min=1)
        inv = torch.where(n > 0, n.clamp(min=1).rsqrt(), torch.zeros_like(n))
        out.append(torch.stack([n / L, mls, inv], -1))
    return torch.stack(out, 1)  # [B, 3, 3]

class Rel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(7, 3, 3)); self.bias = nn.Parameter(torch.zeros(7))
        self.register_buffer("member", combination_membership("cpu").float())
    def forward(self, batch):
        return self.bias + torch.einsum("bms,kms->bk", stats(batch), self.weight * self.member[:, :, None])

def attach(model):
    model.rel = Rel()
    def fwd(batch):
        g = model.combine(model.modality_vectors(batch))
        mu, log_sigma, nu = model.head(g)
        log_sigma = log_sigma + model.rel(batch).unsqueeze(-1)
        available = component_availability(batch["present"])
        return model.mixture(mu, log_sigma, nu, available)
    model.forward = fwd
    return model

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
        cal = attach(copy.deepcopy(model)); cal.eval()
        params = [cal.error_log_scale]
        if mode in ("heads", "both"):
            params += [*cal.head.log_sigma.parameters(), *cal.head.nu_raw.parameters()]
        if mode in ("rel", "both"):
            params += list(cal.rel.parameters())
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
                opt.zero_grad(); loss.backward(); opt.step()
            if epoch in CHECK:
                table[epoch].append(evaluate(cal, split, conds, halves[held], cache))
    print(run, f"mode {mode} lr {lr}", flush=True)
    for e in CHECK:
        a = np.mean(table[e], 0)
        print(f"  epoch {e:3d} held-out testlike {a[0]:+.3f} frame {a[1]:+.3f} mod {a[2]:+.3f} MAE {a[3]:.4f}", flush=True)
