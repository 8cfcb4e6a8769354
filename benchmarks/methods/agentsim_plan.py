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
from weakstrong.agentsim.memory import SELF_MODEL_QUESTIONS
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
    parser.add_argument("--estimate", default=None, metavar="REQUESTS_JSON",
                        help="skip the dry run: size a full run from the saved plan and a real run's per-request "
                             "figures (benchmarks/methods/agentsim_requests.py --out)")
    parser.add_argument("--prefill-tok-s", type=float, default=10_000.0, help="assumed prompt tokens/s per server")
    parser.add_argument("--decode-tok-s", type=float, default=60.0, help="assumed reply tokens/s of one sequence")
    args = parser.parse_args(argv)
    if args.estimate:
        recipe = load_recipe(args.config)
        cfg = SimulationConfig.from_dict(recipe["simulation"])
        plan = json.loads((OUT / f"agentsim_plan_{Path(args.config).stem}.json").read_text())
        from weakstrong.agentsim import make_agents
        from weakstrong.agentsim.archetypes import identity_prompt

        ident = float(np.mean([len(identity_prompt(a)) for a in make_agents(cfg.agents, cfg.archetypes, cfg.seed)]))
        est = estimate(plan, json.loads(Path(args.estimate).read_text()), cfg, cfg.days,
                       prefill_tok_s=args.prefill_tok_s, decode_tok_s_per_seq=args.decode_tok_s, identity_chars=ident)
        print(json.dumps(est, indent=1))
        return est
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



def estimate(plan: dict, per_request: dict, cfg: SimulationConfig, days: int, servers=(1, 2, 4, 8),
             prefill_tok_s: float = 10_000.0, decode_tok_s_per_seq: float = 60.0, identity_chars: float = 0.0):
    """Requests, tokens and hours of a ``days``-day run of ``cfg`` from a dry run's per-day request counts.

    Prompts are sized at steady state from the budgets (memories full, feeds full) with the chars-per-token
    ratio measured in a real run (``per_request``); replies at their budgets (the 135M model used 95-99% of
    them; a capable model stops earlier, so this is an upper bound). Time per tick, phase by phase (a phase
    waits for its last reply): ``prompt tokens of the phase / (N · prefill_tok_s) + reply budget /
    decode_tok_s_per_seq`` — prefill is throughput-bound and splits over N servers, decoding one reply is
    latency-bound and does not. Memory phases run in the ticks that have a rewrite.
    """
    cpt = per_request["chars_per_prompt_token"]
    mem = 2 * cfg.memory_budget  # narrative + self-model in the system prompt
    feed = cfg.feed_size * (280 + 30) + 250
    recent = cfg.recent_posts_in_rewrite * min(cfg.post_max_chars, cfg.post_max_new_tokens * 4)
    prompt_chars = {"post": identity_chars + mem + feed, "comment": identity_chars + mem + 280 + 150,
                    "episodic": identity_chars + cfg.memory_budget + recent + 450,
                    "semantic": identity_chars + cfg.memory_budget + 100}
    budget = {"post": cfg.post_max_new_tokens, "comment": cfg.comment_max_new_tokens,
              "episodic": cfg.memory_max_new_tokens, "semantic": max(48, cfg.memory_max_new_tokens // 3)}
    posts = plan["phases"]["post"]["requests_per_day"] * days
    requests = {"post": posts, "comment": plan["phases"]["comment"]["requests_per_day"] * days,
                "episodic": posts / cfg.episodic_every, "semantic": len(SELF_MODEL_QUESTIONS) * posts / cfg.semantic_every}
    ticks = cfg.ticks_per_day * days
    rows = {}
    for phase in requests:
        rows[phase] = {"requests": requests[phase], "prompt_tokens": requests[phase] * prompt_chars[phase] / cpt,
                       "reply_tokens": requests[phase] * budget[phase],
                       "ticks_with_phase": min(ticks, requests[phase] / (len(SELF_MODEL_QUESTIONS) if phase == "semantic"
                                                                      else 1))}
    hours = {}
    for n in servers:
        seconds = 0.0
        for phase, r in rows.items():
            seconds += r["prompt_tokens"] / (n * prefill_tok_s) + r["ticks_with_phase"] * budget[phase] / decode_tok_s_per_seq
        hours[n] = seconds / 3600
    return {"requests": rows, "ticks": ticks, "hours_by_servers": hours,
            "assumptions": {"prefill_tok_s_per_server": prefill_tok_s, "decode_tok_s_per_sequence": decode_tok_s_per_seq,
                            "chars_per_token": cpt, "identity_chars": identity_chars}}


if __name__ == "__main__":
    main()
