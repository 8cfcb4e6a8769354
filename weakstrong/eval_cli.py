"""``weakstrong eval``: greedy evaluation of a model on a built-in task, printed as a table."""

from __future__ import annotations

import json
import os


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a path or a hub id")
    parser.add_argument("--task", default="meeting_rooms", choices=["meeting_rooms", "arithmetic"])
    parser.add_argument("--n", type=int, default=60, help="number of test problems (spread over difficulties)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the test set")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", default=None, help="write the scores and completions as JSON here")


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


def main(args) -> int:
    from rich.console import Console

    from .models import load_model
    from .tasks import get_task

    console = Console()
    task = get_task(args.task)
    dataset = task.generate(args.n, seed=args.seed)
    model, tokenizer = load_model(args.model)
    result = run_eval(model, tokenizer, task, dataset, args.model, console,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0
