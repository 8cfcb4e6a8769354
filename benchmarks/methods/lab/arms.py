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
from .phase1 import initial_model, lab_data, quiet, run_phase1, sft_args, snapshot_name
from .scoring import unpack


#: label smoothing factors tried for the arm that matches WMSS's effect on the non-target logits
LABEL_SMOOTHING_GRID = (0.01, 0.03, 0.1, 0.3)
#: the factor chosen from the grid (benchmarks/README.md, "the reviewers' controls": how)
LABEL_SMOOTHING = 0.01


@dataclass(frozen=True)
class Arm:
    """One arm. ``kind``: ``"sft_same"`` (the continuation inside phase 1's run), ``"sft"`` (fresh SFT from M1 at
    phase 3's schedule) or ``"wmss"``. ``weak``: fraction of phase 1 of the weak snapshot (None = the config's).
    ``lr``: phase 3's peak rate (None = ``cfg.p3_lr``). ``weak_zero``: the weak model is M1 with its output head
    set to 0, frozen, and selection is off, so the mixed logits are exactly ``λ·z_strong``: the temperature-only
    control (with a near-uniform weak model, e.g. the init, WMSS's ``λ·z_strong + (1-λ)·z_weak`` is ≈ that).
    It runs through the same WMSSTrainer path as every WMSS arm (TRL's SFTTrainer computes its loss from the head's
    weight directly, so a hook on the head's output would not reach its loss). ``weak_transform``: ``"shuffled"``
    (the weak snapshot's logits permuted over the vocabulary per token, ``weak.ShuffledLogitsLM``: same entropy,
    no information; frozen) or ``"entropy_matched"`` (another seed's snapshot at the same fraction, its head scaled
    so that its mean entropy on this seed's training answers equals this seed's weak snapshot's, see
    :func:`entropy_match_seed`). ``label_smoothing``: an SFT arm's label smoothing factor (TRL's
    ``label_smoothing_factor``, computed from the full logits). Kind ``"sft_total"``: one SFT run from M0 for phase 1
    plus the budget (the same data order as phase 1 + ``sft_same``) at phase 1's rate with phase 3's schedule shape
    (phase 1's warmup, then linear decay to 0 over the whole run)."""

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
    weak_transform: str = ""
    label_smoothing: float = 0.0
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
    # the reviewers' controls (issue 23)
    "shuffled": Arm("WMSS, weak = 25% snapshot with its logits shuffled over the vocabulary per token (frozen)",
                    "wmss", freeze_weak=True, weak_transform="shuffled"),
    "entropy_matched": Arm("WMSS, weak = another seed's 25% snapshot scaled to the same mean entropy",
                           "wmss", weak_transform="entropy_matched"),
    "sft_total": Arm("SFT from M0 for phase 1 + the budget in one run at phase 1's rate, linear decay", "sft_total"),
    **{f"sft_ls{e:g}": Arm(f"SFT at phase 3's schedule, label smoothing {e:g}", "sft", label_smoothing=e)
       for e in LABEL_SMOOTHING_GRID},
}
CONTROLS = ("sft_same", "sft_p3")
#: the weak-checkpoint sweep, by fraction of phase 1 (the config's own weak fraction is the arm "wmss")
SWEEP = ("weak_w000", "weak_w010", "weak_w025", "weak_w050", "weak_w090", "weak_w098")
#: each arm's control: the SFT arm with the same phase-3 schedule and rate (None: compare with sft_p3)
RATE_CONTROL = {"wmss_lr2e-3": "sft_p3_lr2e-3"}


def arm_weak(cfg: LabConfig, arm: Arm):
    if arm.weak_zero:
        return "zero"
    fraction = cfg.weak_fraction if arm.weak is None else arm.weak
    return f"{arm.weak_transform} {fraction:g}" if arm.weak_transform else fraction


def entropy_match_seed(seed: int) -> int:
    """The seed whose phase-1 snapshot stands in for ``seed``'s weak model in the arm ``entropy_matched``: its
    partner ``seed ^ 1`` (0↔1, 2↔3, …): another init and another training set, inside any aligned block of seeds."""
    return seed ^ 1


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
            "p3_lr": "" if arm.kind == "sft_same" else cfg.lr if arm.kind == "sft_total" else (
                cfg.p3_lr if arm.lr is None else arm.lr),
            "label_smoothing": arm.label_smoothing,
            "weak": arm_weak(cfg, arm) if arm.kind == "wmss" else "", "train_cpu_s": round(cpu_s, 2),
            "train_steps": steps}
    keys = ("accuracy", "accuracy_se", "token_accuracy", "target_logit", "nontarget_logit_mean",
            "nontarget_logit_max", "margin", "entropy", "nll") + tuple(k for k in final if k.startswith("pass@"))
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
    if arm.kind == "sft_total":
        from trl import SFTTrainer

        # phase 1's run (same init, data order and warmup) with a linear decay over phase 1 + the budget; scored at
        # the budget points after phase 1's length (label 0 = this run at M1's step, not M1)
        p1_steps = cfg.phase1_steps
        ev = EvalAtSteps({p1_steps + s: f for s, f in _budget_evals(cfg).items()}, data.test, data.train_probe)
        args = sft_args(cfg, out_dir, seed, num_train_epochs=cfg.phase1_epochs + cfg.budget_epochs,
                        lr_scheduler_type="linear")
        trainer = quiet(SFTTrainer(initial_model(cfg, data.tokenizer, seed), args=args, train_dataset=data.train,
                                   processing_class=data.tokenizer, callbacks=[ev]))
        trainer.train()
        rows, correct, eval_cpu, steps = ev.rows, ev.correct[max(cfg.budget_points)], ev.eval_cpu_s, trainer.state.global_step
        if steps != p1_steps + cfg.budget_steps:
            raise RuntimeError(f"sft_total ran {steps} steps, expected {p1_steps + cfg.budget_steps}")
    elif arm.kind == "sft":
        from transformers import AutoModelForCausalLM
        from trl import SFTTrainer

        ev = EvalAtSteps(_budget_evals(cfg), data.test, data.train_probe)
        if arm.label_smoothing:
            common["label_smoothing_factor"] = arm.label_smoothing
        args = sft_args(cfg, out_dir, seed, max_steps=cfg.budget_steps, **common)
        trainer = quiet(SFTTrainer(AutoModelForCausalLM.from_pretrained(m1_dir), args=args, train_dataset=data.train,
                                   processing_class=data.tokenizer, callbacks=[ev]))
        trainer.train()
        rows, correct, eval_cpu, steps = ev.rows, ev.correct[max(cfg.budget_points)], ev.eval_cpu_s, trainer.state.global_step
    else:
        from weakstrong.wmss import WMSSConfig, WMSSTrainer

        fraction = cfg.weak_fraction if arm.weak is None else arm.weak
        if not arm.weak_zero and snapshot_name(fraction) not in snaps:
            raise ValueError(f"arm {name!r} needs the phase-1 snapshot at {fraction:g} of phase 1, which this "
                             f"config does not keep (snapshot_fractions={cfg.snapshot_fractions}); add it and rerun "
                             "phase 1 in a new --work folder")
        weak_dir = snaps[snapshot_name(fraction)] if not arm.weak_zero else _zero_head(m1_dir, out_dir)
        weak_src = weak_dir
        if arm.weak_transform == "shuffled":
            from transformers import AutoModelForCausalLM

            from .weak import ShuffledLogitsLM

            if not arm.freeze_weak or arm.rounds != 1:
                raise ValueError(f"arm {name!r}: shuffled weak logits need freeze_weak=True and one round")
            weak_src = ShuffledLogitsLM(AutoModelForCausalLM.from_pretrained(weak_dir), seed=seed)
        elif arm.weak_transform == "entropy_matched":
            from .weak import answer_logits, entropy_matched, mean_entropy

            if arm.rounds != 1:
                raise ValueError(f"arm {name!r}: an entropy-matched weak model is defined for one round")
            from transformers import AutoModelForCausalLM

            other = entropy_match_seed(seed)
            t_other = time.process_time()
            other_snaps = run_phase1(cfg, other, work, log=log)["snapshots"]
            eval_cpu += time.process_time() - t_other  # the partner's phase 1 (when not cached) is not this arm's cost
            sel = training_set(cfg, seed, data)
            target = mean_entropy(answer_logits(AutoModelForCausalLM.from_pretrained(weak_dir), sel))
            info = entropy_matched(other_snaps[snapshot_name(fraction)], target, sel, out_dir, reference_dir=weak_dir)
            weak_src = info.pop("path")
            extra.update(info, em_source_seed=other)
        elif arm.weak_transform:
            raise ValueError(f"arm {name!r}: unknown weak_transform {arm.weak_transform!r}")
        per_round = cfg.budget_steps // arm.rounds
        strong_src = m1_dir
        rows, steps, correct = [], 0, None
        sizes = []
        for r in range(1, arm.rounds + 1):
            steps_r = per_round if r < arm.rounds else cfg.budget_steps - per_round * (arm.rounds - 1)
            evals = _budget_evals(cfg, offset=steps, upto=steps_r)
            if r > 1 or cfg.model:
                # round r > 1: scored at the end of the previous round; a pretrained model's M1 is scored once, by
                # sft_p3 (it is the same M1 for every arm, and one evaluation costs a CPU-minute there)
                evals.pop(0, None)
            ev = EvalAtSteps(evals, data.test, data.train_probe)  # callbacks get the strong (user's) model
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


def training_set(cfg: LabConfig, seed: int, data=None):
    """The seed's whole training set as an ``EncodedSet`` (the selection set of WD-DS: its answer tokens are the
    tokens whose entropies the selection averages)."""
    from .phase1 import lab_data as _lab_data
    from .scoring import encode

    data = data or _lab_data(cfg, seed)
    pairs, _ = data.task.split(cfg.n_train, cfg.n_test, seed=1_000 + seed, test_seed=cfg.test_seed)
    return encode(data.task, data.tokenizer, pairs)


def describe() -> str:
    return json.dumps({k: v.title for k, v in ARMS.items()}, indent=1)
