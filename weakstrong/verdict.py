"""``weakstrong verdict A B``: does arm A beat arm B? Two (sets of) evaluated runs, per benchmark and averaged.

Each arm is one or more run directories of ``weakstrong eval --benchmark ... --out DIR`` (several = several seeds
of that arm: comma-separated, ``A1,A2,A3``). For every benchmark both arms were graded on, the paired difference
A − B of pass@1 with its 95% bootstrap interval (problems resampled, the same for both arms; with several runs
per arm, the runs resampled too — :func:`weakstrong.stats.paired_bootstrap_runs`), the macro average over
benchmarks, and the reading of each interval with the lab's rule (:func:`weakstrong.stats.reading`). Writes
``verdict.md``, ``verdict.csv`` and ``verdict.png`` (the differences with their intervals) to ``--out``.
"""

from __future__ import annotations

import csv
import os

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="RUN_A", help="arm A: a run directory, or several (seeds) comma-separated")
    parser.add_argument("b", metavar="RUN_B", help="arm B (the baseline): one or several run directories")
    parser.add_argument("--names", default=None, help="the arms' names, 'A,B' (default: the directories' names)")
    parser.add_argument("--out", default=None, help="where to write verdict.md / .csv / .png (default: ./verdict)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def _runs(spec: str) -> list[str]:
    from .cli import UserError

    runs = [r for r in spec.split(",") if r]
    if not runs:
        raise UserError(f"no run directory in {spec!r}")
    return runs


def collect(runs_a: list[str], runs_b: list[str]):
    """Per benchmark both arms have, ``[runs, problems]`` score arrays on the problems every run has (paired by id).
    Returns (a, b, notes): notes say which benchmarks or problems were left out and why."""
    from .cli import UserError
    from .math_eval import load_scores, run_identity

    scores = {r: load_scores(r) for r in runs_a + runs_b}
    protocols = {r: run_identity(r)["protocol"] for r in runs_a + runs_b}
    if len({str(sorted(p.items())) for p in protocols.values()}) > 1:
        raise UserError("the runs were evaluated under different protocols: "
                        + "; ".join(f"{r}: {p['name']} {p}" for r, p in protocols.items())
                        + ". Compare runs of one protocol.")
    notes = []
    common = set.intersection(*(set(s) for s in scores.values()))
    for r, s in scores.items():
        for name in sorted(set(s) - common):
            notes.append(f"{name} is left out: not every run has it ({r} does)")
    if not common:
        raise UserError("the runs share no benchmark")
    a, b = {}, {}
    order = [n for n in scores[runs_a[0]] if n in common]
    for name in order:
        ids = set.intersection(*(set(s[name]) for s in scores.values()))
        bigger = max(len(s[name]) for s in scores.values())
        if len(ids) < bigger:
            notes.append(f"{name}: {bigger - len(ids)} problem(s) not graded in every run are left out "
                         "(an unfinished run? resume it with the same weakstrong eval command)")
        ids = sorted(ids, key=lambda x: (len(x), x))
        if len(ids) < 2:
            notes.append(f"{name} is left out: fewer than 2 problems graded in every run")
            continue
        a[name] = np.array([[scores[r][name][i] for i in ids] for r in runs_a])
        b[name] = np.array([[scores[r][name][i] for i in ids] for r in runs_b])
    if not a:
        raise UserError("no benchmark has 2 problems graded in every run")
    return a, b, notes


def verdict(runs_a: list[str], runs_b: list[str], names=("A", "B"), n_resamples: int = 10_000,
            confidence: float = 0.95, seed: int = 0) -> dict:
    """The comparison as rows: benchmark, problems, runs per arm, accuracy of each arm, A − B, interval, reading."""
    from .stats import paired_bootstrap_runs, reading

    a, b, notes = collect(runs_a, runs_b)
    cis = paired_bootstrap_runs(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed)
    rows = []
    for name in list(a) + ["average"]:
        ci = cis[name]
        acc_a = float(np.mean([a[m].mean() for m in a])) if name == "average" else float(a[name].mean())
        acc_b = float(np.mean([b[m].mean() for m in b])) if name == "average" else float(b[name].mean())
        rows.append({"benchmark": name, "problems": ci.n, "runs_a": len(runs_a), "runs_b": len(runs_b),
                     "accuracy_a": acc_a, "accuracy_b": acc_b, "difference": ci.estimate, "low": ci.low,
                     "high": ci.high, "confidence": confidence, "reading": reading(ci)})
    return {"names": list(names), "rows": rows, "notes": notes, "runs_a": runs_a, "runs_b": runs_b}


def markdown(result: dict) -> str:
    na, nb = result["names"]
    rows = result["rows"]
    conf = rows[0]["confidence"]
    over = "problems and runs" if max(rows[0]["runs_a"], rows[0]["runs_b"]) > 1 else "problems"
    lines = [f"# {na} vs {nb}", "",
             f"{na}: {', '.join(result['runs_a'])}  ", f"{nb}: {', '.join(result['runs_b'])}", "",
             f"| benchmark | problems | {na} pass@1 % | {nb} pass@1 % | {na} − {nb} points ({conf:.0%} CI) | reading "
             f"of \"{na} > {nb}\" |", "|---|---|---|---|---|---|"]
    for r in rows:
        bold = "**" if r["benchmark"] == "average" else ""
        lines.append(f"| {bold}{r['benchmark']}{bold} | {r['problems']} | {100 * r['accuracy_a']:.1f} | "
                     f"{100 * r['accuracy_b']:.1f} | {100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, "
                     f"{100 * r['high']:+.1f}] | {r['reading']} |")
    lines += ["", f"Intervals: paired bootstrap over {over} ({conf:.0%}, percentile); the average is the unweighted "
              "mean over benchmarks, each benchmark's problems resampled inside it. Reading rule (the method lab's): "
              "reproduced = the interval is above 0; reversed = below 0; 'any gain < 0.5 point' = it contains 0 and "
              "its upper end is at most +0.5 point; not resolved = wider."
              + (" With one run per arm the interval is test-set noise only: a second seed per arm says whether "
                 "the difference survives retraining." if over == "problems" else "")]
    if result["notes"]:
        lines += [""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def write_csv(path: str, result: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])


def plot(path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    na, nb = result["names"]
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        colour = "tab:green" if r["low"] > 0 else "tab:red" if r["high"] < 0 else "tab:gray"
        ax.errorbar(100 * r["difference"], yi, xerr=[[100 * (r["difference"] - r["low"])],
                                                       [100 * (r["high"] - r["difference"])]],
                    fmt="D" if r["benchmark"] == "average" else "o", color=colour, capsize=4, markersize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['benchmark']} (n={r['problems']})" for r in rows])
    ax.set_xlabel(f"{na} − {nb}, pass@1 points ({rows[0]['confidence']:.0%} bootstrap interval)")
    ax.set_title(f"{na} vs {nb}\ngreen = {na} better, red = worse, grey = the interval includes 0", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out_dir: str, result: dict) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"verdict.{k}") for k in ("md", "csv", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown(result))
    write_csv(paths["csv"], result)
    plot(paths["png"], result)
    return paths


def main(args) -> int:
    from .cli import UserError

    runs_a, runs_b = _runs(args.a), _runs(args.b)
    if set(runs_a) & set(runs_b):
        raise UserError(f"a run is in both arms: {sorted(set(runs_a) & set(runs_b))}")
    if args.names:
        names = tuple(args.names.split(","))
        if len(names) != 2 or not all(names):
            raise UserError(f"--names takes two names, 'A,B'; got {args.names!r}")
    else:
        names = (os.path.basename(os.path.normpath(runs_a[0])), os.path.basename(os.path.normpath(runs_b[0])))
        if names[0] == names[1]:
            names = ("A", "B")
    try:
        result = verdict(runs_a, runs_b, names, args.resamples, args.confidence, args.seed)
    except ValueError as err:
        raise UserError(str(err)) from err
    paths = write(args.out or "verdict", result)
    print(markdown(result))
    print("written: " + ", ".join(paths.values()))
    return 0
