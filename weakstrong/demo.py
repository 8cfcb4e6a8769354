"""``weakstrong demo`` — the main job: WMSS on the embedded SmolLM2-135M-Instruct, on CPU, in minutes.

1. evaluate the starting model M0 on a held-out test set of a built-in verifiable task;
2. phase 1: SFT → M1, evaluated again;
3. phase 2: entropies of M0 (weak) and M1 (strong) on the training set, weighted draw, entropy plot;
4. phase 3: joint training on the mixed logits; the strong model is evaluated and saved.

Prints accuracy next to balanced accuracy and the always-majority baseline for every stage.
"""

from __future__ import annotations

import os
import time

# Arithmetic: completions about half as long as meeting rooms' (mean 43 vs 83 tokens), so training and greedy
# evaluation cost about half, and SFT visibly moves it: one epoch of 64 problems takes the embedded model from
# 4% to 19% on held-out problems (it learns the worked format and when to stop), while the "hard" tier stays at 0
# (see benchmarks/README.md, "Methods / WMSS", for the learning curve over seeds).
DEFAULT_TASK = "arithmetic"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a path or a hub id")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=["meeting_rooms", "arithmetic"])
    parser.add_argument("--train-size", type=int, default=64, help="training problems")
    parser.add_argument("--test-size", type=int, default=32, help="held-out test problems")
    parser.add_argument("--sft-steps", type=int, default=None,
                        help="optimizer steps of phase 1 (default: one epoch of the training set)")
    parser.add_argument("--wmss-steps", type=int, default=None,
                        help="optimizer steps of phase 3 (default: one epoch of the drawn set)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of phase 1 (SFT)")
    parser.add_argument("--wmss-lr", type=float, default=2e-5,
                        help="learning rate of phase 3 (joint training): a fresh optimizer on the fine-tuned M1 at the "
                             "SFT rate undoes phase 1 at this batch size (benchmarks/README.md)")
    parser.add_argument("--mix-lambda", type=float, default=0.5)
    parser.add_argument("--weight-formula", default="paper", choices=["paper", "official"])
    parser.add_argument("--lora", action="store_true", help="LoRA mode (r=16): no second copy of the base weights")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: per task)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 2 on an idle machine, 1 when the load average says the cores "
                             "are shared: OpenMP threads competing with other processes are many times slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="wmss-demo", help="where the plot, logs and final strong model go")


def _default_threads() -> int:
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 if busy > 0.5 else max(1, min(2, cores))


class _RichProgress:
    """One rich Progress shared by evaluations and a TrainerCallback that follows the WMSS phases."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)
        self.task = None

    def start_task(self, description: str, total):
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total or 0)
        self.task = self.progress.add_task(description, total=total, info="")

    def advance(self, k: int = 1, **fields):
        self.progress.update(self.task, advance=k, **fields)

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_wmss_event(self, name, **info):
                if name == "phase" and info["phase"] == "entropy":
                    outer.start_task("phase 2 entropies", info["total"])
                elif name == "advance":
                    outer.advance(info["k"])

            def on_train_begin(self, args, state, control, **kwargs):
                phase = "phase 1 SFT" if args.output_dir.rstrip("/").endswith("sft") else "phase 3 joint (WMSS)"
                outer.start_task(phase, state.max_steps)

            def on_step_end(self, args, state, control, **kwargs):
                outer.advance(1)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    extra = f" strong {logs['strong_ce']:.3f}" if "strong_ce" in logs else ""
                    outer.progress.update(outer.task, info=f"loss {logs['loss']:.3f}{extra}")

        return Callback()


def main(args) -> int:
    import torch
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from transformers.trainer_callback import PrinterCallback
    from .evaluation import evaluate
    from .models import load_model, resolve_model_path
    from .reporting import score_table
    from .tasks import get_task
    from .wmss import WMSSConfig, run_wmss

    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    t_start = time.time()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    console = Console()
    torch.set_num_threads(args.threads or _default_threads())
    task = get_task(args.task)
    train = task.generate(args.train_size, seed=args.seed + 1)
    test = task.generate(args.test_size, seed=10_000 + args.seed)
    max_new = args.max_new_tokens or (128 if args.task == "meeting_rooms" else 80)
    console.print(Panel.fit(
        f"[bold]WMSS demo[/] — {args.model!r} on [cyan]{args.task}[/]: {len(train)} training / {len(test)} test problems, "
        f"λ={args.mix_lambda}, {args.weight_formula} weights, SFT lr {args.lr:g}, phase-3 lr {args.wmss_lr:g}, "
        f"{'LoRA' if args.lora else 'full fine-tuning'}, "
        f"{torch.get_num_threads()} CPU thread(s)", title="weakstrong demo"))

    model, tokenizer = load_model(args.model)
    bar = _RichProgress(console)
    results, timings = {}, {}
    model_ref = {"model": model}

    def run_eval(title):
        t = time.time()
        bar.start_task(f"eval {title.split()[0]}", len(test))
        r = evaluate(model_ref["model"], tokenizer, task, test, max_new_tokens=max_new, batch_size=24,
                     progress=lambda k: bar.advance(k))
        results[title] = r
        timings[f"eval: {title}"] = time.time() - t
        console.print(f"  {title}: accuracy {100 * r['accuracy']:.1f}%"
                      + (f", balanced {100 * r['balanced_accuracy']:.1f}%" if r["balanced_accuracy"] is not None else ""))

    stage_start = {}
    selection = {}

    def on_stage_end(name, path, trainer):
        # the chain calls this after each stage: evaluate M1 after SFT, the strong model after the WMSS round
        now = time.time()
        if name == "sft":
            timings["phase 1: SFT"] = now - stage_start["sft"]
            model_ref["model"] = trainer.model
            run_eval("M1 (after phase 1: SFT)")
        else:
            timings["phases 2+3: selection + joint"] = now - stage_start["wmss"]
            model_ref["model"] = trainer.accelerator.unwrap_model(trainer.model).strong
            run_eval("M2 (after WMSS)")
            selection.update(trainer.selection)
        stage_start["wmss"] = time.time()

    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    # the rounds' config (phase 3 at its own rate); the SFT stage takes the same fields with its own rate and length
    config = WMSSConfig(
        output_dir=args.output_dir, report_to="none", seed=args.seed, use_cpu=True, bf16=False,
        per_device_train_batch_size=args.batch_size, learning_rate=args.wmss_lr, lr_scheduler_type="constant",
        activation_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True,
        mix_lambda=args.mix_lambda, weight_formula=args.weight_formula, entropy_batch_size=8,
        max_length=512, dataloader_pin_memory=False, num_train_epochs=1, max_steps=args.wmss_steps or -1,
    )
    sft_args = {"learning_rate": args.lr, "num_train_epochs": 1, "max_steps": args.sft_steps or -1}
    with bar.progress:
        run_eval("M0 (untrained)")
        model_ref["model"] = model = None  # the chain loads M0 from its path; free the evaluated copy
        stage_start["sft"] = time.time()
        result = run_wmss(resolve_model_path(args.model), train, config, sft_args=sft_args, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[bar.callback()], on_stage_end=on_stage_end,
                          on_stage_begin=lambda name, trainer: trainer.remove_callback(PrinterCallback))
        final_dir = result.final_dir

    console.print(score_table(results, title=f"WMSS demo — {args.task}, {len(test)} held-out problems"))
    sel = selection["stats"]
    tel = Table(title="Phase 2 telemetry (round 1, nats)")
    for col in ("H weak (M0)", "H strong (M1)", "mean ΔH", "ΔH<0", "ΔH>0", "drawn set", "duplicates dropped"):
        tel.add_column(col, justify="right")
    tel.add_row(f"{sel['entropy/weak']:.3f}", f"{sel['entropy/strong']:.3f}", f"{sel['entropy/delta']:+.3f}",
                f"{sel['delta/share_negative']:.0%}", f"{sel['delta/share_positive']:.0%}",
                f"{int(sel['selection/size'])} of {len(train)}", str(int(sel['selection/duplicates'])))
    console.print(tel)
    timings["total"] = time.time() - t_start
    console.print("Wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    console.print(f"Entropy plot: {os.path.join(final_dir, 'selection', 'entropies.png')}")
    console.print(f"Strong model (loadable with AutoModelForCausalLM): {final_dir}")
    return 0
