"""The whole WMSS method as a resumable chain of TRL runs: M0 → ``SFTTrainer`` → M1 → ``WMSSTrainer`` × K rounds.

Stage outputs under ``args.output_dir`` (each an ordinary ``save_pretrained`` folder, each stage one Trainer run with
its own ``checkpoint-N`` folders):

* ``m0/`` — only when M0 is passed as a loaded model: it is written once (no copy of it is kept in memory while SFT
  changes it in place);
* ``sft/`` — phase 1, M1;
* ``round-<r>/`` — round r (phases 2 + 3): strong = the previous stage's output, weak = the one before it
  (round 1: (M1, M0); round 2: (M2, M1); ...). In LoRA mode the stages are adapters on one base (M0), and round 1's
  weak branch is a zero-initialised second adapter (= M0, trainable).

``wmss_run.json`` records the run's identity (models, data, the chain's shape, the WMSS knobs and the training
settings of the SFT stage and of the rounds) and the finished stages; ``resume=True`` skips finished stages and
continues the interrupted one from its last checkpoint, so an interrupted run ends like an uninterrupted one. A run
made with other settings is refused with the differences named (:class:`WMSSRunError`): resuming it would mix two
runs. ``resume=False`` starts over and first removes the previous run's stage folders, so no old checkpoint is left
beside the new model. :func:`plan_wmss` says, without training, what a call would do (new / resume from where /
already finished).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .._trl_defaults import peft_wrapping
from ..cli import UserError
from .config import IDENTITY_FIELDS, config_from

JOURNAL = "wmss_run.json"
STAGE_DIR = re.compile(r"m0|sft|round-\d+")
#: SFTConfig fields that change what a stage trains (recorded for the SFT stage and for the rounds); a resume with
#: other values refuses. Where they are written (output_dir), how often one logs or saves, etc. may change.
TRAINING_FIELDS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
                   "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
                   "optim_args", "seed", "data_seed", "bf16", "fp16", "max_length", "truncation_mode", "padding_free",
                   "completion_only_loss", "assistant_only_loss", "loss_type", "model_init_kwargs",
                   "dataset_text_field", "neftune_noise_alpha", "label_smoothing_factor", "use_liger_kernel",
                   "chat_template_path", "eos_token", "pad_token")
#: LoRA settings recorded in the identity (peft ``LoraConfig`` attributes)
PEFT_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "target_parameters", "modules_to_save",
               "use_rslora", "use_dora", "bias", "task_type")


class WMSSRunError(UserError, ValueError):
    """``output_dir`` holds a WMSS run this call cannot continue (made with other settings, or stage folders
    without a journal); continuing would mix two runs."""


@dataclass
class WMSSResult:
    """What :func:`run_wmss` produced: the final strong model's folder and each stage's folder and log."""

    final_dir: str
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> output folder ("m0", "sft", "round-1", ...)
    log_history: dict[str, list] = field(default_factory=dict)
    selections: dict[int, dict] = field(default_factory=dict)  # round -> {"indices", "stats"}


logger = logging.getLogger(__name__)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _dataset_digest(dataset) -> str:
    fp = getattr(dataset, "_fingerprint", None)
    if fp:
        return str(fp)
    return hashlib.sha1(json.dumps(dataset[:3], default=str).encode()).hexdigest()  # pragma: no cover


def _plain(value):
    """A JSON-comparable copy of a setting (enums by value, sets sorted, tuples as lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _training_settings(config, overrides=None) -> dict:
    overrides = dict(overrides or {})
    return {k: _plain(overrides[k] if k in overrides else getattr(config, k)) for k in TRAINING_FIELDS
            if hasattr(config, k)}


def _sft_settings(args, sft_args) -> dict:
    """The SFT stage's training settings, read without building its config (a TrainingArguments built and dropped
    here would leave transformers' global DeepSpeed-config reference pointing at a dead object)."""
    from trl import SFTConfig

    if isinstance(sft_args, SFTConfig):
        return _training_settings(sft_args)
    return _training_settings(args, sft_args)


def _sft_config(args, sft_args, output_dir):
    from trl import SFTConfig

    if isinstance(sft_args, SFTConfig):
        return config_from(SFTConfig, sft_args, output_dir=output_dir)
    return config_from(SFTConfig, args, output_dir=output_dir, **dict(sft_args or {}))


def _flatten(identity: dict) -> dict:
    out = {}
    for k, v in identity.items():
        if isinstance(v, dict) and k != "model_init_kwargs":
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


@dataclass
class WMSSPlan:
    """What :func:`run_wmss` would do in ``output_dir``: ``status`` is ``"new"``, ``"resume"`` or ``"finished"``;
    ``done`` the finished stages, ``next_stage`` the stage that runs next and ``checkpoint`` the checkpoint it
    continues from (``None``: from its beginning); ``final_dir`` the final model's folder once finished."""

    status: str
    output_dir: str
    stages: list[str]
    done: list[str] = field(default_factory=list)
    next_stage: str | None = None
    checkpoint: str | None = None
    final_dir: str | None = None
    identity: dict = field(default_factory=dict, repr=False)
    journal: dict | None = field(default=None, repr=False)
    unchecked: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One sentence for the console."""
        if self.status == "new":
            return f"new WMSS run in {self.output_dir} ({', '.join(self.stages)})"
        if self.status == "finished":
            return (f"the WMSS run in {self.output_dir} is already finished ({', '.join(self.done)}); final model: "
                    f"{self.final_dir}")
        done = f"finished {', '.join(self.done)}; " if self.done else ""
        where = (f"continues from {os.path.basename(self.checkpoint)}" if self.checkpoint
                 else "starts from its beginning (no checkpoint of it was saved)")
        return f"resuming the WMSS run in {self.output_dir}: {done}{self.next_stage} {where}"


def plan_wmss(model, train_dataset, args, *, rounds: int = 1, sft: bool = True, sft_args=None, weak_model=None,
              peft_config=None, resume: bool = True, identity_extra: dict | None = None,
              setting_names: dict[str, str] | None = None,
              restart_hint: str = "resume=False (the previous run's stage folders are removed)") -> WMSSPlan:
    """Compare the run :func:`run_wmss` would make with the one recorded in ``args.output_dir`` (nothing is
    written). Raises :class:`WMSSRunError` when ``resume`` and the recorded run was made with other settings (each
    difference named as ``setting_names`` says, e.g. ``{"mix_lambda": "--mix_lambda"}``), or when stage folders lie
    there without a journal. ``resume=False`` plans a new run (``run_wmss`` removes the old run's stage folders)."""
    from transformers.trainer_utils import get_last_checkpoint

    from ..models import resolve_model_path

    lora = peft_config is not None
    root = args.output_dir
    journal_path = os.path.join(root, JOURNAL)

    def source_name(m):
        return resolve_model_path(m) if isinstance(m, str) else f"<{type(m).__name__} object>"

    identity = {"model": source_name(model), "weak_model": None if weak_model is None else source_name(weak_model),
                "sft": bool(sft), "rounds": int(rounds), "lora": lora, "data": _dataset_digest(train_dataset),
                "n_train": len(train_dataset), **{k: _plain(getattr(args, k)) for k in IDENTITY_FIELDS},
                "training": _training_settings(args),
                "sft_training": _sft_settings(args, sft_args) if sft else None,
                "peft": {k: _plain(getattr(peft_config, k)) for k in PEFT_FIELDS if hasattr(peft_config, k)}
                if lora else None,
                **(identity_extra or {})}
    stages = (["sft"] if sft else []) + [f"round-{r}" for r in range(1, int(rounds) + 1)]
    plan = WMSSPlan(status="new", output_dir=root, stages=stages, identity=identity)
    if not os.path.isfile(journal_path):
        leftovers = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                           if STAGE_DIR.fullmatch(n) and os.path.isdir(os.path.join(root, n)))
        if resume and leftovers:
            raise WMSSRunError(
                f"{root} holds stage folders {leftovers} but no {JOURNAL}: they are not a run this version can "
                f"continue (their checkpoints would be taken as this run's). Move them away, pass {restart_hint} "
                "to start afresh, or choose another output_dir.")
        return plan
    if not resume:
        return plan
    old = _read_json(journal_path)
    saved, now = _flatten(old.get("identity", {})), _flatten(identity)
    names = setting_names or {}
    plan.unchecked = sorted(k for k in identity if k not in old.get("identity", {}))
    diffs: dict[str, tuple[Any, Any]] = {}
    for k in now:
        if k in saved and saved[k] != now[k]:
            name = names.get(k, k)
            diffs.setdefault(name, (saved[k], now[k]))
    if diffs:
        lines = "; ".join(f"{name}: saved {a!r}, now {b!r}" for name, (a, b) in diffs.items())
        raise WMSSRunError(
            f"{root} holds a WMSS run made with other settings ({lines}). Resuming would mix two runs. Rerun with the "
            f"saved settings to resume it, pass {restart_hint} to start afresh, or choose another output_dir.")
    plan.journal = old
    plan.done = [st for st in stages if st in old.get("stages", {})]
    pending = [st for st in stages if st not in plan.done]
    if not pending:
        plan.status = "finished"
        plan.final_dir = os.path.join(root, stages[-1])
        return plan
    plan.status = "resume"
    plan.next_stage = pending[0]
    out_dir = os.path.join(root, pending[0])
    plan.checkpoint = get_last_checkpoint(out_dir) if os.path.isdir(out_dir) else None
    return plan


def remove_run(output_dir: str) -> list[str]:
    """Remove what a WMSS run wrote in ``output_dir`` (its journal and its stage folders ``m0``, ``sft``,
    ``round-<r>``); returns the removed names. Other files are left alone."""
    import shutil

    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if STAGE_DIR.fullmatch(name) and os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(name)
        elif name in (JOURNAL, JOURNAL + ".tmp"):
            os.remove(path)
            removed.append(name)
    return removed


def run_wmss(model, train_dataset, args, *, rounds: int = 1, sft: bool = True, sft_args=None, weak_model=None,
             eval_dataset=None, processing_class=None, peft_config=None, callbacks=None, compute_metrics=None,
             resume: bool = False, on_stage_begin: Callable | None = None,
             on_stage_end: Callable | None = None, identity_extra: dict | None = None,
             setting_names: dict[str, str] | None = None, restart_hint: str | None = None) -> WMSSResult:
    """WMSS end to end: SFT of ``model`` (M0 → M1), then ``rounds`` rounds of :class:`WMSSTrainer`.

    Args:
        model: M0 — a path, hub id, ``"default"`` or a loaded causal LM (then saved to ``output_dir/m0`` first).
            With ``sft=False`` it is taken as the already fine-tuned M1 and ``weak_model`` is M0.
        train_dataset: the SFT dataset, used by every stage (any format SFTTrainer takes).
        args: a :class:`WMSSConfig` for the rounds (``output_dir`` is the run's root; each round writes to
            ``round-<r>/``); its fields also configure the SFT stage unless ``sft_args`` says otherwise.
        rounds: number of WMSS rounds (the paper's main results use 1).
        sft: run phase 1. ``False``: ``model`` is M1 (full fine-tuning only).
        sft_args: an ``SFTConfig`` for phase 1, or a dict of overrides on top of ``args`` (e.g.
            ``{"learning_rate": 1e-4, "num_train_epochs": 1}``); ``None`` = ``args``' fields.
        weak_model: M0 when ``sft=False`` (a path or loaded model).
        peft_config: LoRA mode: SFT trains this adapter on M0; the rounds train it and a weak adapter on the same base.
        callbacks, compute_metrics, eval_dataset, processing_class: passed to every stage's trainer.
        resume: continue the run in ``output_dir`` (finished stages are skipped, the interrupted one resumes from
            its last checkpoint; a run made with other settings raises :class:`WMSSRunError` naming the
            differences). ``False`` starts over: the previous run's journal and stage folders are removed first.
        on_stage_begin: ``f(stage_name, trainer)`` before each stage's ``train()`` (e.g. to remove a callback).
        on_stage_end: ``f(stage_name, output_folder, trainer)`` after each stage that ran in this call (e.g. to
            evaluate M1).
        identity_extra: more entries of the run's identity, compared on resume (e.g. how a CLI made the data).
        setting_names, restart_hint: how the caller names the identity's settings and the way to start over, in
            the :class:`WMSSRunError` message (see :func:`plan_wmss`).
    Returns:
        :class:`WMSSResult`.
    """
    from transformers import PreTrainedModel
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    from ..models import resolve_model_path
    from .config import WMSSConfig
    from .trainer import WMSSTrainer

    if not isinstance(args, WMSSConfig):
        raise TypeError(f"args must be a WMSSConfig, got {type(args).__name__}. Fix: WMSSConfig.from_sft_config(...).")
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds}.")
    lora = peft_config is not None
    if not sft and (lora or weak_model is None):
        raise ValueError("sft=False takes model as M1 and needs weak_model=M0 (full fine-tuning). In LoRA mode, or "
                         "to start from M0, keep sft=True; or call WMSSTrainer directly with your SFT adapter model.")
    root = args.output_dir
    state = args.distributed_state if hasattr(args, "distributed_state") else None
    is_main = args.should_save
    journal_path = os.path.join(root, JOURNAL)
    plan = plan_wmss(model, train_dataset, args, rounds=rounds, sft=sft, sft_args=sft_args, weak_model=weak_model,
                     peft_config=peft_config, resume=resume, identity_extra=identity_extra,
                     setting_names=setting_names, **({"restart_hint": restart_hint} if restart_hint else {}))
    if plan.unchecked and is_main:
        logger.warning("WMSS: %s does not record %s (written by an older version): they cannot be checked on this "
                       "resume, and are recorded now", journal_path, plan.unchecked)
    journal = {"identity": plan.identity, "stages": {}, "selections": {}}
    if plan.journal is not None:
        journal = {**plan.journal, "identity": {**plan.identity, **plan.journal["identity"]}}
    elif not resume and os.path.isfile(journal_path):
        if is_main:
            removed = remove_run(root)
            logger.warning("WMSS: starting over in %s: removed the previous run's %s", root, removed)
        if state is not None:
            state.wait_for_everyone()

    def save_journal():
        if is_main:
            os.makedirs(root, exist_ok=True)
            tmp = journal_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(journal, f, indent=1)
            os.replace(tmp, journal_path)
        if state is not None:
            state.wait_for_everyone()

    save_journal()
    result = WMSSResult(final_dir="")

    def finish(name, out_dir, trainer):
        trainer.save_model(out_dir)
        trainer.save_state()
        journal["stages"][name] = out_dir
        if isinstance(trainer, WMSSTrainer) and trainer.selection is not None:
            journal["selections"][name] = {k: trainer.selection[k] for k in ("indices", "stats")}
        save_journal()
        result.log_history[name] = list(trainer.state.log_history)
        if on_stage_end is not None:
            on_stage_end(name, out_dir, trainer)

    def resume_point(out_dir):
        return get_last_checkpoint(out_dir) if resume and os.path.isdir(out_dir) else None

    def stage_log(out_dir):
        path = os.path.join(out_dir, "trainer_state.json")
        return _read_json(path)["log_history"] if os.path.isfile(path) else []

    # ---- M0 on disk (a loaded model is written once; nothing is deep-copied)
    m0 = model if sft else weak_model
    if isinstance(m0, str):
        m0_dir = resolve_model_path(m0)
    else:
        m0_dir = os.path.join(root, "m0")
        if "m0" not in journal["stages"]:
            if not isinstance(m0, PreTrainedModel):
                raise TypeError(f"M0 must be a path or a transformers PreTrainedModel, got {type(m0).__name__}.")
            if is_main:
                m0.save_pretrained(m0_dir)
                if processing_class is not None:
                    processing_class.save_pretrained(m0_dir)
            journal["stages"]["m0"] = m0_dir
            save_journal()
    outputs = [m0_dir]  # S_0 = M0, S_1 = M1, S_{r+1} = after round r
    result.stages["m0"] = m0_dir
    common = dict(eval_dataset=eval_dataset, processing_class=processing_class, callbacks=list(callbacks or []),
                  compute_metrics=compute_metrics)

    # ---- phase 1: SFT
    if sft:
        sft_dir = os.path.join(root, "sft")
        if "sft" not in journal["stages"]:
            cfg = _sft_config(args, sft_args, sft_dir)
            with peft_wrapping():
                trainer = SFTTrainer(m0_dir, args=cfg, train_dataset=train_dataset, peft_config=peft_config, **common)
            if on_stage_begin is not None:
                on_stage_begin("sft", trainer)
            trainer.train(resume_from_checkpoint=resume_point(sft_dir))
            finish("sft", sft_dir, trainer)
            del trainer
        else:
            result.log_history["sft"] = stage_log(sft_dir)
        outputs.append(sft_dir)
        result.stages["sft"] = sft_dir
    else:
        outputs.append(resolve_model_path(model) if isinstance(model, str) else model)

    # ---- rounds: phases 2 + 3
    for r in range(1, rounds + 1):
        name = f"round-{r}"
        out_dir = os.path.join(root, name)
        result.stages[name] = out_dir
        if name in journal["stages"]:
            result.log_history[name] = stage_log(out_dir)
            outputs.append(out_dir)
            continue
        seed = (args.seed if args.selection_seed is None else args.selection_seed) + r - 1
        cfg = config_from(WMSSConfig, args, output_dir=out_dir, selection_seed=seed)
        strong, weak = outputs[r], outputs[r - 1]
        if lora:
            strong = _load_adapter_model(m0_dir, strong, cfg)
            weak = None if r == 1 else weak
        trainer = WMSSTrainer(strong, weak_model=weak, args=cfg, train_dataset=train_dataset, **common)
        if on_stage_begin is not None:
            on_stage_begin(name, trainer)
        trainer.train(resume_from_checkpoint=resume_point(out_dir))
        finish(name, out_dir, trainer)
        del trainer
        outputs.append(out_dir)
    for name, sel in journal["selections"].items():
        result.selections[int(name.split("-")[1])] = sel
    result.final_dir = outputs[-1]
    return result


def _load_adapter_model(base_dir: str, adapter_dir: str, args):
    """``PeftModel(base M0, adapter)`` trainable, the base loaded with ``args.model_init_kwargs``."""
    from peft import PeftModel
    from trl.trainer.utils import create_model_from_path

    kwargs = dict(args.model_init_kwargs or {})
    if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    base = create_model_from_path(base_dir, **kwargs)
    with peft_wrapping():
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
