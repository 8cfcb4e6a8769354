"""The WMSS paper's comparison as one resumable command: SFT + WMSS against SFT for the same budget, evaluated on
the math benchmarks, with the verdict.

Steps (each skipped when its output is complete, so the command resumes after a crash or a Ctrl-C):

1. arm ``sft_wmss`` — ``recipes/wmss/train.py`` on the recipe: SFT for ``sft_epochs`` (M0 → M1), then one WMSS round
   (``num_train_epochs``) with M0 as the weak model (the paper: 1 + 1 epochs); ``--resume true``, so an interrupted
   stage continues from its last checkpoint;
2. arm ``sft`` — ``recipes/wmss/sft_baseline.py`` on the SAME recipe: plain SFT for ``sft_epochs + num_train_epochs``
   epochs (or ``sft_max_steps + max_steps`` steps), at the SFT stage's rate, with the same data, seed and batch, so
   its first epoch sees the data in the order the WMSS arm's SFT stage saw it;
3. ``weakstrong eval`` of both final models on the benchmarks (the paper's protocol by default);
4. ``weakstrong verdict``: sft_wmss − sft per benchmark and averaged, with intervals and the reading rule.

The global batch is fixed (the paper: 512) and the gradient accumulation derived from it:
``accumulation = global_batch / (per_device_train_batch_size × processes)``, refused when it does not divide.
Training runs through ``accelerate launch`` (``--launcher accelerate``, the recipe's DeepSpeed config) or, on one
device, plain Python (``--launcher python``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

ARMS = ("sft_wmss", "sft")
DONE = "DONE.json"


# --------------------------------------------------------------------------------------------- the SFT arm


def sft_baseline_run(script, config, model_args) -> dict:
    """The same-budget SFT arm (run under :func:`weakstrong.recipe_cli.run_recipe`, any number of processes): TRL's
    ``SFTTrainer`` with the recipe's SFT-stage settings for ``sft_epochs + num_train_epochs`` epochs (or
    ``sft_max_steps + max_steps`` steps when both are set), resumed from the last checkpoint in ``output_dir``, the
    final model (and tokenizer) saved to ``final_dir`` (default ``OUTPUT_DIR/final``)."""
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer, get_peft_config

    from .cli import UserError
    from .models import resolve_model_path
    from .recipe_cli import history_callback, train_and_save
    from .wmss.cli import load_train_dataset
    from .wmss.config import config_from

    if script.rounds != 1:
        raise UserError(f"the SFT baseline matches one WMSS round; the recipe has rounds {script.rounds}")
    steps = script.sft_max_steps > 0 or config.max_steps > 0
    if steps and not (script.sft_max_steps > 0 and config.max_steps > 0):
        raise UserError("set both sft_max_steps and max_steps (the SFT stage's and the WMSS round's steps) or "
                        "neither: the baseline trains for their sum")
    overrides = {"output_dir": config.output_dir}
    if steps:
        overrides["max_steps"] = script.sft_max_steps + config.max_steps
    else:
        overrides.update(num_train_epochs=script.sft_epochs + config.num_train_epochs, max_steps=-1)
    if script.sft_learning_rate is not None:
        overrides["learning_rate"] = script.sft_learning_rate
    cfg = config_from(SFTConfig, config, **overrides)
    model_path = resolve_model_path(model_args.model_name_or_path or "default")
    init = dict(cfg.model_init_kwargs or {})
    if model_args.dtype and model_args.dtype != "auto":
        init["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        init["attn_implementation"] = model_args.attn_implementation
    cfg.model_init_kwargs = init or None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    history: list[dict] = []
    trainer = SFTTrainer(model_path, args=cfg, train_dataset=load_train_dataset(script), processing_class=tokenizer,
                         peft_config=get_peft_config(model_args), callbacks=[history_callback(history)])
    resume = get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
    final = script.final_dir or os.path.join(cfg.output_dir, "final")
    # save_model writes the tokenizer too (processing_class); every rank leaves together (train_and_save's barrier)
    return train_and_save(trainer, resume, final, os.path.join(cfg.output_dir, "sft_baseline_log_history.json"),
                          history)


def sft_main_from_argv(argv=None) -> int:
    """Entry point of ``recipes/wmss/sft_baseline.py`` (any number of processes)."""
    from .recipe_cli import run_recipe
    from .wmss.cli import build_parser

    return run_recipe(build_parser, sft_baseline_run, argv)


# --------------------------------------------------------------------------------------------- the driver


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, help="the recipe YAML (e.g. recipes/wmss/paper/qwen3-4b-base.yaml)")
    parser.add_argument("--out", required=True, help="the run's folder: both arms, evaluations, verdict")
    parser.add_argument("--benchmark", action="append", default=[], metavar="NAME=PATH",
                        help="as weakstrong eval (repeat); none: train only")
    parser.add_argument("--processes", type=int, default=8, help="training processes (GPUs)")
    parser.add_argument("--global-batch", type=int, default=512, help="sequences per optimizer step (the paper: 512)")
    parser.add_argument("--launcher", default="accelerate", choices=["accelerate", "python"],
                        help="accelerate: accelerate launch with --accelerate-config; python: one process")
    parser.add_argument("--accelerate-config", default="recipes/accelerate/zero3.yaml",
                        help="the accelerate config of the training runs (the paper: DeepSpeed ZeRO-3, bf16)")
    parser.add_argument("--accelerate-args", default="",
                        help="more accelerate launch options, one string (e.g. '--mixed_precision no' on CPU)")
    parser.add_argument("--protocol", default="paper", choices=["paper", "pass@k"])
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"])
    parser.add_argument("--limit", type=int, default=None, help="evaluation: the first N problems per benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="evaluation: override the protocol's")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a recipe field for both arms (e.g. --set max_length=2048)")


def read_recipe(path: str) -> dict:
    import yaml

    from .cli import UserError

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such recipe")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a mapping of settings")
    return data


def accumulation_steps(global_batch: int, per_device: int, processes: int) -> int:
    """``global_batch / (per_device × processes)``, refused when it is not a whole number ≥ 1."""
    from .cli import UserError

    per_step = per_device * processes
    if per_device < 1 or processes < 1 or global_batch % per_step or global_batch < per_step:
        raise UserError(f"global batch {global_batch} is not a whole multiple of per_device_train_batch_size "
                        f"{per_device} x {processes} processes; change one of them (weakstrong plan says which "
                        "micro-batch fits)")
    return global_batch // per_step


def _train_command(args, script: str, output_dir: str, accum: int, extra: list[str]) -> list[str]:
    trainer_args = ["--config", args.recipe, "--output_dir", output_dir, "--gradient_accumulation_steps", str(accum),
                    *extra]
    for item in args.set:
        field, _, value = item.partition("=")
        trainer_args += [f"--{field}", value]
    if args.launcher == "python":
        return [sys.executable, script, *trainer_args]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config,
              "--num_processes", str(args.processes), *shlex.split(args.accelerate_args)]
    if "deepspeed" in open(args.accelerate_config).read().lower():
        launch += ["--gradient_accumulation_steps", str(accum)]  # DeepSpeed's own copy must match the trainer's
    return [*launch, script, *trainer_args]


def _step(name: str, out: str, cmd: list[str], dry_run: bool, log) -> None:
    """Run one step unless its DONE marker exists; the marker records the command."""
    from .cli import UserError

    marker = os.path.join(out, DONE)
    if os.path.isfile(marker):
        log(f"[{name}] done earlier ({marker}); skipped")
        return
    log(f"[{name}] {shlex.join(cmd)}")
    if dry_run:
        return
    start = time.time()
    rc = subprocess.call(cmd)
    if rc != 0:
        raise UserError(f"step {name} failed (exit status {rc}); fix the cause and run the same command again: "
                        "finished steps are skipped and this one resumes")
    os.makedirs(out, exist_ok=True)
    with open(marker, "w") as f:
        json.dump({"command": cmd, "seconds": round(time.time() - start, 1)}, f, indent=1)


def run_paper(args, scripts: dict, log=print) -> dict:
    """Both arms, their evaluation and the verdict (see the module docstring). ``scripts``: the training entry
    points, ``{"sft_wmss": recipes/wmss/train.py, "sft": recipes/wmss/sft_baseline.py}``."""
    from .cli import UserError

    recipe = read_recipe(args.recipe)
    if args.processes < 1:
        raise UserError(f"--processes must be >= 1, got {args.processes}")
    if args.launcher == "python" and args.processes != 1:
        raise UserError("--launcher python runs one process; use --launcher accelerate for several")
    if args.launcher == "python" and args.accelerate_args:
        raise UserError("--accelerate-args apply to --launcher accelerate")
    if args.launcher == "accelerate" and not os.path.isfile(args.accelerate_config):
        raise UserError(f"{args.accelerate_config}: no such accelerate config")
    for item in args.set:
        if "=" not in item or item.startswith("="):
            raise UserError(f"--set {item!r}: write FIELD=VALUE")
        if item.split("=", 1)[0] in ("output_dir", "gradient_accumulation_steps", "final_dir", "resume"):
            raise UserError(f"--set {item!r}: the driver sets this field itself")
    if recipe.get("rounds", 1) != 1:
        raise UserError(f"{args.recipe}: the paper's comparison is one WMSS round (rounds: 1)")
    per_device = int(recipe.get("per_device_train_batch_size", 8))
    for item in args.set:
        if item.startswith("per_device_train_batch_size="):
            per_device = int(item.split("=", 1)[1])
    accum = accumulation_steps(args.global_batch, per_device, args.processes)
    log(f"global batch {args.global_batch} = {per_device} per device x {args.processes} processes x {accum} "
        "accumulation steps")
    os.makedirs(args.out, exist_ok=True)
    finals = {}
    for arm in ARMS:
        arm_dir = os.path.join(args.out, arm)
        # the WMSS chain's final model is its last stage's folder (round-1); the SFT arm saves to final/
        finals[arm] = os.path.join(arm_dir, "round-1" if arm == "sft_wmss" else "final")
        extra = ["--resume", "true"] if arm == "sft_wmss" else ["--final_dir", finals[arm]]
        _step(f"train {arm}", arm_dir, _train_command(args, scripts[arm], arm_dir, accum, extra), args.dry_run, log)
        if not args.dry_run and not os.path.isfile(os.path.join(finals[arm], "config.json")):
            raise UserError(f"training {arm} finished without a model in {finals[arm]}; delete {arm_dir}/{DONE} "
                            "and run the same command again")
    if not args.benchmark:
        log("no --benchmark: training only")
        return {"finals": finals}
    evals = {}
    for arm in ARMS:
        evals[arm] = os.path.join(args.out, "eval", arm)
        cmd = [sys.executable, "-m", "weakstrong.cli", "eval", "--model", finals[arm], "--out", evals[arm],
               "--protocol", args.protocol, "--backend", args.backend]
        for spec in args.benchmark:
            cmd += ["--benchmark", spec]
        if args.limit is not None:
            cmd += ["--limit", str(args.limit)]
        if args.max_new_tokens is not None:
            cmd += ["--max-new-tokens", str(args.max_new_tokens)]
        # eval resumes by itself (saved generations are skipped); its own DONE marker lives beside the run
        _step(f"evaluate {arm}", os.path.join(evals[arm], "_step"), cmd, args.dry_run, log)
    verdict_dir = os.path.join(args.out, "verdict")
    cmd = [sys.executable, "-m", "weakstrong.cli", "verdict", evals["sft_wmss"], evals["sft"], "--names",
           "SFT+WMSS,SFT", "--out", verdict_dir]
    log(f"[verdict] {shlex.join(cmd)}")
    if not args.dry_run:
        rc = subprocess.call(cmd)
        if rc != 0:
            raise UserError(f"the verdict failed (exit status {rc})")
    return {"finals": finals, "evals": evals, "verdict": verdict_dir}


def main(argv=None, scripts=None) -> int:
    """``python recipes/wmss/paper.py ...``: parse and run (errors printed like ``weakstrong``'s)."""
    import argparse

    from .cli import UserError, debug_requested

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="paper.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_paper(args, scripts)
    except UserError as err:
        if debug:
            raise
        print(f"paper.py: error: {err}", file=sys.stderr)
        return 2
    return 0
