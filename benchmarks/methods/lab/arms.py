"""The arms of the lab: what each trains after M1, all with the same budget (``cfg.budget_steps`` optimizer steps
at ``cfg.batch_size``, i.e. ``cfg.budget_epochs`` epochs of the full training set), and how one (arm, seed) runs.

Every WMSS arm is the library's ``weakstrong.wmss.WMSSTrainer`` (one round = one Trainer run); the SFT arms are
TRL's ``SFTTrainer``. Budget = optimizer steps of the strong model, as in the paper (1 SFT + 1 WMSS epoch vs 2 SFT
epochs). A WMSS step also runs the weak model (≈ 2× the FLOPs): each row reports its CPU seconds too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

from .callbacks import EvalAtSteps
from .config import LabConfig
from .phase1 import lab_data, quiet, run_phase1, sft_args, snapshot_name
from .scoring import unpack


@dataclass(frozen=True)
class Arm:
    """One arm. ``kind``: ``"sft_same"`` (the continuation inside phase 1's run), ``"sft"`` (fresh SFT from M1 at
    phase 3's schedule) or ``"wmss"``. ``weak``: fraction of phase 1 of the weak snapshot (None = the config's).
    ``lr``: phase 3's peak rate (None = ``cfg.p3_lr``). ``weak_zero``: the weak model is M1 with its output head
    set to 0, frozen, and selection is off, so the mixed logits are exactly ``λ·z_strong``: the temperature-only
    control (with a near-uniform weak model, e.g. the init, WMSS's ``λ·z_strong + (1-λ)·z_weak`` is ≈ that).
    It runs through the same WMSSTrainer path as every WMSS arm (TRL's SFTTrainer computes its loss from the head's
    weight directly, so a hook on the head's output would not reach its loss)."""

    title: str
    kind: str
    mix_lambda: float = 0.5
    selection: bool = True
    freeze_weak: bool = False
    weight_formula: str = "paper"
    rounds: int = 1
    weak: float | None = None
    lr: float | None = None
    weak_zero: bool = False
    wmss: dict = field(default_factory=dict)


ARMS: dict[str, Arm] = {
    "sft_same": Arm("SFT continued, same schedule", "sft_same"),
    "sft_p3": Arm("SFT continued at phase 3's schedule", "sft"),
    "wmss": Arm("WMSS λ=0.5", "wmss"),
    "wmss_l0.3": Arm("WMSS λ=0.3", "wmss", mix_lambda=0.3),
    "wmss_l0.7": Arm("WMSS λ=0.7", "wmss", mix_lambda=0.7),
    "wd_ds": Arm("WD-DS only (λ=1)", "wmss", mix_lambda=1.0),
    "wd_jt": Arm("WD-JT only (no selection)", "wmss", selection=False),
    "frozen": Arm("WMSS, weak frozen", "wmss", freeze_weak=True),
    "official": Arm("WMSS, official weights", "wmss", weight_formula="official"),
    "rounds2": Arm("WMSS, 2 rounds", "wmss", rounds=2),
    "weak_w000": Arm("WMSS, weak = init", "wmss", weak=0.0),
    "weak_w010": Arm("WMSS, weak = 10% of phase 1", "wmss", weak=0.10),
    "weak_w025": Arm("WMSS, weak = 25% of phase 1", "wmss", weak=0.25),
    "weak_w050": Arm("WMSS, weak = 50% of phase 1", "wmss", weak=0.50),
    "weak_w090": Arm("WMSS, weak = 90% of phase 1", "wmss", weak=0.90),
    "weak_w098": Arm("WMSS, weak = 98% of phase 1", "wmss", weak=0.98),
    "temp_only": Arm("CE of 0.5·z_strong only (weak = zero logits, frozen, no selection)", "wmss", selection=False,
                     freeze_weak=True, weak_zero=True),
    "sft_p3_lr2e-3": Arm("SFT at phase 3's schedule, peak 2e-3", "sft", lr=2e-3),
    "wmss_lr2e-3": Arm("WMSS λ=0.5, peak 2e-3", "wmss", lr=2e-3),
    "wmss_l0.3_lr5e-4": Arm("WMSS λ=0.3, peak 5e-4", "wmss", mix_lambda=0.3, lr=5e-4),
}
CONTROLS = ("sft_same", "sft_p3")
#: the weak-checkpoint sweep, by fraction of phase 1 (the config's own weak fraction is the arm "wmss")
SWEEP = ("weak_w000", "weak_w010", "weak_w025", "weak_w050", "weak_w090", "weak_w098")
#: each arm's control: the SFT arm with the same phase-3 schedule and rate (None: compare with sft_p3)
RATE_CONTROL = {"wmss_lr2e-3": "sft_p3_lr2e-3"}


def arm_weak(cfg: LabConfig, arm: Arm):
    if arm.weak_zero:
        return "zero"
    return cfg.weak_fraction if arm.weak is None else arm.weak


def _zero_head(m1_dir: str, out_dir: str) -> str:
    """M1 with its output head's weight (and bias) set to 0, saved under ``out_dir/weak-zero``: every logit is 0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(m1_dir)
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.zero_()
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    path = os.path.join(out_dir, "weak-zero")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(m1_dir).save_pretrained(path)
    return path


def _budget_evals(cfg: LabConfig, offset: int = 0, upto: int | None = None) -> dict[int, float]:
    """{global step of this run: budget fraction} for the evaluation points (a run covering steps
    ``offset`` … ``offset + upto`` of the budget sees only its own points)."""
    out = {}
    for f in (0.0,) + tuple(cfg.budget_points):
        s = round(f * cfg.budget_steps) - offset
        if 0 <= s <= (cfg.budget_steps if upto is None else upto):
            out[s] = f
    return out


def _row(cfg, seed, name, arm, rows, cpu_s, steps, extra=None) -> dict:
    final = max(rows, key=lambda r: r["label"])
    base = {"arm": name, "seed": seed, "kind": arm.kind,
            "mix_lambda": arm.mix_lambda if arm.kind == "wmss" else "",
            "p3_lr": "" if arm.kind == "sft_same" else (cfg.p3_lr if arm.lr is None else arm.lr),
            "weak": arm_weak(cfg, arm) if arm.kind == "wmss" else "", "train_cpu_s": round(cpu_s, 2),
            "train_steps": steps}
    keys = ("accuracy", "accuracy_se", "token_accuracy", "target_logit", "nontarget_logit_mean",
            "nontarget_logit_max", "margin", "entropy", "nll")
    base.update({k: final[k] for k in keys})
    for r in rows:
        base[f"acc@{r['label']:g}"] = r["accuracy"]
    base.update(extra or {})
    return base


def run_arm(cfg: LabConfig, seed: int, name: str, work: str, log=print) -> dict:
    """Run arm ``name`` for ``seed`` (phase 1 first if this seed has none under ``work``). Returns
    ``{"row": one CSV row, "curve": rows along the budget, "correct": per-problem correctness at the end}``."""
    arm = ARMS[name]
    p1 = run_phase1(cfg, seed, work, log=log)
    if arm.kind == "sft_same":
        rows = [dict(r, label=r["label"][1]) for r in p1["rows"] if r["label"][0] == "sft_same"]
        m1 = next(r for r in p1["rows"] if list(r["label"]) == ["phase1", cfg.phase1_epochs])
        rows = [dict(m1, label=0.0)] + rows
        correct = unpack(p1["correct"][f"sft_same@{max(cfg.budget_points):g}"], cfg.n_test)
        return {"row": _row(cfg, seed, name, arm, rows, p1["continued_cpu_s"], cfg.budget_steps), "curve": rows,
                "correct": correct}

    data = lab_data(cfg, seed)
    snaps = p1["snapshots"]
    m1_dir = snaps[snapshot_name(1.0)]
    out_dir = os.path.join(work, f"seed{seed}", name)
    shutil.rmtree(out_dir, ignore_errors=True)
    warmup = round(cfg.p3_warmup_ratio * cfg.budget_steps)
    common = dict(learning_rate=cfg.p3_lr if arm.lr is None else arm.lr, warmup_steps=warmup,
                  lr_scheduler_type=cfg.p3_scheduler)
    t_cpu = time.process_time()
    eval_cpu = 0.0
    extra: dict = {}
    if arm.kind == "sft":
        from transformers import AutoModelForCausalLM
        from trl import SFTTrainer

        ev = EvalAtSteps(_budget_evals(cfg), data.test, data.train_probe)
        args = sft_args(cfg, out_dir, seed, max_steps=cfg.budget_steps, **common)
        trainer = quiet(SFTTrainer(AutoModelForCausalLM.from_pretrained(m1_dir), args=args, train_dataset=data.train,
                                   processing_class=data.tokenizer, callbacks=[ev]))
        trainer.train()
        rows, correct, eval_cpu, steps = ev.rows, ev.correct[max(cfg.budget_points)], ev.eval_cpu_s, trainer.state.global_step
    else:
        from weakstrong.wmss import WMSSConfig, WMSSTrainer

        if not arm.weak_zero and snapshot_name(arm_weak(cfg, arm)) not in snaps:
            raise ValueError(f"arm {name!r} needs the phase-1 snapshot at {arm_weak(cfg, arm):g} of phase 1, which this "
                             f"config does not keep (snapshot_fractions={cfg.snapshot_fractions}); add it and rerun "
                             "phase 1 in a new --work folder")
        weak_dir = snaps[snapshot_name(arm_weak(cfg, arm))] if not arm.weak_zero else _zero_head(m1_dir, out_dir)
        per_round = cfg.budget_steps // arm.rounds
        strong_src, weak_src = m1_dir, weak_dir
        rows, steps, correct = [], 0, None
        sizes = []
        for r in range(1, arm.rounds + 1):
            steps_r = per_round if r < arm.rounds else cfg.budget_steps - per_round * (arm.rounds - 1)
            evals = _budget_evals(cfg, offset=steps, upto=steps_r)
            if r > 1 or cfg.model:
                # round r > 1: scored at the end of the previous round; a pretrained model's M1 is scored once, by
                # sft_p3 (it is the same M1 for every arm, and one evaluation costs a CPU-minute there)
                evals.pop(0, None)
            ev = EvalAtSteps(evals, data.test, data.train_probe, get_model=lambda joint: joint.strong)
            args = sft_args(cfg, os.path.join(out_dir, f"round-{r}"), seed, config_cls=WMSSConfig,
                            max_steps=steps_r, mix_lambda=arm.mix_lambda, selection=arm.selection,
                            freeze_weak=arm.freeze_weak, weight_formula=arm.weight_formula,
                            save_entropy_plots=False, entropy_batch_size=512 if not cfg.model else 32,
                            **common)
            trainer = quiet(WMSSTrainer(strong_src, weak_model=weak_src, args=args, train_dataset=data.train,
                                        processing_class=data.tokenizer, callbacks=[ev]))
            trainer.train()
            stats = trainer.selection["stats"]
            sizes.append(len(set(trainer.selection["positions"])))
            for row in ev.rows:
                rows.append(dict(row, step=row["step"] + steps, round=r))
            eval_cpu += ev.eval_cpu_s
            if max(cfg.budget_points) in ev.correct:
                correct = ev.correct[max(cfg.budget_points)]
            steps += trainer.state.global_step
            if r == 1:
                extra.update({k.replace("selection/", "sel_"): v for k, v in stats.items()
                              if isinstance(v, (int, float))})
            if r < arm.rounds:  # round r+1: weak = this round's starting strong model, strong = its result
                nxt = os.path.join(out_dir, f"strong-{r}")
                trainer.save_model(nxt)
                strong_src, weak_src = nxt, strong_src
            del trainer
        extra["distinct_selected"] = "/".join(map(str, sizes))
    cpu = time.process_time() - t_cpu - eval_cpu
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"row": _row(cfg, seed, name, arm, rows, cpu, steps, extra), "curve": rows, "correct": correct}


def describe() -> str:
    return json.dumps({k: v.title for k, v in ARMS.items()}, indent=1)
