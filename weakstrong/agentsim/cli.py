"""``weakstrong agentsim simulate|export|evaluate|telemetry|report --config FILE.yaml`` (training:
recipes/agentsim/train.py).

Each step reads the recipe YAML (see :mod:`weakstrong.agentsim.recipe`) and writes under its ``run_dir``; every step
can be rerun: the simulation resumes after its last completed tick, the others overwrite their outputs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .recipe import load_recipe, make_backend, open_recipe_store, paths, store_spec

STEPS = ("simulate", "export", "evaluate", "telemetry", "report")
STEP_HELP = {"simulate": "run or resume the simulation (RUN_DIR/sim.db), then the telemetry",
             "export": "ChatML training pairs (RUN_DIR/pairs) with exact filter counts",
             "evaluate": "personality evaluation, base vs fine-tuned (evaluate.report_dir)",
             "telemetry": "per-day telemetry and the divergence-over-days plot of the simulation",
             "report": "collect what the steps wrote into results.md in evaluate.report_dir"}


def run_simulate(recipe: dict, max_ticks: int | None = None, telemetry: bool = True,
                 allow_backend_change: bool = False) -> dict:
    from .config import SimulationConfig
    from .simulation import Simulation, ticks_done_text

    p = paths(recipe)
    p["run_dir"].mkdir(parents=True, exist_ok=True)
    cfg = SimulationConfig.from_dict(recipe.get("simulation", {}))
    backend = make_backend(recipe.get("backend"))
    sim = Simulation(cfg, backend, store_spec(recipe), allow_backend_change=allow_backend_change)
    start, t0 = sim.ticks_done, time.time()
    print(f"simulation: {cfg.agents} agents, {cfg.days} days x {cfg.ticks_per_day} ticks; database {sim.store.path}"
          + (f"; {ticks_done_text(start)} of {cfg.total_ticks} done, resuming at tick {start + 1}"
             if 0 < start < cfg.total_ticks else f"; all {start} ticks are done" if start >= cfg.total_ticks else ""))

    def progress(tick, row):  # ticks and days are numbered from 1 in everything a user reads
        print(f"  tick {tick + 1}/{cfg.total_ticks} (day {row['day'] + 1}): active {row['active_agents']}, posts "
              f"{row['posts']}, comments {row['comments']}, reactions {row['reactions']}, follows {row['follows']}, "
              f"rewrites {row['episodic_rewrites']}+{row['semantic_rewrites']}, belief events {row['belief_events']} "
              f"[generate {sim.last_timing.get('generate', 0):.1f}s, write {sim.last_timing.get('write', 0):.2f}s; "
              f"{time.time() - t0:.0f}s]", flush=True)

    counts = sim.run(progress=progress, max_ticks=max_ticks)
    print("rows:", json.dumps(counts))
    if telemetry and sim.ticks_done == cfg.total_ticks:
        run_telemetry(recipe, sim.store)
    return counts


def run_telemetry(recipe: dict, store=None) -> list[dict]:
    from .telemetry import daily_telemetry, plot_divergence, save_telemetry, telemetry_markdown

    p = paths(recipe)
    store = store or open_recipe_store(recipe)
    rows = daily_telemetry(store)
    save_telemetry(rows, p["telemetry"])
    plot_divergence(rows, p["plot"])
    print(telemetry_markdown(rows))
    print(f"telemetry: {p['telemetry']}, plot: {p['plot']}")
    return rows


def run_export(recipe: dict):
    from .export import export_pairs, save_counts

    p = paths(recipe)
    dd = export_pairs(open_recipe_store(recipe), recipe.get("export", {}))
    from datasets import DatasetDict

    # datasets cannot reload an empty split it saved: keep only non-empty ones (an empty held-out split is printed)
    DatasetDict({k: v for k, v in dd.items() if len(v)}).save_to_disk(str(p["pairs"]))
    save_counts(dd.counts, p["counts"])
    print(f"pairs: {p['pairs']} ({len(dd['train'])} train / {len(dd['test'])} held out); counts: {p['counts']}")
    return dd


def run_evaluate(recipe: dict, tuned: str | None = None, only: str | None = None) -> dict:
    from .evaluation import evaluate_personality, load_prompts, personality_markdown

    p = paths(recipe)
    ev = dict(recipe.get("evaluate", {}))
    tuned = tuned or ev.pop("tuned_model", None) or str(p["merged"])
    ev.pop("tuned_model", None)
    if only not in (None, "base", "fine-tuned"):
        raise ValueError(f"--only must be 'base' or 'fine-tuned', got {only!r}")
    if only != "base" and not Path(tuned).exists():
        raise FileNotFoundError(f"fine-tuned model {tuned} not found: run recipes/agentsim/train.py first, or pass "
                                "--tuned PATH")
    base_spec = dict(recipe.get("backend") or {"type": "transformers", "model": "default"})
    if base_spec.get("type", "transformers") != "transformers":
        base_spec = {"type": "transformers", "model": "default"}
    batch = ev.pop("batch_size", base_spec.get("batch_size", 16))
    base_spec["batch_size"] = batch
    base = make_backend(base_spec)
    tuned_backend = None if only == "base" else make_backend({**base_spec, "model": tuned,
                                                               "name": f"transformers:{tuned}"})
    judge_spec = ev.pop("judge", None)
    judge = None
    if judge_spec:
        judge_spec = dict(judge_spec)
        same = (judge_spec.get("type", "transformers") == "transformers"
                and judge_spec.get("model", "default") == base_spec.get("model", "default"))
        judge = base if same else make_backend(judge_spec)
    ev.pop("report_dir", None)
    report_dir = p["report"]
    prompts = load_prompts(ev.pop("per_category", None))
    t0 = time.time()
    models = {"base": base} if only == "base" else {"base": None if only == "fine-tuned" else base,
                                                       "fine-tuned": tuned_backend}
    result = evaluate_personality(models, open_recipe_store(recipe), prompts=prompts, judge=judge,
                                  cache_dir=p["eval"] / "cache", **ev)
    result["settings"]["wall_seconds"] = round(time.time() - t0, 1)
    result["settings"]["tuned_model"] = tuned
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "personality.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    md = personality_markdown(result)
    (report_dir / "personality.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    print(f"report: {report_dir / 'personality.md'}")
    return result


def run_report(recipe: dict, report_dir=None, notes: str = "") -> Path:
    """Collect what the steps wrote (telemetry, export counts, memory/belief numbers, personality tables) into
    ``report_dir/results.md`` (default: the recipe's ``evaluate.report_dir``, inside RUN_DIR when relative) and
    copy the divergence plot beside it."""
    import shutil

    from .export import format_counts
    from .store import is_postgres_url
    from .telemetry import telemetry_markdown

    p = paths(recipe)
    report_dir = Path(report_dir) if report_dir else p["report"]
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Agent simulation: results of the recipe run", ""]
    if is_postgres_url(store_spec(recipe)) or Path(store_spec(recipe)).is_file():
        store = open_recipe_store(recipe)
        counts = store.counts()
        mem = store.rows("SELECT kind, COUNT(*) AS n, AVG(compression_ratio) AS mean_ratio, MIN(compression_ratio) AS "
                         "min_ratio, MAX(compression_ratio) AS max_ratio, AVG(input_chars) AS mean_in, "
                         "AVG(output_chars) AS mean_out, MAX(output_chars) AS max_out, SUM(truncated) AS cut, "
                         "MAX(budget) AS budget FROM memory_versions GROUP BY kind")
        parts += ["## Simulation", "", "Rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
                  "| memory | rewrites | mean ratio (in→out chars) | min | max | mean in | mean out | max out | "
                  "budget | cut to budget |", "|---|---|---|---|---|---|---|---|---|---|"]
        for m in mem:
            parts.append(f"| {m['kind']} | {m['n']} | {m['mean_ratio'] or 0:.2f} | {m['min_ratio'] or 0:.2f} | "
                         f"{m['max_ratio'] or 0:.2f} | {m['mean_in']:.0f} | {m['mean_out']:.0f} | {m['max_out']} | "
                         f"{m['budget']} | {m['cut']} |")
        parts.append("")
    if p["telemetry"].is_file():
        parts += ["## Telemetry per simulated day", "", telemetry_markdown(json.loads(p["telemetry"].read_text())), "",
                  "![divergence over days](divergence_over_days.png)", ""]
        if p["plot"].is_file() and p["plot"].resolve() != (report_dir / "divergence_over_days.png").resolve():
            shutil.copy(p["plot"], report_dir / "divergence_over_days.png")
    if p["counts"].is_file():
        parts += ["## Export", "", "```", format_counts(json.loads(p["counts"].read_text())), "```", ""]
    if (report_dir / "personality.md").is_file():
        parts += ["## Personality evaluation (base vs fine-tuned)", "", (report_dir / "personality.md").read_text(), ""]
    if notes:
        parts += [notes, ""]
    out = report_dir / "results.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"report: {out}")
    return out


def add_arguments(parser) -> None:
    import argparse

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The epilog as written, and each option's default."""

    parser.formatter_class = Formatter
    parser.epilog = ("steps (in order; training is recipes/agentsim/train.py, between export and evaluate):\n"
                     + "\n".join(f"  {name:<10} {text}" for name, text in STEP_HELP.items())
                     + "\nEvery output is written under the recipe's run_dir (a relative evaluate.report_dir too).")
    parser.add_argument("step", choices=STEPS, help="which step of the recipe to run: " + ", ".join(STEPS))
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/agentsim/small.yaml")
    parser.add_argument("--max-ticks", type=int, default=None, help="simulate: stop after this many ticks")
    parser.add_argument("--store", default=None,
                        help="the simulation database: an SQLite path or a postgresql://user@host:port/db[?schema=NAME] "
                             "URL (overrides the recipe's store; default RUN_DIR/sim.db)")
    parser.add_argument("--allow-backend-change", action="store_true",
                        help="simulate: resume although the backend differs from the one that started the run (only "
                             "for the same weights behind a new address)")
    parser.add_argument("--tuned", default=None, help="evaluate: path of the fine-tuned (merged) model")
    parser.add_argument("--only", default=None, choices=["base", "fine-tuned"],
                        help="evaluate: run one model now (cached in RUN_DIR/eval/cache); the other is read from cache")


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING)
    recipe = load_recipe(args.config)
    if args.store:
        recipe["store"] = args.store
    if args.step == "simulate":
        run_simulate(recipe, args.max_ticks, allow_backend_change=args.allow_backend_change)
    elif args.step == "export":
        run_export(recipe)
    elif args.step == "evaluate":
        run_evaluate(recipe, args.tuned, args.only)
    elif args.step == "telemetry":
        run_telemetry(recipe)
    else:
        run_report(recipe)
    return 0
