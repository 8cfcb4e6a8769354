"""Throughput of the simulation loop and its store alone: a 200-agent run of 144 ticks a day (10-minute ticks) with
the deterministic scripted backend (no model), on SQLite and on PostgreSQL, with the time of every tick.

    python benchmarks/methods/agentsim_store.py --pg-url postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/methods/agentsim_store.py --pg-url auto        # start a private cluster (as in the tests)

Writes ``benchmarks/methods/results/agentsim_store.{json,md,png}``: per store, ticks/s and rows written per second
over the first simulated day (the throughput figures) and the whole run, the split of a tick's time (plan + write
vs the fake generation), the mean tick time per simulated day (a tick's cost must not grow from day to day: the
activity of a tick follows the hour of the day, so compare days, not ticks within one), and the tick-time curve.
``--baseline main`` adds the simulation of another git revision (SQLite) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from weakstrong.agentsim import ScriptedBackend, Simulation, SimulationConfig, open_store

OUT = Path(__file__).resolve().parent / "results"
CONFIG = dict(agents=200, days=3, ticks_per_day=144, actions_per_tick=1, episodic_every=20, semantic_every=40,
              feed_size=5, feed_window_ticks=16, posts_per_day_cap=48, seed=0)  # 10-minute ticks (Lewis: 8)


def run(store_spec, label: str) -> dict:
    cfg = SimulationConfig(**CONFIG)
    sim = Simulation(cfg, ScriptedBackend(), store_spec)
    per_tick = []

    def progress(tick, row):
        t = sim.last_timing
        per_tick.append({"tick": tick, "seconds": t["total"], "generate_s": t["generate"], "write_s": t["write"],
                         "rows": t["rows"], "active": row["active_agents"], "posts": row["posts"]})

    t0 = time.perf_counter()
    counts = sim.run(progress=progress)
    wall = time.perf_counter() - t0
    secs = np.array([p["seconds"] for p in per_tick])
    loop = secs - np.array([p["generate_s"] for p in per_tick])
    rows = sum(p["rows"] for p in per_tick)
    ticks = np.array([p["tick"] for p in per_tick], dtype=float)
    per_agent = loop / np.maximum(1, np.array([p["active"] for p in per_tick]))
    full = ticks >= cfg.feed_window_ticks  # before that the feed window is still filling

    def slope(y):  # least squares y = a + b·tick over full-window ticks, b with a normal-approximation 95% CI
        y, t = y[full], ticks[full]
        X = np.stack([np.ones_like(t), t], 1)
        coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
        sigma2 = float(res[0]) / (len(y) - 2) if len(res) else 0.0
        se = float(np.sqrt(sigma2 * np.linalg.inv(X.T @ X)[1, 1]))
        return {"per_100_ticks": 100 * coef[1], "ci95": [100 * (coef[1] - 1.96 * se), 100 * (coef[1] + 1.96 * se)],
                "mean": float(y.mean())}

    q = int(full.sum()) // 5
    loop_full = loop[full]
    tpd = cfg.ticks_per_day
    day1 = per_tick[:tpd]
    day1_s = sum(p["seconds"] for p in day1)
    return {"store": label, "ticks": len(per_tick), "wall_s": wall, "ticks_per_s": len(per_tick) / wall,
            "day1_ticks_per_s": len(day1) / day1_s, "day1_rows_per_s": sum(p["rows"] for p in day1) / day1_s,
            "ms_per_tick_by_day": [1e3 * float(loop[d * tpd:(d + 1) * tpd].mean()) for d in range(cfg.days)],
            "rows_written": rows, "rows_per_s": rows / wall, "loop_s": float(loop.sum()),
            "loop_rows_per_s": rows / float(loop.sum()), "generate_s": float(secs.sum() - loop.sum()),
            "counts": counts, "first_fifth_ms": 1e3 * float(loop_full[:q].mean()),
            "last_fifth_ms": 1e3 * float(loop_full[-q:].mean()),
            "slope_loop_s": slope(loop), "slope_loop_per_active_agent_s": slope(per_agent), "per_tick": per_tick}


BASELINE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from weakstrong.agentsim import ScriptedBackend, Simulation, SimulationConfig
sim = Simulation(SimulationConfig(**json.loads(sys.argv[2])), ScriptedBackend(), sys.argv[3])
stamps = [time.perf_counter()]
sim.run(progress=lambda tick, row: stamps.append(time.perf_counter()))
print(json.dumps([b - a for a, b in zip(stamps, stamps[1:])]))
"""


def run_baseline(ref: str) -> dict:
    """The same run with the simulation of git revision ``ref`` (e.g. ``main`` before the store rework), SQLite."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git archive {ref} weakstrong | tar -x -C {tmp}", shell=True, check=True,
                       cwd=Path(__file__).resolve().parents[2])
        proc = subprocess.run([sys.executable, "-c", BASELINE, tmp, json.dumps(CONFIG), os.path.join(tmp, "b.db")],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": tmp})
    secs = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"store": f"SQLite, simulation of {ref}", "per_tick": [
        {"tick": i, "seconds": s, "generate_s": 0.0, "active": 1} for i, s in enumerate(secs)]}


def start_cluster():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "agentsim"))
    from conftest import PostgresCluster  # the tests' private-cluster helper

    cluster = PostgresCluster(durable=True)  # fsync on, commits flushed lazily (as SQLite WAL + NORMAL)
    cluster.start()
    return cluster


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if "rows_written" not in r:  # a baseline revision: total tick time only
            axes[0].plot([p["tick"] for p in r["per_tick"]], [1e3 * p["seconds"] for p in r["per_tick"]],
                         label=f"{r['store']} (whole tick)", lw=1, ls="--", color="grey")
            continue
        t = [p["tick"] for p in r["per_tick"]]
        loop = [1e3 * (p["seconds"] - p["generate_s"]) for p in r["per_tick"]]
        axes[0].plot(t, loop, label=f"{r['store']} (plan + write)", lw=1)
        axes[1].plot(t, [v / max(1, p["active"]) for v, p in zip(loop, r["per_tick"])], label=r["store"], lw=1)
    for ax in axes:
        for d in range(1, CONFIG["days"]):
            ax.axvline(d * CONFIG["ticks_per_day"], color="k", lw=0.5, ls=":")
    axes[0].set(xlabel="tick (dotted: day boundaries)", ylabel="ms per tick (without the fake generation)",
                title=f"200 agents, {CONFIG['days']} days of 144 ticks: time per tick")
    axes[1].set(xlabel="tick", ylabel="ms per active agent", title="the same, per active agent (activity varies by hour)")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results) -> str:
    days = CONFIG["days"]
    lines = ["| store | day 1: ticks/s | day 1: rows/s | all: ticks | wall s | rows written | rows/s | plan+write s | "
             "write s (transactions) | rows/s in write | " + " | ".join(f"day {d + 1} ms/tick" for d in range(days))
             + " |", "|---" * (10 + days) + "|"]
    for r in results:
        if "rows_written" not in r:
            continue
        write = sum(p["write_s"] for p in r["per_tick"])
        lines.append(f"| {r['store']} | {r['day1_ticks_per_s']:.1f} | {r['day1_rows_per_s']:.0f} | {r['ticks']} | "
                     f"{r['wall_s']:.1f} | {r['rows_written']} | {r['rows_per_s']:.0f} | {r['loop_s']:.1f} | {write:.1f} | "
                     f"{r['rows_written'] / write:.0f} | " + " | ".join(f"{v:.0f}" for v in r["ms_per_tick_by_day"])
                     + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=None, help="a postgresql:// URL, 'auto' (private cluster) or none")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--no-memory", action="store_true",
                        help="control run: no memory rewrites (stored prompts keep one size), results *_no_memory.*")
    parser.add_argument("--render", action="store_true", help="only redraw the table and plot from the saved JSON")
    parser.add_argument("--baseline", default=None, help="also time the simulation of this git revision (e.g. main)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "agentsim_store_no_memory" if args.no_memory else "agentsim_store"
    if args.no_memory:
        CONFIG.update(episodic_every=10**9, semantic_every=10**9)
    if args.render:
        saved = json.loads((out / f"{stem}.json").read_text())
        return write_outputs(saved["meta"], saved["results"], out, stem)
    results, cluster = [], None
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run(os.path.join(tmp, "bench.db"), "SQLite (file, WAL)"))
        print(markdown(results), flush=True)
        if args.pg_url:
            url = args.pg_url
            if url == "auto":
                cluster = start_cluster()
                url = cluster.url
                print(f"private cluster started in {cluster.startup_s:.2f} s", flush=True)
            try:
                results.append(run(f"{url}?schema=bench_{os.getpid()}", "PostgreSQL 15 (loopback)"))
            finally:
                if cluster is not None:
                    cluster.stop()
    if args.baseline:
        base = run_baseline(args.baseline)
        secs = [p["seconds"] for p in base["per_tick"]]
        tpd = CONFIG["ticks_per_day"]
        base["ms_per_tick_by_day"] = [1e3 * float(np.mean(secs[d * tpd:(d + 1) * tpd])) for d in range(CONFIG["days"])]
        base["wall_s"] = float(sum(secs))
        results.append(base)
    meta = {"config": CONFIG, "backend": "ScriptedBackend (sha256 of the conversation; no model)",
            "command": "python benchmarks/methods/agentsim_store.py " + " ".join(argv or sys.argv[1:]),
            "pg_startup_s": None if cluster is None else cluster.startup_s, "load_average": os.getloadavg()}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_outputs(meta, results, out, stem)


def write_outputs(meta, results, out, stem="agentsim_store"):
    md = markdown(results)
    for r in results:
        if "rows_written" not in r:
            md += (f"\n\n{r['store']}: {len(r['per_tick'])} ticks in {r['wall_s']:.1f} s; whole tick (with the fake "
                   "generation) by day: " + ", ".join(f"{v:.0f} ms" for v in r["ms_per_tick_by_day"]) + ".")
    (out / f"{stem}.md").write_text(md + "\n")
    plot(results, out / f"{stem}.png")
    print(md)
    print(f"wrote {out / stem}.md, .json, .png")


if __name__ == "__main__":
    main()
