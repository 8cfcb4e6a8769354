"""Phase 1 of every seed: SFT from a random init to saturation (M1), snapshots for the weak-checkpoint sweep, and its
continuation at the same schedule (the arm ``sft_same``) in the same Trainer run.

Continuing inside the same run is exactly "SFT continued at the same schedule": the same AdamW state, the same
constant rate, the same data stream, as a resume from M1's checkpoint would be (the Trainer's resume = uninterrupted
run guarantee), without writing the optimizer state to disk.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from transformers import TrainerCallback

from .callbacks import EvalAtSteps, SnapshotAtSteps
from .config import LabConfig
from .model import lab_model
from .scoring import encode, pack
from .task import AdditionTask, char_tokenizer

PHASE1_FILE = "phase1.json"


def snapshot_name(fraction: float) -> str:
    """``w000`` (init), ``w010`` … ``w100`` (= M1): the folder of a phase-1 snapshot."""
    return f"w{round(100 * fraction):03d}"


@dataclass
class LabData:
    task: AdditionTask
    tokenizer: object
    train: object  # datasets.Dataset of prompt/completion rows
    test: object  # EncodedSet
    train_probe: object  # EncodedSet: the first 1,000 training problems


def lab_data(cfg: LabConfig, seed: int) -> LabData:
    """The seed's training set (drawn with ``seed``) and the fixed held-out set (``cfg.test_seed``)."""
    task, tok = AdditionTask(cfg.digits), lab_tokenizer(cfg)
    train_pairs, test_pairs = task.split(cfg.n_train, cfg.n_test, seed=1_000 + seed, test_seed=cfg.test_seed)
    return LabData(task, tok, task.dataset(train_pairs), encode(task, tok, test_pairs),
                   encode(task, tok, train_pairs[:cfg.probe_size]))


def lab_tokenizer(cfg: LabConfig):
    """The character tokenizer (``cfg.model == ""``) or the pretrained model's own."""
    if not cfg.model:
        return char_tokenizer()
    from transformers import AutoTokenizer

    from weakstrong.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))


def initial_model(cfg: LabConfig, tokenizer, seed: int):
    """M0: the seeded tiny Llama from scratch, or the pretrained model (fp32, same weights for every seed)."""
    if not cfg.model:
        return lab_model(tokenizer, cfg.hidden_size, cfg.num_layers, cfg.num_heads, seed=seed)
    from transformers import AutoModelForCausalLM

    from weakstrong.models import resolve_model_path

    return AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model), dtype="float32")


def sft_args(cfg: LabConfig, output_dir: str, seed: int, config_cls=None, **overrides):
    """The ``SFTConfig`` (or ``config_cls``, e.g. ``WMSSConfig``) every lab run starts from: CPU, fp32, no saving,
    completion-only loss (prompt/completion rows), one loss log per ~10 steps, quiet."""
    from trl import SFTConfig

    kw = dict(output_dir=output_dir, report_to="none", use_cpu=True, bf16=False, seed=seed, data_seed=seed,
              per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
              lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup_steps, save_strategy="no",
              logging_steps=10, disable_tqdm=True, max_length=64, completion_only_loss=True,
              dataloader_num_workers=0, gradient_checkpointing=False)
    kw.update(overrides)
    return (config_cls or SFTConfig)(**kw)


def quiet(trainer):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    return trainer


class _CpuMark(TrainerCallback):
    """Process CPU time at the start of training and at one given step (the end of phase 1)."""

    def __init__(self, step):
        self.step, self.start, self.at_step = step, None, None

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.process_time()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            self.at_step = time.process_time()


def phase1_dir(work: str, seed: int) -> str:
    return os.path.join(work, f"seed{seed}", "phase1")


def load_phase1(cfg: LabConfig, seed: int, work: str) -> dict | None:
    """The finished phase 1 of this seed under ``work`` (its record), or None. A record written with another
    config raises: the snapshots would not be the ones this config describes."""
    path = os.path.join(phase1_dir(work, seed), PHASE1_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    mine = cfg.phase1_identity()
    defaults = LabConfig().phase1_identity()  # fields added since the record was written have their defaults
    theirs = {k: record["config"].get(k, defaults[k]) for k in mine}
    if theirs != mine:
        changed = {k: (theirs[k], v) for k, v in mine.items() if theirs[k] != v}
        raise ValueError(f"{path} was written with another phase-1 config {changed} (there, here); use another "
                         "--work folder or delete it")
    return record


def run_phase1(cfg: LabConfig, seed: int, work: str, extra_epochs: int | None = None, log=print) -> dict:
    """Train phase 1 (``cfg.phase1_epochs``) and its continuation (``extra_epochs``, default the budget) for one
    seed; save the snapshots; return (and write) the record: the curve rows, CPU seconds, snapshot paths."""
    import torch
    from trl import SFTTrainer

    cached = load_phase1(cfg, seed, work)
    if cached is not None:
        return cached
    data = lab_data(cfg, seed)
    folder = phase1_dir(work, seed)
    os.makedirs(folder, exist_ok=True)
    extra = cfg.budget_epochs if extra_epochs is None else extra_epochs
    spe, p1 = cfg.steps_per_epoch, cfg.phase1_steps
    evals = {e * spe: ("phase1", e) for e in range(0, cfg.phase1_epochs + 1, cfg.phase1_eval_every)}
    evals[p1] = ("phase1", cfg.phase1_epochs)
    for f in cfg.budget_points:
        evals[p1 + round(f * cfg.budget_steps)] = ("sft_same", f)
    for e in range(1, extra + 1):  # the continuation, epoch by epoch (saturation: flat for >= 2 more epochs?)
        evals.setdefault(p1 + e * spe, ("continued", e))
    snaps = {snapshot_name(f): s for f, s in cfg.snapshot_steps().items()}

    def show(row):
        log(json.dumps({k: row[k] for k in ("label", "step", "train_loss", "accuracy", "train_accuracy", "nll")
                        if k in row}))

    ev = EvalAtSteps(evals, data.test, data.train_probe, on_row=show)
    sn = SnapshotAtSteps(snaps, folder, data.tokenizer)
    cpu = _CpuMark(p1)
    model = initial_model(cfg, data.tokenizer, seed)
    args = sft_args(cfg, os.path.join(folder, "trainer"), seed, num_train_epochs=cfg.phase1_epochs + extra)
    trainer = quiet(SFTTrainer(model, args=args, train_dataset=data.train, processing_class=data.tokenizer,
                               callbacks=[cpu, ev, sn]))
    wall = time.time()
    trainer.train()
    end = time.process_time()
    eval_before = sum(1 for r in ev.rows if r["step"] <= p1)
    # evaluation CPU is split by row count (each row is the same work)
    per_eval = ev.eval_cpu_s / max(len(ev.rows), 1)
    record = {
        "seed": seed, "config": json.loads(cfg.to_json()), "rows": ev.rows,
        "phase1_cpu_s": round(cpu.at_step - cpu.start - per_eval * eval_before, 2),
        "continued_cpu_s": round(end - cpu.at_step - per_eval * (len(ev.rows) - eval_before), 2),
        "wall_s": round(time.time() - wall, 1), "eval_cpu_s": round(ev.eval_cpu_s, 2),
        "snapshots": sn.saved, "torch_threads": torch.get_num_threads(),
        "correct": {f"{k[0]}@{k[1]:g}": pack(v) for k, v in ev.correct.items()
                    if k == ("phase1", cfg.phase1_epochs) or k[0] == "sft_same"},
    }
    with open(os.path.join(folder, PHASE1_FILE), "w") as f:
        json.dump(record, f)
    return record
