"""Summarise saved benchmark runs: speed-ups, memory ratios, bandwidth, targets, and a plot.

    python -m pytest benchmarks/ --benchmark-only --benchmark-json BENCH.json
    python -m benchmarks.report BENCH.json [MORE.json ...] [--out DIR] [--timing wall|device] [--short]

Writes DIR/summary.md and DIR/speedups.png (DIR defaults to the first JSON's folder) and prints
the markdown. Speed-up = baseline time / fused time (>1: the fused kernels are faster); memory
ratio = baseline peak extra memory / fused peak extra memory (>1: the fused kernels are leaner).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cases import FUSED_PROVIDERS, MODES, OPS, PROVIDERS, TARGET_SHAPE

__all__ = ["load_records", "render_markdown", "plot_speedups", "counts_table", "Targets", "main"]


@dataclass(frozen=True)
class Targets:
    """Performance targets, stated for an H100-class GPU at the target shape (cases.TARGET_SHAPE)."""

    fwd_bwd_vs_compile: float = 2.0
    fwd_bwd_vs_eager: float = 5.0
    fwd_bandwidth_fraction: float = 0.80
    e2e_throughput_ratio: float = 1.3
    e2e_config: str = "target"


# --- loading ------------------------------------------------------------------------------------

def load_records(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Flatten pytest-benchmark JSON files into records (extra_info + timings) and run infos."""
    records, runs = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs.append({"file": str(path), "datetime": data.get("datetime"), **data.get("machine_info", {}).get("casd", {})})
        for bench in data.get("benchmarks", []):
            info = dict(bench.get("extra_info", {}))
            if "kind" not in info:
                continue  # not one of ours
            info["name"] = bench["name"]
            info["wall_ms"] = bench["stats"]["median"] * 1e3
            info["rounds"] = bench["stats"]["rounds"]
            records.append(info)
    return records, runs


def _time_ms(record: dict, timing: str) -> float | None:
    if timing == "device" and record.get("device_ms") is not None:
        return record["device_ms"]
    return record.get("wall_ms")


def _shape_id(r: dict) -> str:
    return f"B{r['B']}-K{r['K']}-S{r['S']}-D{r['D']}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _fmt(value: float | None, spec: str = ".3g", suffix: str = "") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def _mb(nbytes: int | None) -> str:
    return _fmt(None if nbytes is None else nbytes / 2**20, ".1f")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# --- op tables -----------------------------------------------------------------------------------

def op_groups(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(op, mode, dtype, shape) -> {provider: record}, in sweep order."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["kind"] == "op":
            groups.setdefault((r["op"], r["mode"], r["dtype"], _shape_id(r)), {})[r["provider"]] = r
    order = {op: i for i, op in enumerate(OPS)}
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), MODES.index(kv[0][1]), kv[0][2])))


def op_tables(records: list[dict], timing: str) -> list[str]:
    lines = []
    groups = op_groups(records)
    for op in OPS:
        mine = {key: providers for key, providers in groups.items() if key[0] == op}
        if not mine:
            continue
        lines += ["", f"### {op}", "", f"Time per call in ms ({timing}); speed-up = baseline / fused. "
                  "triton: the fused op eagerly; triton-compile: under torch.compile(fullgraph=True); "
                  "triton-graph: replayed from a CUDA graph.", ""]
        rows = []
        for (_, mode, dtype, shape), p in mine.items():
            t = {name: _time_ms(p[name], timing) if name in p else None for name in PROVIDERS}
            fused = [t[n] for n in FUSED_PROVIDERS if t[n] is not None]
            best = min(fused) if fused else None
            rows.append([
                mode, dtype, shape, *(_fmt(t[n]) for n in PROVIDERS),
                _fmt(_ratio(t["eager"], t["triton"]), ".2f", "x"),
                _fmt(_ratio(t["compile"], t["triton"]), ".2f", "x"),
                _fmt(_ratio(t["compile"], best), ".2f", "x"),
                _fmt(_ratio(t["eager"], t["compile"]), ".2f", "x"),
            ])
        lines += _table(["mode", "dtype", "shape", *PROVIDERS, "triton vs eager", "triton vs compile",
                         "best fused vs compile", "compile vs eager"], rows)
        lines += ["", "Peak extra memory in MB (ratio = baseline / triton), achieved bandwidth of the "
                      "ideal single pass as % of the measured copy bandwidth, first-call seconds.", ""]
        rows = []
        for (_, mode, dtype, shape), p in mine.items():
            mem = {name: p[name].get("peak_extra_bytes") if name in p else None for name in ("eager", "compile", "triton")}
            bw = {name: p[name].get("bandwidth_fraction") if name in p else None for name in PROVIDERS}
            first = {name: p[name].get("first_call_s") if name in p else None for name in PROVIDERS}
            rows.append([
                mode, dtype, shape,
                " / ".join(_mb(mem[n]) for n in ("eager", "compile", "triton")),
                _fmt(_ratio(mem["eager"], mem["triton"]), ".1f", "x"),
                _fmt(_ratio(mem["compile"], mem["triton"]), ".1f", "x"),
                " / ".join(_fmt(None if bw[n] is None else 100 * bw[n], ".0f", "%") for n in PROVIDERS),
                _fmt(first["compile"], ".1f"), _fmt(first["triton"], ".2f"), _fmt(first["triton-compile"], ".1f"),
            ])
        lines += _table(["mode", "dtype", "shape", "peak MB eager / compile / triton", "mem eager/triton",
                         "mem compile/triton", "bandwidth " + " / ".join(PROVIDERS), "compile s",
                         "triton first call s", "triton-compile s"], rows)
    return lines


# --- launches and syncs --------------------------------------------------------------------------

def counts_table(rows: list[dict]) -> list[str]:
    """Markdown: one line per (what, direction), reference and fused side by side."""
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["what"], r["direction"]), {})[r["provider"]] = r

    def fmt(r):
        return "–" if r is None else f"{r['device_ops']} ops / {r['triton_launches']} launches / {r['host_syncs']} syncs"

    lines = ["| call | direction | reference | fused (backend=\"triton\") |", "|---|---|---|---|"]
    for (what, direction), by in cells.items():
        lines.append(f"| {what} | {direction} | {fmt(by.get('reference'))} | {fmt(by.get('fused'))} |")
    return lines


def counts_lines(records: list[dict]) -> list[str]:
    """The launches/syncs table of benchmarks/test_bench_counts.py, from the JSON."""
    rows = [row for r in records if r["kind"] == "counts" for row in r.get("rows", [])]
    if not rows:
        return []
    modes = sorted({r.get("triton_mode", "?") for r in records if r["kind"] == "counts"})
    return ["", "## Device operations / Triton launches / host syncs per call", "",
            f"Counted with `casd.kernels.op_count.OpCounter` (fused kernels {', '.join(modes)}; the "
            "counts do not depend on shape or device).", ""] + counts_table(rows)


# --- end to end ----------------------------------------------------------------------------------

def e2e_groups(records: list[dict]) -> dict[str, dict[str, dict]]:
    groups: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["kind"] == "e2e":
            groups.setdefault(r["config"], {})[r["provider"]] = r
    return groups


def e2e_table(records: list[dict], targets: Targets) -> list[str]:
    groups = e2e_groups(records)
    if not groups:
        return []
    rows = []
    for config, p in groups.items():
        reference = p.get("reference")
        for provider in ("reference", "fused"):
            r = p.get(provider)
            if r is None:
                continue
            ratio = _ratio(r["steps_per_s"], reference["steps_per_s"]) if reference and provider == "fused" else None
            rows.append([
                config, provider, f"B={r['batch']} (2B={r['rows_per_step']}) D={r['embed_dim']} S={r['num_samples']}",
                r.get("autocast", "?"), _fmt(r["steps_per_s"], ".2f"), _fmt(r["samples_per_s"], ".0f"),
                _mb(r.get("peak_extra_bytes")), _fmt(ratio, ".2f", "x"),
                f">= {targets.e2e_throughput_ratio}x" if provider == "fused" and config == targets.e2e_config else "",
            ])
    return ["", "## End-to-end training step", ""] + _table(
        ["config", "provider", "rows", "autocast", "steps/s", "samples/s", "peak MB", "fused / reference", "target"],
        rows,
    )


# --- targets -------------------------------------------------------------------------------------

def _status(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= target else "**MISSED**"


def targets_table(records: list[dict], runs: list[dict], targets: Targets, timing: str) -> list[str]:
    on_gpu = any(r.get("device", "").startswith("cuda") for r in records)
    target_id = f"B{TARGET_SHAPE.B}-K{TARGET_SHAPE.K}-S{TARGET_SHAPE.S}-D{TARGET_SHAPE.D}"
    lines = ["", f"## Targets (H100-class GPU; ops at {target_id}; timing: {timing})", ""]
    if not on_gpu:
        lines.append("No GPU measurements in these files: every target below is *not measured*. "
                     "The targets are stated for an H100-class GPU.")
        lines.append("")
    rows = []
    groups = op_groups(records)
    dtypes = sorted({key[2] for key in groups if key[3] == target_id}) or ["fp32"]
    for op in OPS:
        for dtype in dtypes:
            fb = groups.get((op, "fwd+bwd", dtype, target_id), {})
            fwd = groups.get((op, "fwd", dtype, target_id), {})
            t = {n: _time_ms(fb[n], timing) if n in fb and on_gpu else None for n in ("eager", "compile", "triton")}
            vs_compile, vs_eager = _ratio(t["compile"], t["triton"]), _ratio(t["eager"], t["triton"])
            bw = fwd["triton"].get("bandwidth_fraction") if "triton" in fwd and on_gpu else None
            rows.append([f"{op} fwd+bwd {dtype}: triton vs compile", _fmt(vs_compile, ".2f", "x"),
                         f">= {targets.fwd_bwd_vs_compile}x", _status(vs_compile, targets.fwd_bwd_vs_compile)])
            rows.append([f"{op} fwd+bwd {dtype}: triton vs eager", _fmt(vs_eager, ".2f", "x"),
                         f">= {targets.fwd_bwd_vs_eager}x", _status(vs_eager, targets.fwd_bwd_vs_eager)])
            rows.append([f"{op} fwd {dtype}: triton bandwidth / copy", _fmt(None if bw is None else 100 * bw, ".0f", "%"),
                         f">= {100 * targets.fwd_bandwidth_fraction:.0f}%", _status(bw, targets.fwd_bandwidth_fraction)])
    e2e = e2e_groups(records).get(targets.e2e_config, {})
    ratio = None
    if on_gpu and "fused" in e2e and "reference" in e2e:
        ratio = _ratio(e2e["fused"]["steps_per_s"], e2e["reference"]["steps_per_s"])
    rows.append([f"e2e '{targets.e2e_config}' bf16 step: fused vs reference throughput", _fmt(ratio, ".2f", "x"),
                 f">= {targets.e2e_throughput_ratio}x", _status(ratio, targets.e2e_throughput_ratio)])
    return lines + _table(["check", "measured", "target", "status"], rows)


# --- the whole page ----------------------------------------------------------------------------

def _triton_status(run: dict) -> str:
    if run.get("triton_unavailable"):
        return "triton unavailable: " + run["triton_unavailable"].split(":")[0]
    return f"triton {run.get('triton_mode', 'compiled')}"


def run_lines(runs: list[dict]) -> list[str]:
    lines = ["", "## Runs", ""]
    rows = []
    for run in runs:
        rows.append([
            Path(run["file"]).name, str(run.get("datetime", "?"))[:19], str(run.get("device", "?")),
            f"torch {run.get('torch', '?')}, triton {run.get('triton', '?')}",
            _fmt(run.get("copy_gbps"), ".0f", " GB/s"), str(run.get("sweep", "?")),
            _fmt(run.get("inductor_startup_s"), ".1f"),
            _triton_status(run),
        ])
    return lines + _table(["file", "date (UTC)", "device", "versions", "copy bandwidth", "sweep",
                                "Inductor start-up s", "triton"], rows)


def render_markdown(records: list[dict], runs: list[dict], timing: str, targets: Targets = Targets(),
                    short: bool = False) -> str:
    lines = ["# CASD benchmark summary"]
    lines += run_lines(runs)
    lines += targets_table(records, runs, targets, timing)
    lines += counts_lines(records)
    lines += e2e_table(records, targets)
    if not short:
        lines += ["", "## Operations"]
        lines += op_tables(records, timing)
        lines += ["", "Time: pytest-benchmark's median wall time of one synchronised call (`--timing wall`) "
                      "or the CUDA-event device time of back-to-back calls (`--timing device`). "
                      "Bandwidth always uses the device time. 'compile s' is the first call of the "
                      "torch.compile provider (its compile time) in a fresh cache."]
    return "\n".join(lines) + "\n"


def plot_speedups(records: list[dict], path: Path, timing: str, title: str = "") -> bool:
    """Bar chart per op: speed-up over eager of torch.compile and of the fused kernels (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = op_groups(records)
    ops = [op for op in OPS if any(key[0] == op for key in groups)]
    if not ops:
        return False
    fig, axes = plt.subplots(len(ops), 1, figsize=(max(8, 0.6 * len(groups) / len(ops) + 4), 3.2 * len(ops)),
                             squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        keys = [key for key in groups if key[0] == op]
        labels = [f"{mode} {dtype}\n{shape}" for _, mode, dtype, shape in keys]
        for offset, provider, colour in ((-0.2, "compile", "tab:orange"), (0.2, "triton", "tab:green")):
            values = []
            for key in keys:
                p = groups[key]
                eager = _time_ms(p["eager"], timing) if "eager" in p else None
                mine = _time_ms(p[provider], timing) if provider in p else None
                values.append(_ratio(eager, mine))
            if any(v is not None for v in values):
                bars = ax.bar([i + offset for i in range(len(keys))], [math.nan if v is None else v for v in values],
                              width=0.4, label=f"{provider} vs eager", color=colour)
                ax.bar_label(bars, labels=["" if v is None else f"{v:.3g}x" for v in values], fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("speed-up over eager")
        ax.set_title(op)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON file(s) (--benchmark-json)")
    parser.add_argument("--out", type=Path, default=None, help="folder for summary.md and speedups.png")
    parser.add_argument("--timing", choices=("wall", "device"), default="wall",
                        help="which time the speed-ups use (default: wall, pytest-benchmark's median)")
    parser.add_argument("--short", action="store_true", help="print only the runs, targets and end-to-end tables")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.json if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    records, runs = load_records(args.json)
    if not records:
        print(f"no casd benchmark records in {', '.join(map(str, args.json))}", file=sys.stderr)
        return 1
    out = args.out or args.json[0].parent
    out.mkdir(parents=True, exist_ok=True)
    full = render_markdown(records, runs, args.timing)
    (out / "summary.md").write_text(full)
    devices = sorted({f"{run.get('device', '?')}, {_triton_status(run)}" for run in runs})
    plotted = plot_speedups(records, out / "speedups.png", args.timing,
                            title=f"{'; '.join(devices)} ({args.timing} time)")
    print(render_markdown(records, runs, args.timing, short=True) if args.short else full)
    print(f"wrote {out / 'summary.md'}" + (f" and {out / 'speedups.png'}" if plotted else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
