"""The whole WMSS method as a resumable chain of TRL runs: M0 → ``SFTTrainer`` → M1 → ``WMSSTrainer`` × K rounds.

Stage outputs under ``args.output_dir`` (each an ordinary ``save_pretrained`` folder, each stage one Trainer run with
its own ``checkpoint-N`` folders):

* ``m0/`` — only when M0 is passed as a loaded model: it is written once (no copy of it is kept in memory while SFT
  changes it in place);
* ``sft/`` — phase 1, M1;
* ``round-<r>/`` — round r (phases 2 + 3): strong = the previous stage's output, weak = the one before it
  (round 1: (M1, M0); round 2: (M2, M1); ...). In LoRA mode the stages are adapters on one base (M0), and round 1's
  weak branch is a zero-initialised second adapter (= M0, trainable).

``wmss_run.json`` records the run's identity and the finished stages; ``resume=True`` skips finished stages and
continues the interrupted one from its last checkpoint (a changed identity refuses), so an interrupted run ends like
an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable

from .config import IDENTITY_FIELDS, config_from

JOURNAL = "wmss_run.json"


@dataclass
class WMSSResult:
    """What :func:`run_wmss` produced: the final strong model's folder and each stage's folder and log."""

    final_dir: str
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> output folder ("m0", "sft", "round-1", ...)
    log_history: dict[str, list] = field(default_factory=dict)
    selections: dict[int, dict] = field(default_factory=dict)  # round -> {"indices", "stats"}


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _dataset_digest(dataset) -> str:
    fp = getattr(dataset, "_fingerprint", None)
    if fp:
        return str(fp)
    return hashlib.sha1(json.dumps(dataset[:3], default=str).encode()).hexdigest()  # pragma: no cover


def run_wmss(model, train_dataset, args, *, rounds: int = 1, sft: bool = True, sft_args=None, weak_model=None,
             eval_dataset=None, processing_class=None, peft_config=None, callbacks=None, compute_metrics=None,
             resume: bool = False, on_stage_begin: Callable | None = None,
             on_stage_end: Callable | None = None) -> WMSSResult:
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
        resume: continue a run in ``output_dir`` (finished stages are skipped, the interrupted one resumes from its
            last checkpoint). ``False`` starts over (stage folders are overwritten, as a Trainer does).
        on_stage_begin: ``f(stage_name, trainer)`` before each stage's ``train()`` (e.g. to remove a callback).
        on_stage_end: ``f(stage_name, output_folder, trainer)`` after each stage that ran in this call (e.g. to
            evaluate M1).
    Returns:
        :class:`WMSSResult`.
    """
    from transformers import PreTrainedModel
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

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

    def source_name(m):
        return resolve_model_path(m) if isinstance(m, str) else f"<{type(m).__name__} object>"

    identity = {"model": source_name(model), "weak_model": None if weak_model is None else source_name(weak_model),
                "sft": bool(sft), "rounds": int(rounds), "lora": lora, "data": _dataset_digest(train_dataset),
                "n_train": len(train_dataset), **{k: getattr(args, k) for k in IDENTITY_FIELDS}}
    journal = {"identity": identity, "stages": {}, "selections": {}}
    if resume and os.path.isfile(journal_path):
        old = _read_json(journal_path)
        changed = {k: (old["identity"].get(k), v) for k, v in identity.items() if old["identity"].get(k) != v}
        if changed:
            raise ValueError(f"Cannot resume the WMSS run in {root}: its identity changed {changed} (recorded, now). "
                             "Resume with the same model, data and settings, or use a new output_dir.")
        journal = old

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
            if isinstance(sft_args, SFTConfig):
                cfg = config_from(SFTConfig, sft_args, output_dir=sft_dir)
            else:
                cfg = config_from(SFTConfig, args, output_dir=sft_dir, **dict(sft_args or {}))
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
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
