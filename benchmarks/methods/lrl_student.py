"""Linguistic RL efficacy: the embedded SmolLM2-135M-Instruct as student on balanced MeetingRooms.

Stage 1 (teacher loop) runs once; the student is fine-tuned and evaluated once per seed on the same held-out
test set; the table reports mean and 95% CI (Student t over seeds) of accuracy / balanced accuracy. The
teacher is whatever is given (default: the embedded model itself, on CPU). ``--pitfall`` also reproduces the
original's setup once (faithful generator with always-YES easy tier, answer-only targets, whole-sequence loss).

Every step writes its result under ``--output`` and is skipped on a rerun, so an interrupted run continues.

    OMP_NUM_THREADS=1 nohup python benchmarks/methods/lrl_student.py --output /tmp/lrl_bench --pitfall \
        > /tmp/lrl_bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci(values):
    """Mean and 95% half-width (Student t) of a list of fractions."""
    if len(values) < 2:
        return values[0] if values else float("nan"), float("nan")
    sd = statistics.stdev(values)
    return statistics.mean(values), T975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


def fmt(values) -> str:
    m, h = ci(values)
    return f"{100 * m:.1f}" if math.isnan(h) else f"{100 * m:.1f} ± {100 * h:.1f}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="/tmp/lrl_bench")
    p.add_argument("--student", default="default")
    p.add_argument("--teacher", default="default", help="'default', a path, or an endpoint URL::MODEL (as weakstrong lrl --teacher)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-problems", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--distill-every", type=int, default=2)
    p.add_argument("--test-problems", type=int, default=30)
    p.add_argument("--test-seed", type=int, default=123)
    p.add_argument("--curriculum-size", type=int, default=40)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-batch-size", type=int, default=8, help="effective batch (per step)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="split each step's batch into this many micro-batches (same effective batch, less memory)")
    p.add_argument("--lora-r", type=int, default=8, help="student LoRA rank (the library default: 8)")
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", nargs="+", default=["q_proj", "v_proj"],
                   help="student LoRA target modules (the library default: q_proj v_proj)")
    p.add_argument("--teacher-tokens", type=int, default=160)
    p.add_argument("--reflect-tokens", type=int, default=160, help="budget of a journal entry and of a distillation")
    p.add_argument("--eval-tokens", type=int, default=160,
                   help="generation budget at evaluation; a worked rationale of a hard problem is up to ~120 tokens")
    p.add_argument("--no-teacher-rationale", action="store_true", help="always use the task's worked rationale")
    p.add_argument("--pitfall", action="store_true", help="also reproduce the original's collapse once")
    p.add_argument("--no-strategy-control", action="store_true",
                   help="also train seed 0 on the same curriculum WITHOUT the strategy in the prompt (and evaluate "
                        "without it): what the worked rationales alone teach")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_batch_size % args.grad_accum:
        raise SystemExit(f"--train-batch-size {args.train_batch_size} must be a multiple of --grad-accum {args.grad_accum}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from weakstrong.lrl import (LinguisticRLConfig, LinguisticRLStudentTrainer, ReflectionLoop, build_curriculum,
                                curriculum_summary, evaluate, majority_baseline)
    from weakstrong.tasks import MeetingRoomsTask
    from weakstrong.lrl.cli import LRLScriptArguments, make_teacher

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    task = MeetingRoomsTask()
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.0f}s] {msg}", flush=True)

    def cached(name, fn):
        path = out / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        value = fn()
        path.write_text(json.dumps(value, indent=2))
        return value

    def score_only(r, data, strat=None):
        rows = list(data)
        per = {}
        for d in task.difficulties:
            idx = [i for i, row in enumerate(rows) if row["difficulty"] == d]
            if idx:
                per[d] = task.score([rows[i] for i in idx], [r["completions"][i] for i in idx],
                                    echo=strat)["balanced_accuracy"]
        return ({k: v for k, v in r.items() if k != "completions"}
                | {"per_difficulty_balanced": per, "completions_head": r["completions"][:3],
                   "predictions": [task.parse_answer(c, echo=strat) for c in r["completions"]]})

    teacher = make_teacher(LRLScriptArguments(teacher=args.teacher, teacher_batch_size=16))  # as `weakstrong lrl`
    log(f"teacher: {teacher.name}")
    test_set = task.generate(args.test_problems, seed=args.test_seed)
    train = task.generate(args.train_problems, seed=42)

    loop = ReflectionLoop(teacher, task, out / "teacher", batch_size=args.batch_size, distill_every=args.distill_every,
                          journal_examples=3, solve_max_new_tokens=args.teacher_tokens, reflect_max_new_tokens=args.reflect_tokens,
                          distill_max_new_tokens=args.reflect_tokens, strategy_max_chars=600,
                          log=lambda m: log(f"teacher loop {m}"))
    lr = loop.run(train)
    strategy = lr.strategy
    strategy_texts = [s["text"] for s in lr.strategies]
    test_problems = [r["problem"] for r in test_set]
    log(f"teacher loop done: train accuracy {lr.accuracy:.3f}, strategy v{lr.strategy_version}:\n{strategy}")

    def ev(model_or_teacher, strat, tokenizer=None, data=test_set):
        return score_only(evaluate(model_or_teacher, task, data, strategy=strat, tokenizer=tokenizer,
                                   max_new_tokens=args.eval_tokens, batch_size=16), data, strat)

    teacher_plain = cached("teacher_no_strategy", lambda: ev(teacher, None))
    log(f"teacher, no strategy: bal {teacher_plain['balanced_accuracy']:.3f}")
    teacher_strat = cached("teacher_strategy", lambda: ev(teacher, strategy))
    log(f"teacher + strategy: bal {teacher_strat['balanced_accuracy']:.3f}")
    same_model = args.student == args.teacher
    before = teacher_strat if same_model else cached("student_before", lambda: ev(args.student, strategy))
    majority = score_only(majority_baseline(task, test_set), test_set)

    def train_student(seed, curriculum, name, **overrides):
        cfg = dict(output_dir=str(out / name), report_to="none", seed=seed, num_train_epochs=args.epochs,
                   learning_rate=args.lr, per_device_train_batch_size=args.train_batch_size // args.grad_accum,
                   gradient_accumulation_steps=args.grad_accum, max_length=384,
                   logging_steps=1, save_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
                   gradient_checkpointing=False, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                   lora_target_modules=list(args.lora_targets))
        cfg.update(overrides)
        config = LinguisticRLConfig(**cfg)
        trainer = LinguisticRLStudentTrainer(args.student, args=config, train_dataset=curriculum)
        result = trainer.train()
        trainer.save_model(str(out / name / "adapter"))  # the trained student, to re-evaluate without retraining
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return trainer, {"train_loss": result.training_loss, "first_loss": losses[:1], "last_loss": losses[-1:],
                         "steps": result.global_step, "curriculum": curriculum_summary(task, curriculum)}

    after = {}
    for seed in args.seeds:
        def run_seed(seed=seed):
            curriculum = build_curriculum(task, lr.results, strategy, size=args.curriculum_size, seed=999 + seed,
                                          use_teacher_rationale=not args.no_teacher_rationale,
                                          strategy_version=lr.strategy_version,
                                          exclude=test_problems, strategies=strategy_texts)
            trainer, info = train_student(seed, curriculum, f"student_seed{seed}")
            log(f"seed {seed}: trained {info}")
            return {**ev(trainer.model, strategy, trainer.processing_class), "train": info}
        after[seed] = cached(f"student_after_seed{seed}", run_seed)
        log(f"seed {seed}: student after bal {after[seed]['balanced_accuracy']:.3f} acc {after[seed]['accuracy']:.3f}")

    control = None
    if args.no_strategy_control:
        def run_control():
            curriculum = build_curriculum(task, lr.results, None, size=args.curriculum_size, seed=999,
                                          use_teacher_rationale=not args.no_teacher_rationale,
                                          exclude=test_problems, strategies=strategy_texts)
            trainer, info = train_student(0, curriculum, "control_no_strategy")
            return {**ev(trainer.model, None, trainer.processing_class), "train": info}
        control = cached("control_no_strategy", run_control)
        log(f"no-strategy control: bal {control['balanced_accuracy']:.3f} acc {control['accuracy']:.3f}")

    pitfall = None
    if args.pitfall:
        def run_pitfall():
            faithful_test = task.generate(args.test_problems, seed=args.test_seed, faithful=True)
            curriculum = build_curriculum(task, [], strategy, size=args.curriculum_size, seed=999, balanced=False,
                                          completion="answer", generator_options={"faithful": True},
                                          exclude=[r["problem"] for r in faithful_test])
            res = {"before": ev(args.student, strategy, data=faithful_test),
                   "majority": score_only(majority_baseline(task, faithful_test), faithful_test)}
            trainer, info = train_student(0, curriculum, "pitfall", completion_only_loss=False)
            res["after"] = {**ev(trainer.model, strategy, trainer.processing_class, data=faithful_test), "train": info}
            return res
        pitfall = cached("pitfall", run_pitfall)
        log(f"pitfall after: acc {pitfall['after']['accuracy']:.3f} bal {pitfall['after']['balanced_accuracy']:.3f}")

    # ------------------------------------------------------------------ table
    seeds = list(after)
    rows = [("student before (= teacher + strategy)" if same_model else "student before", [before] * len(seeds)),
            ("student after LRL", [after[s] for s in seeds]),
            ("teacher, no strategy", [teacher_plain] * len(seeds)),
            ("teacher + final strategy", [teacher_strat] * len(seeds)),
            ("always-majority", [majority] * len(seeds))]
    train_info = after[seeds[0]]["train"] if seeds else {}
    lines = [f"Teacher: {teacher.name}. Student: {args.student}. Test: {args.test_problems} balanced problems "
             f"(seed {args.test_seed}); student seeds {seeds} (mean ± 95% CI, t over seeds; rows without training "
             "are deterministic).", "",
             f"Student training: curriculum {args.curriculum_size} examples "
             f"(rationale sources {train_info.get('curriculum', {}).get('rationale_source')}), {args.epochs:g} epochs, "
             f"batch {args.train_batch_size}, {train_info.get('steps')} steps, lr {args.lr:g}, LoRA r={args.lora_r} "
             f"α={args.lora_alpha} on {', '.join(args.lora_targets)}, completion-only loss. Teacher loop: "
             f"{args.train_problems} problems, batches of {args.batch_size}, distilled every {args.distill_every}; "
             f"final strategy v{lr.strategy_version}.", "",
             "| system | accuracy | balanced acc. | recall YES | recall NO | easy bal. | medium bal. | hard bal. | unparseable |",
             "|---|---|---|---|---|---|---|---|---|"]

    if control:
        rows.insert(2, ("control: same curriculum and training, no strategy (seed 0)", [control] * len(seeds)))
    for name, rs in rows:
        bal_by_diff = [fmt([x["per_difficulty_balanced"].get(d, float("nan")) for x in rs])
                       for d in ("easy", "medium", "hard")]
        lines.append(f"| {name} | {fmt([x['accuracy'] for x in rs])} | {fmt([x['balanced_accuracy'] for x in rs])} | "
                     f"{fmt([x['per_class_recall'].get('YES', 0) for x in rs])} | "
                     f"{fmt([x['per_class_recall'].get('NO', 0) for x in rs])} | " + " | ".join(bal_by_diff)
                     + f" | {statistics.mean(x['unparseable'] for x in rs):.1f} |")
    if pitfall:
        lines += ["", f"Pitfall (faithful generator, answer-only targets, whole-sequence loss, seed 0; "
                  f"{args.test_problems} faithful test problems):", "",
                  "| system | accuracy | balanced acc. | recall YES | recall NO | predicted YES | unparseable |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("before", "after", "majority"):
            r = pitfall[name]
            yes = sum(row.get("YES", 0) for row in r["confusion"].values())
            lines.append(f"| {name} | {100 * r['accuracy']:.1f} | {100 * r['balanced_accuracy']:.1f} | "
                         f"{100 * r['per_class_recall'].get('YES', 0):.1f} | {100 * r['per_class_recall'].get('NO', 0):.1f} | "
                         f"{yes}/{r['n']} | {r['unparseable']} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
