"""``weakstrong eval``: evaluate a model.

Two modes:

* built-in task (default): greedy evaluation on ``--task`` (meeting_rooms / arithmetic), printed as a table;
* benchmarks (``--benchmark NAME=PATH``, repeatable): math benchmarks from local files or ``datasets`` folders under
  a protocol (``--protocol paper`` or ``pass@k``), every generation saved under ``--out`` (resumable; ``--regrade``
  grades again without generating), graded with math-verify. See :mod:`weakstrong.math_eval`.
"""

from __future__ import annotations

import json
import os


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a path or a hub id")
    parser.add_argument("--task", default=None, choices=["meeting_rooms", "arithmetic"],
                        help="built-in task mode: the task (default meeting_rooms)")
    parser.add_argument("--n", type=int, default=None, help="built-in task mode: number of test problems (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="built-in task mode: seed of the test set (default 123)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="new tokens per completion (built-in tasks: default 96; benchmarks: overrides the "
                             "protocol's, for every benchmark)")
    parser.add_argument("--batch-size", type=int, default=None, help="generation batch (default 16; benchmarks with "
                                                                     "transformers: 8)")
    parser.add_argument("--output", default=None, help="built-in task mode: write the scores and completions as JSON here")
    g = parser.add_argument_group("benchmarks (math, graded with math-verify)")
    g.add_argument("--benchmark", action="append", default=[], metavar="NAME=PATH",
                   help="a benchmark as the paper names it (AIME-24, AIME-25, AMC-23, MATH-500, GSM8K, Minerva, "
                        "OlympiadBench) or any name, and its local file (.jsonl/.json/.parquet/.csv) or "
                        "datasets.save_to_disk folder; repeat for several")
    g.add_argument("--out", default=None, help="the run directory: generations, grades, summary (required)")
    g.add_argument("--protocol", default="paper", choices=["paper", "pass@k"],
                   help="paper: greedy T=0, top-p 1, seed 42, thinking on, 4,096 new tokens (8,192 for AIME-25 / "
                        "AMC-23); pass@k: T=0.6, top-p 0.95, 16 samples")
    g.add_argument("--problem-column", default=None, help="the problem column (default: found in the benchmark's schema)")
    g.add_argument("--answer-column", default=None, help="the gold-answer column (default: found in its schema)")
    g.add_argument("--split", default=None, help="the split of a DatasetDict folder")
    g.add_argument("--grader", default="math", choices=["math", "numeric", "exact"])
    g.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    g.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"],
                   help="auto: vLLM when it is installed, else transformers")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per model")
    g.add_argument("--temperature", type=float, default=None, help="override the protocol's")
    g.add_argument("--top-p", type=float, default=None, help="override the protocol's")
    g.add_argument("--samples", type=int, default=None, help="completions per problem (override)")
    g.add_argument("--gen-seed", type=int, default=None, help="generation seed (override the protocol's 42)")
    g.add_argument("--no-thinking", action="store_true", help="thinking off in the chat template")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="override the protocol's 4,096")
    g.add_argument("--regrade", action="store_true", help="grade the saved generations of --out again; no model")


def run_eval(model, tokenizer, task, dataset, title: str, console=None, **kwargs) -> dict:
    """Evaluate with a progress bar and print the summary table; shared by the CLI commands."""
    from rich.progress import Progress

    from .evaluation import evaluate
    from .reporting import score_table

    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"evaluating {title}", total=len(dataset))
        result = evaluate(model, tokenizer, task, dataset, progress=lambda k: bar.advance(job, k), **kwargs)
    if console is not None:
        console.print(score_table({title: result}))
    return result


BENCH_ONLY = ("out", "problem_column", "answer_column", "split", "limit", "temperature", "top_p", "samples",
              "gen_seed", "max_prompt_tokens")


def main(args) -> int:
    from rich.console import Console

    from .cli import UserError

    console = Console()
    if args.benchmark or args.regrade:
        return _benchmarks(args, console)
    used = [f"--{k.replace('_', '-')}" for k in BENCH_ONLY if getattr(args, k) is not None]
    used += [f for f, on in (("--no-thinking", args.no_thinking), ("--grader", args.grader != "math"),
                             ("--protocol", args.protocol != "paper"), ("--backend", args.backend != "auto"))
             if on]
    if used:
        raise UserError(f"{', '.join(used)} apply to benchmarks: add --benchmark NAME=PATH (or drop them)")

    from .models import load_model
    from .tasks import get_task

    task = get_task(args.task or "meeting_rooms")
    dataset = task.generate(60 if args.n is None else args.n, seed=123 if args.seed is None else args.seed)
    model, tokenizer = load_model(args.model)
    result = run_eval(model, tokenizer, task, dataset, args.model, console,
                      max_new_tokens=96 if args.max_new_tokens is None else args.max_new_tokens,
                      batch_size=16 if args.batch_size is None else args.batch_size)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def parse_benchmark_specs(specs) -> list[tuple[str, str]]:
    from .cli import UserError

    out = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--benchmark {spec!r}: write NAME=PATH, e.g. --benchmark MATH-500=data/math500.jsonl")
        name, path = spec.split("=", 1)
        if not name or not path:
            raise UserError(f"--benchmark {spec!r}: write NAME=PATH")
        out.append((name, path))
    return out


def _benchmarks(args, console) -> int:
    from .benchmarks import get_protocol, load_benchmark
    from .cli import UserError
    from .math_eval import TransformersGenerator, VLLMGenerator, evaluate_benchmarks, grade_run, vllm_available

    if not args.out:
        raise UserError("--out DIR is required with --benchmark / --regrade: every generation is saved there")
    for flag, value in (("--n", args.n), ("--seed", args.seed), ("--output", args.output), ("--task", args.task)):
        if value is not None:
            raise UserError(f"{flag} is for the built-in tasks; with benchmarks use --limit / --gen-seed / --out")
    if args.regrade:
        if args.benchmark:
            raise UserError("--regrade grades the saved generations of --out: give no --benchmark")
        grade_run(args.out, console=console)
        return 0
    if args.model == "default":
        raise UserError("name the model to evaluate with --model PATH (the embedded default is not a math model)")
    protocol = get_protocol(args.protocol, temperature=args.temperature, top_p=args.top_p, samples=args.samples,
                            seed=args.gen_seed, max_new_tokens=args.max_new_tokens,
                            max_new_tokens_long=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                            thinking=False if args.no_thinking else None)
    benches = [load_benchmark(n, p, args.problem_column, args.answer_column, args.grader, args.limit, args.split)
               for n, p in parse_benchmark_specs(args.benchmark)]
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise UserError(f"a benchmark is named twice: {names}")
    backend = args.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() else "transformers"
    if backend == "vllm":
        if not vllm_available():
            raise UserError("--backend vllm: vLLM is not installed (pip install vllm on a GPU machine), or use "
                            "--backend transformers")
        if args.batch_size is not None:
            raise UserError("--batch-size applies to transformers; vLLM schedules its own batches")
        longest = max(protocol.new_tokens(n) for n in names)
        generator = VLLMGenerator(args.model, protocol.max_prompt_tokens + longest, protocol.seed,
                                  args.tensor_parallel_size)
    else:
        if args.tensor_parallel_size != 1:
            raise UserError("--tensor-parallel-size applies to vLLM only")
        from .models import load_model

        model, tokenizer = load_model(args.model)
        generator = TransformersGenerator(model, tokenizer, batch_size=8 if args.batch_size is None else args.batch_size)
    console.print(f"evaluating {args.model} on {', '.join(f'{b.name} ({len(b.rows)})' for b in benches)} — "
                  f"protocol {protocol.name}, backend {generator.name}, run directory {args.out}")
    evaluate_benchmarks(generator, args.model, benches, protocol, args.out, console=console)
    return 0
