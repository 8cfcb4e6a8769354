"""CLI of the method lab (see the package docstring and README.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
CONFIG_FILE = "lab_config.json"


def _config(opts):
    from .config import LabConfig

    cfg = LabConfig()
    if opts.config:
        with open(opts.config) as f:
            cfg = LabConfig.from_json(f.read())
    for kv in opts.set or []:
        key, _, value = kv.partition("=")
        if not hasattr(cfg, key):
            raise SystemExit(f"--set {kv}: LabConfig has no field {key!r}")
        old = getattr(cfg, key)
        setattr(cfg, key, type(old)(json.loads(value)) if not isinstance(old, str) else value)
    return cfg


def _bind_out(cfg, out):
    """The results folder belongs to one config: refuse to mix rows of two configs."""
    from .config import LabConfig

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = LabConfig.from_json(f.read())
        if old.to_json() != cfg.to_json():
            raise SystemExit(f"{out} holds results of another lab config ({path}); use another --out, or pass "
                             f"--config {path} to continue it")
    else:
        with open(path, "w") as f:
            f.write(cfg.to_json())


def cmd_saturation(opts):
    from .phase1 import run_phase1
    from .report import plot_saturation, saturation_csv

    cfg = _config(opts)
    _bind_out(cfg, opts.out)
    extra = opts.extra_epochs if opts.extra_epochs is not None else cfg.budget_epochs
    record = run_phase1(cfg, opts.seed, opts.work, extra_epochs=extra)
    rows = saturation_csv(record, os.path.join(opts.out, f"saturation_seed{opts.seed}.csv"))
    plot_saturation(record, os.path.join(opts.out, f"saturation_seed{opts.seed}.png"))
    summary = {k: record[k] for k in ("phase1_cpu_s", "continued_cpu_s", "wall_s", "eval_cpu_s", "torch_threads")}
    summary["m1"] = next(r for r in rows if r["phase"] == "phase1" and r["step"] == cfg.phase1_steps)
    summary["last"] = rows[-1]
    after = [r for r in rows if r["step"] > cfg.phase1_steps]
    if after:
        import numpy as np

        acc = np.array([r["accuracy"] for r in after])
        summary["after_m1"] = {"points": len(after), "epochs": after[-1]["epoch"] - cfg.phase1_epochs,
                               "accuracy_mean": round(float(acc.mean()), 4), "accuracy_sd": round(float(acc.std(ddof=1)), 4)
                               if len(acc) > 1 else None, "accuracy_min": float(acc.min()),
                               "accuracy_max": float(acc.max()),
                               "train_loss_max": max(r["train_loss"] for r in after if r["train_loss"] is not None)}
    with open(os.path.join(opts.out, f"saturation_seed{opts.seed}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


def cmd_run(opts):
    from .arms import ARMS, run_arm
    from .report import CORRECT, CURVES, ROWS, read_csv, write_csv, write_report
    from .scoring import pack

    cfg = _config(opts)
    _bind_out(cfg, opts.out)
    unknown = [a for a in opts.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {sorted(ARMS)}")
    rows_path, curves_path = os.path.join(opts.out, ROWS), os.path.join(opts.out, CURVES)
    rows, curves = read_csv(rows_path), read_csv(curves_path)
    done = {(r["arm"], int(r["seed"])) for r in rows}
    for seed in opts.seeds:
        for arm in opts.arms:
            if (arm, seed) in done:
                continue
            t = time.time()
            res = run_arm(cfg, seed, arm, opts.work)
            rows.append(res["row"])
            curves += [{"arm": arm, "seed": seed, **{k: v for k, v in c.items() if k != "label"},
                        "label": c["label"]} for c in res["curve"]]
            write_csv(rows_path, rows)
            write_csv(curves_path, curves)
            with open(os.path.join(opts.out, CORRECT), "a") as f:
                f.write(json.dumps({"arm": arm, "seed": seed, "n": cfg.n_test, "bits": pack(res["correct"])}) + "\n")
            print(json.dumps({k: res["row"][k] for k in ("arm", "seed", "accuracy", "train_cpu_s", "train_steps")}),
                  f"({time.time() - t:.0f} s wall)", flush=True)
    print(write_report(opts.out, cfg))


def cmd_report(opts):
    from .config import LabConfig
    from .report import write_report

    with open(os.path.join(opts.out, CONFIG_FILE)) as f:
        cfg = LabConfig.from_json(f.read())
    print(write_report(opts.out, cfg))


def cmd_merge(opts):
    """Fold the results of runs made in other folders (e.g. seeds run in parallel processes) into ``--out``."""
    from .config import LabConfig
    from .report import CORRECT, CURVES, ROWS, read_csv, write_csv, write_report

    with open(os.path.join(opts.out, CONFIG_FILE)) as f:
        cfg = LabConfig.from_json(f.read())
    rows, curves = read_csv(os.path.join(opts.out, ROWS)), read_csv(os.path.join(opts.out, CURVES))
    done = {(r["arm"], r["seed"]) for r in rows}
    for src in opts.sources:
        with open(os.path.join(src, CONFIG_FILE)) as f:
            if LabConfig.from_json(f.read()).to_json() != cfg.to_json():
                raise SystemExit(f"{src} was run with another lab config than {opts.out}: not merged")
        new = [r for r in read_csv(os.path.join(src, ROWS)) if (r["arm"], r["seed"]) not in done
               and (not opts.arms or r["arm"] in opts.arms)]
        keys = {(r["arm"], r["seed"]) for r in new}
        rows += new
        curves += [c for c in read_csv(os.path.join(src, CURVES)) if (c["arm"], c["seed"]) in keys]
        with open(os.path.join(src, CORRECT)) as f, open(os.path.join(opts.out, CORRECT), "a") as g:
            for line in f:
                rec = json.loads(line)
                if (rec["arm"], str(rec["seed"])) in keys:
                    g.write(line)
        done |= keys
        print(f"{src}: {len(new)} rows merged")
    write_csv(os.path.join(opts.out, ROWS), rows)
    write_csv(os.path.join(opts.out, CURVES), curves)
    print(write_report(opts.out, cfg))


def cmd_arms(opts):
    from .arms import describe

    print(describe())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.methods.lab", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--out", default=DEFAULT_OUT, help="results folder (CSV, markdown, plots)")
        sp.add_argument("--work", default="/tmp/weakstrong_lab", help="scratch folder (phase-1 snapshots)")
        sp.add_argument("--config", default=None, help="a lab_config.json to use instead of the defaults")
        sp.add_argument("--set", nargs="*", metavar="FIELD=VALUE", help="override LabConfig fields")
        sp.add_argument("--threads", type=int, default=1, help="torch threads (the lab is calibrated on 1)")

    s = sub.add_parser("saturation", help="phase 1 + its continuation for one seed: the saturation curve")
    common(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--extra-epochs", type=int, default=None, help="epochs after M1 (default: the budget)")
    r = sub.add_parser("run", help="run arms × seeds (rows already in the results are skipped)")
    common(r)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--arms", nargs="+", default=["sft_same", "sft_p3", "wmss"])
    rep = sub.add_parser("report", help="rewrite report.md and the plots from the results folder")
    rep.add_argument("--out", default=DEFAULT_OUT)
    m = sub.add_parser("merge", help="merge the results of other folders (same config) into --out")
    m.add_argument("--out", default=DEFAULT_OUT)
    m.add_argument("sources", nargs="+")
    m.add_argument("--arms", nargs="+", default=None, help="merge only these arms' rows (default: all)")
    sub.add_parser("arms", help="list the arms")
    opts = p.parse_args(argv)
    if getattr(opts, "threads", None):
        import torch

        torch.set_num_threads(opts.threads)
    {"saturation": cmd_saturation, "run": cmd_run, "report": cmd_report, "merge": cmd_merge,
     "arms": cmd_arms}[opts.cmd](opts)


if __name__ == "__main__":
    sys.exit(main())
