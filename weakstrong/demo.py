"""``weakstrong demo`` — the main job: WMSS on the embedded SmolLM2-135M-Instruct, on CPU, in minutes, against the
control a user needs: the same budget spent on plain SFT.

1. phase 1: SFT of M0 → M1 (one epoch), evaluated on held-out problems of a built-in verifiable task;
2. WMSS from M1: phase 2 (entropies of M0 and M1 on the training set, the weighted draw, the entropy plot) and
   phase 3 (joint training on the mixed logits) — N optimizer steps; the strong model is evaluated and saved;
3. the control from the same M1: plain SFT for the same N optimizer steps, same batch, rate and schedule (a fresh
   optimizer, as phase 3 has); evaluated and saved;
4. the difference WMSS − SFT with its paired bootstrap interval over the test problems, and what it allows.

M0 is evaluated too with ``--eval-m0`` (one more evaluation).
"""

from __future__ import annotations

import os
import time

# Arithmetic: completions about half as long as meeting rooms' (mean 43 vs 83 tokens), so training and greedy
# evaluation cost about half, and SFT visibly moves it: one epoch of 64 problems takes the embedded model from
# 4% to 19% on held-out problems (it learns the worked format and when to stop), while the "hard" tier stays at 0
# (see benchmarks/README.md, "Methods / WMSS", for the learning curve over seeds).
DEFAULT_TASK = "arithmetic"
#: the control's folder under the output dir: plain SFT from M1 for as many steps as the WMSS round took
CONTROL = "sft-control"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a path or a hub id")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=["meeting_rooms", "arithmetic"])
    parser.add_argument("--train-size", type=int, default=64, help="training problems")
    parser.add_argument("--test-size", type=int, default=64, help="held-out test problems")
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
                        help="torch CPU threads (default: 2 when 2 cores are free as the demo starts, else 1: OpenMP "
                             "threads competing with other processes are many times slower)")
    parser.add_argument("--eval-m0", action="store_true", help="also evaluate the untrained model M0 (slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="wmss-demo", help="where the plot, logs and final strong model go")


def _busy_cores(interval: float = 0.5) -> float | None:
    """Cores busy with other work right now: the non-idle share of ``/proc/stat``'s CPU time over ``interval``
    seconds, times the core count (None where /proc/stat does not exist). Unlike the load average, which remembers
    the last minute, this sees the machine as it is when the demo starts."""
    def sample():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return (1.0 - (i1 - i0) / (t1 - t0)) * (os.cpu_count() or 1)


def _default_threads() -> int:
    """2 threads where 2 cores are free, else 1 (OpenMP threads competing with other processes are many times
    slower than one thread)."""
    cores = os.cpu_count() or 1
    busy = _busy_cores()
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = cores - busy
    return 2 if cores >= 2 and free >= 1.5 else 1


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
                name = os.path.basename(args.output_dir.rstrip("/"))
                phase = {"sft": "phase 1 SFT", CONTROL: "control: SFT"}.get(name, "phase 3 joint (WMSS)")
                outer.start_task(phase, state.max_steps)

            def on_step_end(self, args, state, control, **kwargs):
                outer.advance(1)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    extra = f" strong {logs['strong_ce']:.3f}" if "strong_ce" in logs else ""
                    outer.progress.update(outer.task, info=f"loss {logs['loss']:.3f}{extra}")

        return Callback()


def _cpu_accelerator_env() -> None:
    """Tell DeepSpeed (imported by transformers and accelerate) that this is a CPU run, so that it does not warn
    "Setting accelerator to CPU ..." after failing to find a GPU. A user's own ``DS_ACCELERATOR`` is kept."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _verdict(diff, n_wmss_only: int, n_sft_only: int) -> list[str]:
    """What the paired interval of WMSS − SFT allows, in words (never an unqualified gain or drop)."""
    lo, hi, est = 100 * diff.low, 100 * diff.high, 100 * diff.estimate
    head = (f"WMSS − SFT: {est:+.1f} points, 95% CI [{lo:+.1f}, {hi:+.1f}] (paired bootstrap over the "
            f"{diff.n} test problems; WMSS right where SFT is wrong on {n_wmss_only}, the reverse on {n_sft_only}).")
    if n_wmss_only == 0 and n_sft_only == 0:
        say = "The two models were right on exactly the same problems: this run shows no difference either way."
    elif lo > 0:
        say = (f"The interval excludes 0: on these {diff.n} problems, in this one training run, WMSS beat the same "
               f"budget of SFT, by {lo:.1f} to {hi:.1f} points.")
    elif hi < 0:
        say = (f"The interval excludes 0: on these {diff.n} problems, in this one training run, WMSS fell behind "
               f"the same budget of SFT, by {-hi:.1f} to {-lo:.1f} points.")
    else:
        say = (f"The interval includes 0: this run cannot tell WMSS from plain SFT. It allows anything from "
               f"{lo:+.1f} to {hi:+.1f} points.")
    return [head, say, "The interval covers which test problems were drawn, not the training seed; the seeded "
            "comparison is the method lab's (benchmarks/README.md, Methods / WMSS)."]


def _stage_table(results: dict, title: str):
    """Accuracy per stage in at most 80 columns: accuracy, unparseable answers, accuracy per difficulty tier."""
    from rich import box
    from rich.table import Table

    order = {"easy": 0, "medium": 1, "hard": 2}
    tiers = sorted({d for r in results.values() for d in r["per_difficulty"]}, key=lambda d: (order.get(d, 3), d))
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("stage", justify="left", no_wrap=True)
    for col in ["acc %", "n", "unparsed"] + [f"{t} %" for t in tiers]:
        table.add_column(col, justify="right", no_wrap=True)
    for name, r in results.items():
        per = [f"{100 * r['per_difficulty'][t]['accuracy']:.1f}" if t in r["per_difficulty"] else "-" for t in tiers]
        table.add_row(name, f"{100 * r['accuracy']:.1f}", str(r["n"]), str(r["unparseable"]), *per)
    return table


def main(args) -> int:
    import warnings

    import torch

    _cpu_accelerator_env()
    import datasets
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from .evaluation import evaluate
    from .models import load_model, resolve_model_path
    from .stats import paired_bootstrap
    from .tasks import get_task
    from .wmss import WMSSConfig, run_wmss
    from .wmss.config import config_from

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
        f"[bold]WMSS demo[/] — {args.model!r} on [cyan]{args.task}[/]: {len(train)} training / {len(test)} test "
        f"problems\nSFT 1 epoch at {args.lr:g} → M1; then from M1, the same budget and schedule (lr "
        f"{args.wmss_lr:g}, constant) for WMSS (λ={args.mix_lambda}, {args.weight_formula} weights) and for plain "
        f"SFT\n{'LoRA' if args.lora else 'full fine-tuning'}, {torch.get_num_threads()} CPU thread(s)",
        title="weakstrong demo"))

    model, tokenizer = load_model(args.model)
    bar = _RichProgress(console)
    results, timings = {}, {}
    model_ref = {"model": model}

    def run_eval(title, short):
        t = time.time()
        bar.start_task(f"eval {short}", len(test))
        r = evaluate(model_ref["model"], tokenizer, task, test, max_new_tokens=max_new, batch_size=24,
                     progress=lambda k: bar.advance(k))
        results[title] = r
        timings[f"eval {short}"] = time.time() - t
        console.print(f"  {title}: accuracy {100 * r['accuracy']:.1f}%"
                      + (f", balanced {100 * r['balanced_accuracy']:.1f}%" if r["balanced_accuracy"] is not None else ""))
        return r

    stage_start = {}
    wmss_info = {}

    def on_stage_end(name, path, trainer):
        # the chain calls this after each stage: evaluate M1 after SFT, the strong model after the WMSS round
        now = time.time()
        if name == "sft":
            timings["SFT"] = now - stage_start["sft"]
            model_ref["model"] = trainer.model
            run_eval("M1 (SFT, 1 epoch)", "M1")
        else:
            timings["WMSS"] = now - stage_start["wmss"]
            model_ref["model"] = trainer.model  # the strong model
            wmss_info.update(selection=trainer.selection, steps=trainer.state.global_step)
            run_eval(f"M1 + WMSS ({trainer.state.global_step} steps)", "WMSS")
        model_ref["model"] = None
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
        if args.eval_m0:
            run_eval("M0 (untrained)", "M0")
        model_ref["model"] = model = None  # the chain loads M0 from its path; free the evaluated copy
        stage_start["sft"] = time.time()
        result = run_wmss(resolve_model_path(args.model), train, config, sft_args=sft_args, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[bar.callback()], on_stage_end=on_stage_end,
                          on_stage_begin=lambda name, trainer: trainer.remove_callback(PrinterCallback))
        # the control: plain SFT from the same M1, as many optimizer steps as the WMSS round took, same batch, rate
        # and schedule, a fresh optimizer (as phase 3 has)
        t = time.time()
        steps = wmss_info["steps"]
        control_dir = os.path.join(args.output_dir, CONTROL)
        ccfg = config_from(SFTConfig, config, output_dir=control_dir, max_steps=steps, num_train_epochs=1)
        m1 = result.stages["sft"]
        if args.lora:
            from .wmss.pipeline import _load_adapter_model

            m1 = _load_adapter_model(result.stages["m0"], m1, ccfg)
        control = SFTTrainer(m1, args=ccfg, train_dataset=train, processing_class=tokenizer,
                             callbacks=[bar.callback()])
        control.remove_callback(PrinterCallback)
        control.train()
        control.save_model(control_dir)
        control.save_state()
        timings["SFT control"] = time.time() - t
        model_ref["model"] = control.model
        run_eval(f"M1 + SFT ({control.state.global_step} steps)", "SFT")
        model_ref["model"] = control = None
        final_dir = result.final_dir

    console.print(_stage_table(results, f"{args.task}: {len(test)} held-out problems"))
    wmss_r, sft_r = list(results.values())[-2], list(results.values())[-1]
    a = [float(c) for c in wmss_r["correct"]]
    b = [float(c) for c in sft_r["correct"]]
    diff = paired_bootstrap(a, b, n_resamples=10_000, seed=args.seed)
    only_w = sum(x > y for x, y in zip(a, b))
    only_s = sum(y > x for x, y in zip(a, b))
    for line in _verdict(diff, only_w, only_s):
        console.print(line)
    sel = wmss_info["selection"]["stats"]
    tel = Table(title="Phase 2 (nats)", box=None)
    for col in ("H weak M0", "H strong M1", "mean ΔH", "ΔH<0", "kept set", "duplicates"):
        tel.add_column(col, justify="right", no_wrap=True)
    tel.add_row(f"{sel['entropy/weak']:.3f}", f"{sel['entropy/strong']:.3f}", f"{sel['entropy/delta']:+.3f}",
                f"{sel['delta/share_negative']:.0%}", f"{int(sel['selection/size'])}/{len(train)}",
                str(int(sel['selection/duplicates'])))
    console.print(tel)
    timings["total"] = time.time() - t_start
    console.print("Wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    console.print(f"Entropy plot: {os.path.join(final_dir, 'selection', 'entropies.png')}")
    console.print(f"Models (AutoModelForCausalLM): WMSS {final_dir}, SFT control {control_dir}")
    return 0
