"""How many generation requests a recipe's simulation sends, per phase and per tick: a dry run of its
``simulation`` section with the scripted backend (no model), for planning a run against real servers.

    python benchmarks/methods/agentsim_plan.py --config recipes/agentsim/lewis.yaml --days 1

Prints (and writes to ``benchmarks/methods/results/agentsim_plan_<recipe>.json``) the requests per simulated day
and per tick (posts, comments, narrative rewrites, self-model answers), the batch sizes of the phases, and the
prompt sizes in characters. The scripted replies are short, so prompts that quote posts or memories are smaller
than with a real model: the planning note in recipes/agentsim/README.md sizes those from the budgets instead.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from weakstrong.agentsim import ScriptedBackend, Simulation, SimulationConfig
from weakstrong.agentsim.recipe import load_recipe

OUT = Path(__file__).resolve().parent / "results"


class CountingBackend(ScriptedBackend):
    """The scripted backend, recording each call's phase (from its budget), batch size and prompt sizes."""

    def __init__(self, cfg: SimulationConfig):
        super().__init__()
        self.phase_of = {cfg.post_max_new_tokens: "post", cfg.comment_max_new_tokens: "comment",
                         cfg.memory_max_new_tokens: "episodic", max(48, cfg.memory_max_new_tokens // 3): "semantic"}
        self.log = []

    def generate(self, conversations, **sampling):
        phase = self.phase_of.get(sampling.get("max_new_tokens"), "other")
        chars = [sum(len(m["content"]) for m in c) for c in conversations]
        self.log.append({"phase": phase, "n": len(conversations), "prompt_chars": chars})
        return super().generate(conversations, **sampling)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--days", type=int, default=1)
    args = parser.parse_args(argv)
    recipe = load_recipe(args.config)
    cfg = SimulationConfig.from_dict({**recipe["simulation"], "days": args.days})
    backend = CountingBackend(cfg)
    sim = Simulation(cfg, backend, None)
    marks = []
    t0 = time.perf_counter()
    sim.run(progress=lambda tick, row: marks.append(len(backend.log)))
    wall = time.perf_counter() - t0
    per_phase = defaultdict(lambda: {"requests": 0, "calls": 0, "prompt_chars": []})
    for call in backend.log:
        p = per_phase[call["phase"]]
        p["requests"] += call["n"]
        p["calls"] += 1
        p["prompt_chars"] += call["prompt_chars"]
    ticks = cfg.total_ticks
    summary = {"config": str(args.config), "days": args.days, "ticks": ticks, "agents": cfg.agents,
               "dry_run_wall_s": round(wall, 1), "counts": sim.store.counts(), "phases": {}}
    per_tick_requests = np.diff([0] + [sum(c["n"] for c in backend.log[:m]) for m in marks])
    for phase, p in sorted(per_phase.items()):
        summary["phases"][phase] = {
            "requests_per_day": p["requests"] / args.days, "requests_per_tick": p["requests"] / ticks,
            "mean_batch": p["requests"] / p["calls"], "calls": p["calls"],
            "mean_prompt_chars": float(np.mean(p["prompt_chars"])), "max_prompt_chars": int(max(p["prompt_chars"]))}
    summary["requests_per_tick"] = {"mean": float(per_tick_requests.mean()), "p50": float(np.median(per_tick_requests)),
                                    "max": int(per_tick_requests.max())}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"agentsim_plan_{Path(args.config).stem}.json"
    path.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
