"""Generation throughput: local batched generation (``TransformersChat``) vs a real OpenAI-compatible server
(``transformers serve`` on the embedded SmolLM2-135M-Instruct, started here) at several client concurrencies.

Workload: the LRL teacher's solve prompts (MeetingRooms, with the initial strategy), greedy, ``--new-tokens``
per reply, no reply cache. Tokens are counted by re-tokenizing each reply with the model's tokenizer (the same
count for every backend). Each configuration runs ``--repeats`` times after one warm-up; the table gives the
mean tokens/s ± the standard deviation over the repeats, and the wall seconds.

    nice -n 5 python benchmarks/backends/throughput.py --output benchmarks/backends/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _serving():
    spec = importlib.util.spec_from_file_location("weakstrong_tests_serving", ROOT / "tests" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measure(backend, convs, new_tokens, tokenizer, repeats):
    backend.generate(convs[:2], max_new_tokens=8)  # warm-up (model load, first-call costs)
    rates, walls, tokens = [], [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        replies = backend.generate(convs, max_new_tokens=new_tokens)
        wall = time.perf_counter() - start
        tokens = sum(len(tokenizer.encode(r, add_special_tokens=False)) for r in replies)
        rates.append(tokens / wall)
        walls.append(wall)
    return {"tok_per_s": statistics.mean(rates), "tok_per_s_std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "wall_s": statistics.mean(walls), "tokens": tokens, "runs": rates}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="benchmarks/backends/results")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--continuous-batching", action="store_true",
                   help="also measure transformers serve --continuous-batching")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the local backend and the server")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from weakstrong.backends import OpenAICompatibleChat, TransformersChat
    from weakstrong.lrl.prompts import initial_strategy, solve_messages
    from weakstrong.models import default_model_path
    from weakstrong.tasks import MeetingRoomsTask

    torch.set_num_threads(args.threads)
    task = MeetingRoomsTask()
    convs = [solve_messages(task, r, initial_strategy(task)) for r in task.generate(args.prompts, seed=3)]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    load = os.getloadavg()[0]

    local = TransformersChat("default", batch_size=args.prompts)
    tok = local.tokenizer
    for bs in (args.prompts, 1):
        local.batch_size = bs
        r = _measure(local, convs, args.new_tokens, tok, args.repeats)
        rows.append({"backend": f"TransformersChat, batch {bs}", **r})
        print(rows[-1], flush=True)
    del local

    serving = _serving()
    variants = [("transformers serve", [])] + ([("transformers serve --continuous-batching", ["--continuous-batching"])]
                                                if args.continuous_batching else [])
    for label, extra in variants:
        server = serving.TransformersServer(default_model_path(), out / "server.log", threads=args.threads,
                                            extra_args=extra)
        server.start()
        try:
            startup = server.startup_seconds[-1]
            for c in args.concurrency:
                client = OpenAICompatibleChat(server.base_url, server.model, cache_dir=None, concurrency=c,
                                              read_timeout=600, deadline=None)
                r = _measure(client, convs, args.new_tokens, tok, args.repeats)
                rows.append({"backend": f"{label}, concurrency {c}", "startup_s": startup,
                             "server_rss_mib": (server.rss_bytes() or 0) / 2**20, **r})
                print(rows[-1], flush=True)
        finally:
            server.stop()

    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]), "prompts": args.prompts,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads,
            "load_average_at_start": load, "load_average_at_end": os.getloadavg()[0], "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__}
    (out / "throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| backend | tokens/s (mean ± sd) | wall s | tokens |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['tok_per_s']:.1f} ± {r['tok_per_s_std']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['tokens']} |")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
