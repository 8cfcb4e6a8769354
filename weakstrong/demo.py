"""``weakstrong demo`` — the main job.

Until the WMSS trainer lands this evaluates the embedded SmolLM2-135M-Instruct on a built-in task and says
so; the WMSS fine-tune with before/after evaluation replaces it.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a path or a hub id")
    parser.add_argument("--task", default="meeting_rooms", choices=["meeting_rooms", "arithmetic"])
    parser.add_argument("--n", type=int, default=48, help="number of test problems")
    parser.add_argument("--seed", type=int, default=123)


def main(args) -> int:
    from rich.console import Console

    from .eval_cli import run_eval
    from .models import load_model
    from .tasks import get_task

    console = Console()
    console.print("[bold yellow]weakstrong demo:[/] the WMSS fine-tune is not implemented yet; this demo only "
                  f"evaluates {args.model!r} on the {args.task} task.")
    task = get_task(args.task)
    dataset = task.generate(args.n, seed=args.seed)
    model, tokenizer = load_model(args.model)
    run_eval(model, tokenizer, task, dataset, f"{args.model} (untrained)", console)
    return 0
