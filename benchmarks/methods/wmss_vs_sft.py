"""WMSS vs SFT at equal budget on the embedded SmolLM2-135M-Instruct (the paper's comparison, at CPU scale).

Per seed (training set and training order vary with the seed; the held-out test set is fixed):

* ``sft``       — one SFT run of ``--sft-epochs`` epochs from M0 (constant LR), evaluated after every epoch: rows
                  ``sft1`` (= M1, saved and shared by every other arm of the seed), ``sft2`` (2 epochs of SFT: the
                  equal-budget baseline), ``sft3`` … (the SFT learning curve: does more SFT still help?);
* ``wmss``      — 1 WMSS epoch from (weak M0, strong M1), λ = 0.5 (phase 2 + phase 3) at ``--wmss-lr``;
* ``sft2_lr``   — the control with WMSS's schedule: 1 SFT epoch from M1 with a fresh optimizer at ``--wmss-lr``;
* ``wmss_samelr`` — WMSS with phase 3 at the SFT rate ``--lr`` (fresh Adam on the fitted M1: see the README);
* ``wd_ds``     — selection only: phase 3 with λ = 1 (the strong model alone on the drawn set);
* ``wd_jt``     — joint training only: phase 3 on the whole training set, no selection;
* ``lam0.3``, ``lam0.7`` — WMSS with λ = 0.3 / 0.7;
* ``frozen``    — WMSS with the weak model frozen (``freeze_weak=True``; the paper's Table 3 ablation).

Arms run in priority order (all seeds of the core comparison first), CSV rows written as soon as an arm is done,
so a run cut short still leaves usable rows; ``--resume --keep-work`` skips rows already in the CSV. The markdown
table (mean ± 95% CI, Student t over seeds, and the difference to SFT-2 paired by seed) is written next to the CSV.

``--profile`` instead measures the time per optimizer step and the peak memory (RSS, each configuration in its
own process) of an SFT step (``SFTTrainer``) and a phase-3 step (``WMSSTrainer``), in full and LoRA modes.

    python benchmarks/methods/wmss_vs_sft.py --seeds 0 1 2 --core-only --out benchmarks/methods/results
    python benchmarks/methods/wmss_vs_sft.py --profile --out benchmarks/methods/results
    # smoke test on a tiny model (seconds): any --model path works
    python benchmarks/methods/wmss_vs_sft.py --model TINY_DIR --seeds 0 --train-size 8 --test-size 4 \\
        --batch-size 4 --max-new-tokens 4 --core-only --out /tmp/wmss-smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ARMS = {
    "sft1": "SFT, 1 epoch (M1)",
    "sft2": "SFT, 2 epochs (baseline)",
    "sft3": "SFT, 3 epochs",
    "sft4": "SFT, 4 epochs",
    "sft2_lr": "1 SFT + 1 SFT epoch at the phase-3 LR (control)",
    "wmss": "1 SFT + 1 WMSS (λ=0.5)",
    "wmss_samelr": "1 SFT + 1 WMSS (λ=0.5), phase 3 at the SFT LR",
    "wd_ds": "1 SFT + WD-DS only (λ=1)",
    "wd_jt": "1 SFT + WD-JT only (no selection)",
    "lam0.3": "1 SFT + 1 WMSS (λ=0.3)",
    "lam0.7": "1 SFT + 1 WMSS (λ=0.7)",
    "frozen": "1 SFT + 1 WMSS (λ=0.5), weak model frozen",
}
CORE = ["sft", "wmss", "sft2_lr"]  # "sft" is one run that yields the rows sft1 … sft{--sft-epochs}
ABLATIONS = ["frozen", "wd_ds", "wd_jt", "lam0.3", "lam0.7", "wmss_samelr"]
FIELDS = ["seed", "arm", "accuracy", "correct", "n", "train_s", "eval_s", "train_steps", "drawn", "task", "acc_easy",
          "acc_medium", "acc_hard", "strong_ce_first", "strong_ce_last", "mixed_ce_first", "mixed_ce_last"]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def common_config(out_dir, opts, **kw):
    from weakstrong.wmss import WMSSConfig

    base = dict(output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, seed=opts.seed_base,
                per_device_train_batch_size=opts.batch_size, learning_rate=opts.lr, lr_scheduler_type="constant",
                activation_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True,
                max_length=512, entropy_batch_size=8, dataloader_pin_memory=False)
    base.update(kw)
    return WMSSConfig(**base)


def evaluate_model(model, tok, task, test, opts):
    from weakstrong.evaluation import evaluate

    t = time.time()
    r = evaluate(model, tok, task, test, max_new_tokens=opts.max_new_tokens, batch_size=16)
    return r, time.time() - t


def run_seed_arm(seed, arm, opts, task, train, test, work):
    """Train one arm of one seed; returns its CSV rows (the SFT arm gives one row per epoch)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

    from weakstrong.models import resolve_model_path
    from weakstrong.wmss import WMSSTrainer

    m0 = resolve_model_path(opts.model)
    m1_dir = os.path.join(work, f"seed{seed}", "m1")
    tok = AutoTokenizer.from_pretrained(m0)
    t = time.time()
    drawn = ""
    extra = {}
    if arm == "sft":
        # one SFT run of --sft-epochs epochs (constant LR): M1 is saved after epoch 1 for the WMSS arms, and the model
        # is evaluated after every epoch, so the rows sft1, sft2 (the equal-budget baseline), sft3 ... form the
        # SFT learning curve of the seed
        from transformers import TrainerCallback
        from trl import SFTTrainer

        rows = []

        class EpochEval(TrainerCallback):
            def on_epoch_end(self, args, state, control, model=None, **kw):
                epoch = round(state.epoch)
                if epoch == 1:
                    model.save_pretrained(m1_dir)
                    tok.save_pretrained(m1_dir)
                model.eval()
                result, eval_s = evaluate_model(model, tok, task, test, opts)
                model.train()
                rows.append(_row(seed, f"sft{epoch}", result, time.time() - t - sum(r["eval_s"] for r in rows),
                                 eval_s, state.global_step, "", opts))
                print(json.dumps(rows[-1]), flush=True)

        cfg = common_config(os.path.join(work, f"seed{seed}", "sft"), opts, seed=seed)
        cfg.num_train_epochs = opts.sft_epochs
        tr = SFTTrainer(m0, args=cfg, train_dataset=train, processing_class=tok, callbacks=[EpochEval()])
        tr.remove_callback(PrinterCallback)
        tr.train()
        del tr
        return rows
    elif arm == "sft2_lr":
        # the control of the WMSS arms: the same schedule (fresh optimizer from M1, phase-3 LR, one epoch) as plain SFT
        from trl import SFTTrainer

        cfg = common_config(os.path.join(work, f"seed{seed}", arm), opts, seed=seed, learning_rate=opts.wmss_lr)
        cfg.num_train_epochs = 1
        tr = SFTTrainer(m1_dir, args=cfg, train_dataset=train, processing_class=tok)
        tr.remove_callback(PrinterCallback)
        tr.train()
        model, steps = tr.model, tr.state.global_step
    else:
        lam = {"wmss": 0.5, "wd_ds": 1.0, "wd_jt": 0.5, "lam0.3": 0.3, "lam0.7": 0.7, "frozen": 0.5,
               "wmss_samelr": 0.5}[arm]
        # one WMSS round on the seed's M1 with M0 as the weak model: one WMSSTrainer run (selection + phase 3)
        cfg = common_config(os.path.join(work, f"seed{seed}", arm), opts, seed=seed, mix_lambda=lam,
                            selection=arm != "wd_jt", num_train_epochs=1, save_entropy_plots=(arm == "wmss"),
                            freeze_weak=arm == "frozen",
                            learning_rate=opts.lr if arm == "wmss_samelr" else opts.wmss_lr)
        tr = WMSSTrainer(m1_dir, weak_model=m0, args=cfg, train_dataset=train, processing_class=tok)
        tr.remove_callback(PrinterCallback)
        tr.train()
        model, steps = tr.model, tr.state.global_step
        drawn = int(tr.selection["stats"]["selection/size"])
        # the strong model's own CE and the mixed CE over phase 3 (first and last logged step): does the strong
        # model alone get better while the mixture is fitted?
        logs = [h for h in tr.state.log_history if "strong_ce" in h]
        extra = {"strong_ce_first": round(logs[0]["strong_ce"], 4), "strong_ce_last": round(logs[-1]["strong_ce"], 4),
                 "mixed_ce_first": round(logs[0]["mixed_ce"], 4), "mixed_ce_last": round(logs[-1]["mixed_ce"], 4)} if logs else {}
    train_s = time.time() - t
    result, eval_s = evaluate_model(model, tok, task, test, opts)
    del model, tr
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return [{**_row(seed, arm, result, train_s, eval_s, steps, drawn, opts), **extra}]


def _row(seed, arm, result, train_s, eval_s, steps, drawn, opts):
    return {"seed": seed, "arm": arm, "accuracy": round(result["accuracy"], 4),
            "correct": round(result["accuracy"] * result["n"]), "n": result["n"], "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1), "train_steps": steps, "drawn": drawn, "task": opts.task,
            **{f"acc_{d}": round(v["accuracy"], 4) for d, v in sorted(result.get("per_difficulty", {}).items())}}


def mean_ci(values):
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return m, half


def write_table(rows, path_md, opts):
    by_arm = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(100 * float(r["accuracy"]))
    # every arm of a seed shares that seed's training set and M1, so differences are paired by seed
    def paired(arm, ref):
        base = {int(r["seed"]): 100 * float(r["accuracy"]) for r in rows if r["arm"] == ref}
        diffs = [100 * float(r["accuracy"]) - base[int(r["seed"])] for r in rows
                 if r["arm"] == arm and int(r["seed"]) in base]
        if arm == ref or not diffs:
            return "—"
        dm, dh = mean_ci(diffs)
        return f"{dm:+.1f} " + ("(1 seed)" if math.isnan(dh) else f"± {dh:.1f}")

    lines = ["| arm | seeds | accuracy % (mean ± 95% CI) | Δ vs SFT 2 epochs (paired) | Δ vs control sft2_lr (paired) "
             "| per seed |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        if arm not in by_arm:
            continue
        vals = by_arm[arm]
        m, h = mean_ci(vals)
        ci = "n/a" if math.isnan(h) else f"± {h:.1f}"
        lines.append(f"| {ARMS[arm]} | {len(vals)} | {m:.1f} {ci} | {paired(arm, 'sft2')} | {paired(arm, 'sft2_lr')} | "
                     f"{', '.join(f'{v:.1f}' for v in vals)} |")
    n = {str(r["n"]) for r in rows}
    lines.append("")
    lines.append(f"Task {opts.task}, {opts.train_size} training problems per seed, {'/'.join(sorted(n))} held-out test "
                 f"problems, batch {opts.batch_size}, SFT lr {opts.lr:g}, phase-3 lr {opts.wmss_lr:g} (constant), "
                 "95% CI = Student t over seeds.")
    text = "\n".join(lines) + "\n"
    with open(path_md, "w") as f:
        f.write(text)
    return text


def run_efficacy(opts):
    import torch

    from weakstrong.tasks import get_task

    torch.set_num_threads(opts.threads)
    os.makedirs(opts.out, exist_ok=True)
    csv_path = os.path.join(opts.out, "wmss_vs_sft.csv")
    md_path = os.path.join(opts.out, "wmss_vs_sft.md")
    rows = []
    if opts.resume and os.path.isfile(csv_path):
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
    done = {(int(r["seed"]), r["arm"]) for r in rows}
    done |= {(s, "sft") for s, a in list(done) if a == f"sft{opts.sft_epochs}"}
    task = get_task(opts.task)
    test = task.generate(opts.test_size, seed=10_000)
    plan = [(s, a) for s in opts.seeds for a in CORE]
    if not opts.core_only:
        plan += [(s, a) for a in ABLATIONS for s in opts.seeds]
    plan = [(s, a) for s, a in plan if a in opts.arms]
    for seed, arm in plan:
        if (seed, arm) in done:
            continue
        train = task.generate(opts.train_size, seed=100 + seed)
        t = time.time()
        if arm != "sft" and not os.path.isdir(os.path.join(opts.work, f"seed{seed}", "m1")):
            raise SystemExit(f"M1 of seed {seed} is not in {opts.work}: rerun without --resume for this seed, or keep "
                             "the scratch folder between runs with --keep-work")
        new = run_seed_arm(seed, arm, opts, task, train, test, opts.work)
        rows = [r for r in rows if (int(r["seed"]), r["arm"]) not in {(x["seed"], x["arm"]) for x in new}] + new
        print(json.dumps(new[-1]), f"({time.time() - t:.0f}s)", flush=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        print(write_table(rows, md_path, opts), flush=True)
    if not opts.keep_work:
        shutil.rmtree(opts.work, ignore_errors=True)


# --------------------------------------------------------------------------------------------- profile


def profile_one(mode: str, opts) -> dict:
    """Time per optimizer step and peak RSS of one configuration: sft|joint × full|lora.

    ``sft``: an ``SFTTrainer`` run; ``joint``: a ``WMSSTrainer`` run (selection off, so only phase-3 steps are timed)
    with weak = M0 (full: a second model; LoRA: the zero-initialised weak adapter on the same base).
    """
    import resource

    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from weakstrong.models import resolve_model_path
    from weakstrong.tasks import get_task
    from weakstrong.wmss import WMSSTrainer
    from weakstrong.wmss.config import config_from

    torch.set_num_threads(opts.threads)
    phase, kind = mode.split("-")
    m0 = resolve_model_path(opts.model)
    tok = AutoTokenizer.from_pretrained(m0)
    train = get_task(opts.task).generate(opts.batch_size * (opts.profile_steps + 1), seed=5)
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    peft_config = None
    if kind == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    steps = opts.profile_steps
    cfg = common_config(os.path.join(opts.work, f"profile-{mode}"), opts, selection=False, dedup=False,
                        max_steps=steps, entropy_batch_size=opts.batch_size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if phase == "sft":
        tr = SFTTrainer(m0, args=config_from(SFTConfig, cfg), train_dataset=train, processing_class=tok,
                        peft_config=peft_config, callbacks=[Timer()])
    else:
        if kind == "lora":
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM

            strong, weak = get_peft_model(AutoModelForCausalLM.from_pretrained(m0), peft_config), None
        else:
            strong, weak = m0, m0
        tr = WMSSTrainer(strong, weak_model=weak, args=cfg, train_dataset=train, processing_class=tok, callbacks=[Timer()])
    tr.remove_callback(PrinterCallback)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tr.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trained = tr.joint_model if phase != "sft" else tr.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    return {"mode": mode, "step_s_median": statistics.median(times[1:]), "steps": len(times),
            "peak_rss_mb": round(peak), "rss_after_load_mb": round(loaded_rss), "rss_before_mb": round(base_rss),
            "trainable_params": trainable}


def run_profile(opts):
    os.makedirs(opts.out, exist_ok=True)
    results = []
    for mode in ("sft-full", "joint-full", "sft-lora", "joint-lora"):
        cmd = [sys.executable, __file__, "--profile-one", mode, "--threads", str(opts.threads), "--batch-size",
               str(opts.batch_size), "--profile-steps", str(opts.profile_steps), "--task", opts.task,
               "--work", opts.work, "--model", opts.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        print(out, flush=True)
    by = {r["mode"]: r for r in results}
    lines = ["| mode | phase | s / step (median) | ratio to SFT step | peak RSS MB | ratio to SFT peak | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for kind in ("full", "lora"):
        sft = by[f"sft-{kind}"]
        for phase in ("sft", "joint"):
            r = by[f"{phase}-{kind}"]
            lines.append(f"| {kind} | {'SFT' if phase == 'sft' else 'phase 3 (joint)'} | {r['step_s_median']:.2f} | "
                         f"{r['step_s_median'] / sft['step_s_median']:.2f}× | {r['peak_rss_mb']} | "
                         f"{r['peak_rss_mb'] / sft['peak_rss_mb']:.2f}× | {r['trainable_params']:,} |")
    saved = by["joint-full"]["peak_rss_mb"] - by["joint-lora"]["peak_rss_mb"]
    lines.append("")
    lines.append(f"Phase 3 in LoRA mode peaks {saved} MB below full mode "
                 f"({by['joint-lora']['peak_rss_mb']} vs {by['joint-full']['peak_rss_mb']} MB RSS).")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(opts.out, "wmss_step_profile.md"), "w") as f:
        f.write(text)
    with open(os.path.join(opts.out, "wmss_step_profile.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--task", default="arithmetic", choices=["arithmetic", "meeting_rooms"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=CORE + ABLATIONS, choices=CORE + ABLATIONS)
    p.add_argument("--sft-epochs", type=int, default=2, help="epochs of the SFT run (≥ 2: epoch 2 is the baseline)")
    p.add_argument("--core-only", action="store_true", help="only the SFT run and WMSS")
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--test-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of SFT (phase 1 and the SFT baseline)")
    p.add_argument("--wmss-lr", type=float, default=2e-5,
                   help="learning rate of phase 3 (all WMSS arms but wmss_samelr) and of the sft2_lr control")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed-base", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--work", default="/tmp/wmss_bench_work", help="scratch folder for models (deleted at the end)")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--resume", action="store_true", help="skip (seed, arm) rows already in the CSV")
    p.add_argument("--profile", action="store_true", help="step time and peak memory, SFT vs phase 3, full vs LoRA")
    p.add_argument("--profile-one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile-steps", type=int, default=4)
    opts = p.parse_args(argv)
    if opts.profile_one:
        print(json.dumps(profile_one(opts.profile_one, opts)), flush=True)
    elif opts.profile:
        run_profile(opts)
    else:
        run_efficacy(opts)


if __name__ == "__main__":
    main()
