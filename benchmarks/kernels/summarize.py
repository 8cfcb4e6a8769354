"""Print Markdown tables (time p50 and peak extra memory per provider) from bench_*.py CSVs.

    python benchmarks/kernels/summarize.py benchmarks/kernels/results/entropy_cpu-*.csv

"ratio" columns are provider_time / weakstrong_time (> 1: weakstrong faster); "mem %" is weakstrong's peak
extra memory as a percentage of one logits tensor (tokens x V x element size; for the linear kernels the
logits that eager materialises).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

ELEM = {"fp32": 4, "bf16": 2, "fp16": 2}


def _f(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def tables(path):
    rows = list(csv.DictReader(open(path)))
    if not rows:
        return ""
    data = defaultdict(dict)  # (kernel, mode, V, H, dtype, x) -> {(provider, metric): p50}
    provs = defaultdict(list)
    for r in rows:
        key = (r["kernel"], r["mode"], int(r["V"]), r["H"], r["dtype"], int(r["x_value"]))
        data[key][(r["provider"], r["metric"])] = _f(r["p50"])
        if r["provider"] not in provs[r["kernel"]]:
            provs[r["kernel"]].append(r["provider"])
    out = [f"Source: `{path}` ({rows[0]['device_name']}, torch {rows[0]['torch_version']}, {rows[0]['extra']})", ""]
    groups = defaultdict(list)
    for key in sorted(data):
        groups[key[:5]].append(key)
    for (kernel, mode, v, h, dt), keys in groups.items():
        names = provs[kernel]
        others = [n for n in names if n != "weakstrong"]
        hdr = f"**{kernel}** `{mode}` V={v}" + (f" H={h}" if h else "") + f" {dt}"
        out.append(hdr)
        out.append("")
        cols = ["tokens"] + [f"{n} ms" for n in names] + [f"{n}/ws" for n in others]
        cols += [f"{n} MiB" for n in names] + ["ws mem % logits"]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for key in keys:
            x = key[5]
            d = data[key]
            t = {n: d.get((n, "time"), float("nan")) for n in names}
            m = {n: d.get((n, "memory"), float("nan")) for n in names}
            logits_mib = x * v * ELEM.get(dt, 4) / 2**20
            cells = [str(x)] + [f"{t[n]:.1f}" for n in names]
            cells += [f"{t[n] / t['weakstrong']:.2f}" if t.get("weakstrong") else "n/a" for n in others]
            cells += [f"{m[n]:.1f}" for n in names]
            cells.append(f"{100 * m.get('weakstrong', float('nan')) / logits_mib:.1f}%")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(tables(p))
