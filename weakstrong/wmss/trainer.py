"""``WMSSTrainer``: Weak-Driven Learning (WMSS) on top of TRL's ``SFTTrainer``.

``train()`` runs, for round r = 1..rounds:

1. phase 1 (round 1 only) — ordinary SFT of the model for ``sft_epochs``: M0 → M1 (skipped when ``weak_model``
   is given: the model is then taken as already fine-tuned, or when ``sft_epochs == 0``);
2. phase 2 — per-example entropies of the weak and strong models on the training set, sampling weights
   (``weight_formula``), a seeded weighted draw; written to ``round-<r>/entropies.jsonl`` (+ PNG);
3. phase 3 — joint training of strong + weak on the CE of their mixed logits (:class:`JointModel`) over the
   drawn examples for ``wmss_epochs``.

Each phase is one ``Trainer.train()`` call with its own output folder (``round-<r>/sft``, ``round-<r>/joint``)
holding its checkpoints; every checkpoint carries ``wmss_state.json`` (phase, round, drawn indices), so
``resume_from_checkpoint`` continues in the right phase. ``save_model()`` writes the strong model only.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import re
import warnings

import numpy as np
import torch
from datasets import Dataset
from transformers import set_seed
from trl import SFTTrainer

from .config import WMSSConfig
from ..distributed import gather_in_order, shard_indices
from .joint import JointModel
from .plots import write_entropies
from .selection import (
    example_entropies,
    messages_to_prompt_completion,
    no_supervised_tokens_error,
    resample,
    sampling_weights,
    selection_stats,
    unsupervised_rows,
)

logger = logging.getLogger(__name__)

STATE_NAME = "wmss_state.json"
INDEX_COLUMN = "wmss_index"
WEAK_SUBDIR = "weak"
PHASES = ("sft", "joint")


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def check_dataset(dataset, name: str = "train"):
    """Validate the columns WMSS needs; a ``messages`` dataset becomes prompt/completion (final assistant turn)."""
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {k: check_dataset(v, f"{name}[{k!r}]") for k, v in dataset.items()}
    if not isinstance(dataset, Dataset):
        raise TypeError(f"The {name} dataset must be a datasets.Dataset (WMSS re-samples it by index), got "
                        f"{type(dataset).__name__}. Fix: materialise it with Dataset.from_list / from_generator.")
    cols = dataset.column_names
    if "input_ids" in cols or ("prompt" in cols and "completion" in cols):
        return dataset
    if "messages" in cols:
        return dataset.map(messages_to_prompt_completion, remove_columns=["messages"])
    raise ValueError(
        f"The {name} dataset has columns {cols}, but WMSS needs 'prompt' and 'completion' columns (standard or "
        "conversational; the loss and the entropies are over the completion) or a 'messages' column whose last turn "
        "is the assistant's answer. Fix: rename your columns, or build the data with e.g. "
        "MeetingRoomsTask().generate(n, format='chat')."
    )


class WMSSTrainer(SFTTrainer):
    """Trainer for WMSS (Weak-Driven Learning): SFT, entropy-based data selection, joint weak+strong training.

    Args:
        model: the starting model M0: a path, a hub id, ``"default"`` (the embedded SmolLM2-135M-Instruct) or a
            loaded causal LM; with ``args.weak_model`` set it is taken as the already fine-tuned M1.
        args: a [`WMSSConfig`] (every `SFTConfig` field works).
        train_dataset: prompt/completion (standard or conversational) or messages rows; completion-only loss.
        eval_dataset, data_collator, processing_class, callbacks, optimizers: as in [`~trl.SFTTrainer`]
            (``optimizers`` is used for phase 1 only; phase 3 builds its optimizer over both branches).
        peft_config: LoRA mode. No second copy of the base weights: round 1's weak model is the base model with the
            adapter disabled (necessarily frozen); later rounds keep the previous round's strong adapter as a second,
            trainable adapter ``"weak"`` on the same base.

    Full fine-tuning keeps two models (strong and weak), each with its own optimizer state, as in the paper.
    """

    _tag_names = ["trl", "sft", "wmss"]
    _name = "WMSS"

    def __init__(self, model, args: WMSSConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, optimizers=(None, None),
                 peft_config=None, **kwargs):
        from ..models import resolve_model_path

        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = WMSSConfig(f"{str(name).rstrip('/').split('/')[-1]}-WMSS")
        elif not isinstance(args, WMSSConfig):
            raise TypeError(f"args must be a WMSSConfig, got {type(args).__name__}. Fix: WMSSConfig(**your_args.to_dict()).")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        train_dataset = check_dataset(train_dataset, "train")
        eval_dataset = check_dataset(eval_dataset, "eval")
        if args.completion_only_loss is False:
            warnings.warn("completion_only_loss=False: WMSS entropies and losses will include the prompt tokens.",
                          stacklevel=2)
        if isinstance(model, str):
            model = resolve_model_path(model)
        self._model_source = model if isinstance(model, str) else None
        self._m0_copy = None
        weak_given = args.weak_model is not None
        self._do_sft = (not weak_given) and args.sft_epochs > 0
        if not isinstance(model, str) and not weak_given and peft_config is None and not _is_peft(model):
            self._m0_copy = copy.deepcopy(model)  # M0, before phase 1 changes the model in place
        self._external_optimizers = optimizers
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers, peft_config=peft_config, **kwargs)
        self._lora = _is_peft(self.model)
        self._root_dir = args.output_dir
        self._full_train_dataset = self.train_dataset
        self._phase: str | None = None
        self._round = 0
        self._indices: list[int] | None = None
        self._joint: JointModel | None = None
        self._weak = None
        self._weak_adapter: str | None = None
        self.selections: dict[int, dict] = {}
        if self._lora and weak_given:
            raise ValueError("weak_model is not used in LoRA mode (round 1's weak model is the base model with the "
                             "adapter disabled). Fix: drop weak_model, or drop peft_config for full fine-tuning.")
        if (self._lora and args.gradient_checkpointing and self.is_deepspeed_enabled
                and self.accelerator.state.deepspeed_plugin.zero_stage == 3):
            # Phase 3 runs the same PeftModel twice per step (weak = other/disabled adapter, then strong); under
            # ZeRO-3 the checkpointed recomputation then sees released (empty) parameters and torch raises
            # "CheckpointError: Recomputed values ... have different metadata" in the first backward.
            raise ValueError("WMSS LoRA mode under DeepSpeed ZeRO-3 does not support gradient_checkpointing yet "
                             "(phase 3 fails with a torch CheckpointError). Fix: set gradient_checkpointing=False, "
                             "or use ZeRO-2 / DDP, or full fine-tuning (use_peft=false).")
        if self._lora and not args.freeze_weak:
            logger.warning("WMSS LoRA mode: in round 1 the weak model is the base model with the adapter disabled, "
                           "so it is frozen (freeze_weak=False applies from round 2, where it is a second adapter).")

    # ------------------------------------------------------------------ dataset preparation
    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        tag = dataset_name == "train" and isinstance(dataset, Dataset)
        n = len(dataset) if tag else 0
        if tag and INDEX_COLUMN not in dataset.column_names and "input_ids" not in dataset.column_names:
            dataset = dataset.add_column(INDEX_COLUMN, list(range(n)))
        prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if tag:
            if INDEX_COLUMN not in prepared.column_names:
                prepared = prepared.add_column(INDEX_COLUMN, list(range(len(prepared))))
            kept = set(prepared[INDEX_COLUMN])
            dropped = [i for i in range(n) if i not in kept]
            empty = unsupervised_rows(prepared["labels"], names=prepared[INDEX_COLUMN])
            if dropped or empty:
                raise no_supervised_tokens_error(sorted(dropped + list(empty)))
        return prepared

    # ------------------------------------------------------------------ models
    def _unwrapped_strong(self):
        model = self._joint.strong if self._joint is not None else self.model
        return self.accelerator.unwrap_model(model)

    def _load_causal_lm(self, source, init_kwargs=None):
        from trl.trainer.utils import create_model_from_path  # the loader SFTTrainer uses

        kwargs = dict(init_kwargs or {})
        kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        return create_model_from_path(source, **kwargs)

    def _check_vocab(self, weak, strong):
        vw = _full_shape(weak.get_output_embeddings().weight)[0]
        vs = _full_shape(strong.get_output_embeddings().weight)[0]
        if vw != vs:
            raise ValueError(
                f"The weak model's vocabulary ({vw} tokens) differs from the strong model's ({vs}): their logits "
                "cannot be mixed. Fix: use an earlier checkpoint of the same model (same tokenizer) as weak_model, "
                "or resize_token_embeddings so both use the same token ids."
            )

    def _round1_weak(self):
        """The weak model of round 1 (full mode): weak_model, else M0."""
        args = self.args
        if args.weak_model_object is not None:
            weak = args.weak_model_object
        elif args.weak_model is not None:
            from ..models import resolve_model_path

            weak = self._load_causal_lm(resolve_model_path(args.weak_model), args.weak_model_init_kwargs)
        elif self._m0_copy is not None:
            weak, self._m0_copy = self._m0_copy, None
        elif self._model_source is not None and self._do_sft:
            weak = self._load_causal_lm(self._model_source, args.model_init_kwargs)
        else:  # no phase 1 and no weak model: weak = a copy of the current model (ΔH = 0, warned below)
            weak = copy.deepcopy(self._unwrapped_strong())
        return weak

    def _setup_weak(self, r: int):
        """Build the weak branch of round r (full: a model; LoRA: disabled adapter or the 'weak' adapter)."""
        strong = self._unwrapped_strong()
        if self._lora:
            if r == 1:
                self._weak_adapter = None
                logger.warning("WMSS round 1 (LoRA): weak model = base model with the adapter disabled (frozen).")
            else:
                if "weak" in strong.peft_config:
                    strong.delete_adapter("weak")
                strong.load_adapter(self._snapshot_dir(r - 1), adapter_name="weak", is_trainable=True)
                strong.set_adapter("default")
                self._weak_adapter = "weak"
            self._weak = None
        else:
            weak = self._round1_weak() if r == 1 else self._load_causal_lm(self._snapshot_dir(r - 1))
            self._check_vocab(weak, strong)
            self._weak = weak.to(self.args.device)
            # drop a previous round's weak model before building the joint module
        freeze = self.args.freeze_weak or (self._lora and self._weak_adapter is None)
        self._joint = JointModel(strong, self._weak, lam=self.args.mix_lambda, freeze_weak=freeze,
                                 weak_adapter=self._weak_adapter)

    def _release_engine(self):
        """Tear down the DeepSpeed engine of the previous phase (phase 1, or the previous round's phase 3).

        Its ZeRO hooks (gradient reduction, ZeRO-3 parameter fetching) sit on the strong model's parameters; left
        in place they would fire again inside the next phase's engine, which wraps the :class:`JointModel` (strong
        + weak in ONE engine, so ZeRO-3 partitions both and, with ``freeze_weak=False``, its optimizer trains
        both). Parameters stay partitioned; :func:`gathered_for_forward` gathers them for phase 2.
        """
        engine = self.model_wrapped
        if self.is_deepspeed_enabled and engine is not None and hasattr(engine, "destroy") and hasattr(engine, "module"):
            engine.destroy()
            self.model_wrapped = self.model
            self.deepspeed = None

    def _snapshot_dir(self, r: int) -> str:
        return os.path.join(self._root_dir, f"round-{r}", "strong-start")

    # ------------------------------------------------------------------ phase 2
    def _event(self, name: str, **info):
        for cb in self.callback_handler.callbacks:
            fn = getattr(cb, "on_wmss_event", None)
            if fn is not None:
                fn(name, **info)

    def select(self, r: int) -> list[int]:
        """Phase 2 of round r: entropies of weak and strong, weights, the draw. Returns original row indices."""
        args = self.args
        data = self._full_train_dataset
        pad = self._tokenizer.pad_token_id
        bs = args.entropy_batch_size
        n = len(data)
        self._event("phase", phase="entropy", round=r, total=2 * n)
        # Several processes: each measures a contiguous block of rows; the blocks are gathered back in dataset
        # order, so every process holds the same entropies and draws the same (seeded) indices.
        acc = self.accelerator
        mine = shard_indices(n, acc.process_index, acc.num_processes)
        part = data if len(mine) == n else data.select(mine.tolist())
        with torch.no_grad():
            with self._joint.branch("strong") as m, gathered_for_forward(m):
                hs = example_entropies(m, part, batch_size=bs, pad_token_id=pad,
                                       progress=lambda k: self._event("advance", k=k))
            with self._joint.branch("weak") as m, gathered_for_forward(m):
                hw = example_entropies(m, part, batch_size=bs, pad_token_id=pad,
                                       progress=lambda k: self._event("advance", k=k))
        hs, hw = gather_in_order(hs, n, acc), gather_in_order(hw, n, acc)
        original = np.asarray(data[INDEX_COLUMN], dtype=np.int64)
        weights = sampling_weights(hs, hw, args.alpha, args.beta, args.gamma, args.weight_formula)
        seed = args.seed if args.selection_seed is None else args.selection_seed
        if args.selection:
            positions = resample(weights, n, seed=seed + r - 1, dedup=args.dedup)
        else:
            positions = np.arange(n, dtype=np.int64)
        stats = selection_stats(hs, hw, positions, n_drawn=n if args.selection else len(positions))
        mean_abs = float(np.abs(hs - hw).mean()) if n else 0.0
        if mean_abs < args.collapse_tolerance:
            msg = (f"WMSS COLLAPSE WARNING (round {r}): the weak and strong models are nearly identical on the training "
                   f"set (mean |ΔH| = {mean_abs:.2e} nats < collapse_tolerance={args.collapse_tolerance}). The paper "
                   "(App. B.5) reports that a weak model this close to the strong one makes WMSS collapse. Use an "
                   "earlier checkpoint (the base model) as the weak model, or train phase 1 longer.")
            warnings.warn(msg, stacklevel=2)
        out_dir = os.path.join(self._root_dir, f"round-{r}")
        if self.args.should_save:
            write_entropies(out_dir, original, hw, hs, weights, positions_drawn=positions,
                            plot=args.save_entropy_plots, title=f"WMSS round {r} ({args.weight_formula} weights)")
        indices = original[positions].tolist()
        self.selections[r] = {"h_weak": hw, "h_strong": hs, "weights": weights, "indices": indices, "stats": stats}
        self.log({f"wmss/{k}": v for k, v in stats.items()} | {"wmss/round": float(r)})
        return indices

    # ------------------------------------------------------------------ phases
    def _run_phase(self, phase: str, r: int, dataset, epochs: float, resume, trial, ignore_keys_for_eval):
        args = self.args
        self._phase, self._round = phase, r
        args.output_dir = os.path.join(self._root_dir, f"round-{r}", phase)
        saved_epochs, saved_steps, saved_lr = args.num_train_epochs, args.max_steps, args.learning_rate
        args.num_train_epochs = epochs
        cap = args.sft_max_steps if phase == "sft" else args.wmss_max_steps
        if cap > 0:
            args.max_steps = cap
        if phase == "joint" and args.wmss_learning_rate is not None:
            args.learning_rate = args.wmss_learning_rate
        self.train_dataset = dataset
        if phase == "joint" or self._external_optimizers == (None, None):
            self.optimizer, self.lr_scheduler = None, None
        self._event("phase", phase=phase, round=r, total=None)
        set_seed(args.seed)
        try:
            return SFTTrainer.train(self, resume_from_checkpoint=resume, trial=trial,
                                    ignore_keys_for_eval=ignore_keys_for_eval)
        finally:
            args.output_dir = self._root_dir
            args.num_train_epochs, args.max_steps, args.learning_rate = saved_epochs, saved_steps, saved_lr

    def _run_joint(self, r: int, indices: list[int], resume, trial, ignore_keys_for_eval):
        data = self._full_train_dataset
        where = {int(i): p for p, i in enumerate(data[INDEX_COLUMN])}
        subset = data.select([where[i] for i in indices])
        self._indices = list(indices)
        strong = self.model
        saved_flag = self.model_accepts_loss_kwargs
        self.model = self.model_wrapped = self._joint.to(self.args.device)
        self.model_accepts_loss_kwargs = True  # the mixed loss is normalised by num_items_in_batch
        try:
            out = self._run_phase("joint", r, subset, self.args.wmss_epochs, resume, trial, ignore_keys_for_eval)
        finally:
            self.model_accepts_loss_kwargs = saved_flag
            self.model = self.model_wrapped = strong
            self.optimizer, self.lr_scheduler = None, None
            self.train_dataset = self._full_train_dataset
        return out

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """Run phases 1-3 (× rounds). ``resume_from_checkpoint`` (a checkpoint folder, or True for the latest under
        ``output_dir``) continues in the phase, round and drawn set recorded in the checkpoint."""
        args = self.args
        ckpt = self._resolve_checkpoint(resume_from_checkpoint)
        state = self.read_state(ckpt) if ckpt else {"phase": "sft", "round": 1}
        start_round, start_phase = int(state["round"]), state["phase"]
        output = None
        if start_round == 1 and start_phase == "sft" and self._do_sft:
            output = self._run_phase("sft", 1, self._full_train_dataset, args.sft_epochs, ckpt, trial,
                                     ignore_keys_for_eval)
        for r in range(start_round, args.rounds + 1):
            resume_joint = ckpt is not None and start_phase == "joint" and r == start_round
            self._release_engine()
            self._setup_weak(r)
            if resume_joint:
                indices = [int(i) for i in state["indices"]]
            else:
                indices = self.select(r)
                if r < args.rounds:  # the next round's weak model
                    self._save_strong(self._snapshot_dir(r), tokenizer=False)
            output = self._run_joint(r, indices, ckpt if resume_joint else None, trial, ignore_keys_for_eval)
        self._phase = None
        self._joint_keep_weak_for_inspection()
        return output

    def _joint_keep_weak_for_inspection(self):
        """After training ``self.weak_model`` is the last round's weak branch (full mode), ``None`` in LoRA mode."""
        self.weak_model = self._weak

    # ------------------------------------------------------------------ checkpoints
    def _resolve_checkpoint(self, resume):
        if resume is None or resume is False:
            return None
        if resume is True:
            found = self.latest_checkpoint(self._root_dir)
            if found is None:
                raise ValueError(f"No WMSS checkpoint found under {self._root_dir}/round-*/{{sft,joint}}/checkpoint-*")
            return found
        if not os.path.isfile(os.path.join(resume, STATE_NAME)):
            raise ValueError(f"{resume} has no {STATE_NAME}: it is not a WMSS checkpoint (written by WMSSTrainer).")
        return resume

    @staticmethod
    def latest_checkpoint(root: str) -> str | None:
        """The most advanced checkpoint under ``root``: latest round, then phase, then step."""
        best, key = None, None
        for path in glob.glob(os.path.join(root, "round-*", "*", "checkpoint-*")):
            m = re.search(r"round-(\d+)[/\\](sft|joint)[/\\]checkpoint-(\d+)$", path)
            if m is None or not os.path.isfile(os.path.join(path, STATE_NAME)):
                continue
            k = (int(m.group(1)), PHASES.index(m.group(2)), int(m.group(3)))
            if key is None or k > key:
                best, key = path, k
        return best

    @staticmethod
    def read_state(checkpoint: str) -> dict:
        with open(os.path.join(checkpoint, STATE_NAME)) as f:
            return json.load(f)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        state = {"phase": self._phase, "round": self._round, "rounds": self.args.rounds, "lora": self._lora,
                 "weak_adapter": self._weak_adapter, "mix_lambda": self.args.mix_lambda,
                 "indices": self._indices if self._phase == "joint" else None}
        with open(os.path.join(folder, STATE_NAME), "w") as f:
            json.dump(state, f)

    def create_model_card(self, *args, **kwargs):
        if self._phase == "joint":
            return None  # the card describes the strong model written by save_model
        return super().create_model_card(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Phase 3 checkpoints: the strong model at the root, the weak branch in ``weak/``. Otherwise (and for
        ``save_model``): the strong model only (LoRA: its ``default`` adapter only)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        strong = self._unwrapped_strong()
        if state_dict is not None and any(k.startswith("strong.") for k in state_dict):
            # a consolidated JointModel state dict (DeepSpeed / FSDP save path): split it by branch
            branches = {"strong": {}, "weak": {}}
            for k, v in state_dict.items():
                head, _, rest = k.partition(".")
                if head in branches:
                    branches[head][rest] = v
            if self._phase != "joint":  # save_model after training: the strong model only
                branches["weak"] = {}
        else:
            branches = None
        if self._phase == "joint":
            if self._lora:
                # default adapter at the root, "weak" (if any) in weak/
                strong.save_pretrained(output_dir, **({"state_dict": branches["strong"]} if branches else {}))
            else:
                strong.save_pretrained(output_dir, **({"state_dict": branches["strong"]} if branches else {}))
                if self._weak is not None:
                    weak_sd = {"state_dict": branches["weak"]} if branches and branches["weak"] else {}
                    self.accelerator.unwrap_model(self._weak).save_pretrained(os.path.join(output_dir, WEAK_SUBDIR),
                                                                              **weak_sd)
        elif branches is not None:
            if self._lora:
                strong.save_pretrained(output_dir, selected_adapters=["default"], state_dict=branches["strong"])
            else:
                strong.save_pretrained(output_dir, state_dict=branches["strong"])
        elif self._lora:
            strong.save_pretrained(output_dir, selected_adapters=["default"])
        else:
            strong.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Inside a phase: the Trainer's own path (checkpoints). Otherwise (after ``train()``): the strong model,
        consolidated from every process under DeepSpeed ZeRO-3 / FSDP, written by the main process."""
        if self._phase is not None or not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self._save_strong(output_dir)

    def _save_strong(self, output_dir: str, tokenizer: bool = True):
        """Write the strong model (LoRA: its default adapter); collective under ZeRO-3 (call on every process)."""
        strong = self._unwrapped_strong()
        state_dict = full_state_dict(strong, self.accelerator)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            if self._lora:
                strong.save_pretrained(output_dir, selected_adapters=["default"], state_dict=state_dict)
            else:
                strong.save_pretrained(output_dir, state_dict=state_dict)
            if tokenizer and self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self._phase != "joint":
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        strong = self._unwrapped_strong()
        if self._lora:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(strong, load_peft_weights(resume_from_checkpoint), adapter_name="default")
            if self._weak_adapter is not None:
                weak_dir = os.path.join(resume_from_checkpoint, self._weak_adapter)
                set_peft_model_state_dict(strong, load_peft_weights(weak_dir), adapter_name=self._weak_adapter)
        else:
            _load_weights(strong, resume_from_checkpoint)
            _load_weights(self._weak, os.path.join(resume_from_checkpoint, WEAK_SUBDIR))

    # ------------------------------------------------------------------ loss and metrics
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._phase != "joint":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        out = model(**inputs)
        denom = num_items_in_batch if num_items_in_batch is not None else out.num_tokens
        loss = out.loss_sum / torch.as_tensor(denom, device=out.loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        gather = self.accelerator.gather  # one value per process: token-weighted sums, never per-process means
        n = gather(out.num_tokens.reshape(1)).sum().clamp(min=1).float()
        mixed = gather(out.loss_sum.detach().float().reshape(1)).sum() / n
        strong_ce = gather(out.strong_ce_sum.reshape(1)).sum() / n
        hs = gather(out.strong_entropy_sum.reshape(1)).sum() / n
        hw = gather(out.weak_entropy_sum.reshape(1)).sum() / n
        metrics = self._metrics[mode]
        metrics["mixed_ce"].append(mixed.item())
        metrics["strong_ce"].append(strong_ce.item())
        metrics["entropy/strong"].append(hs.item())
        metrics["entropy/weak"].append(hw.item())
        metrics["entropy/delta"].append((hs - hw).item())
        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += gather(inputs["attention_mask"].sum().reshape(1)).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self._phase != "joint":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _load_weights(model, folder: str):
    """Load a ``save_pretrained`` folder's weights into an existing model (tied weights may be absent)."""
    from safetensors.torch import load_file

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(os.path.join(folder, name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _full_shape(param) -> torch.Size:
    """A parameter's shape, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return getattr(param, "ds_shape", None) or param.shape


def _zero3_params(module) -> list:
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered_for_forward(module):
    """Make a module whose parameters ZeRO-3 partitioned usable in plain forwards on one process.

    Phase 2 runs outside any engine (its hooks are released between phases) and each process measures its own
    rows, so the full parameters are gathered once (read-only, ``modifier_rank=None``) for the whole pass and
    re-partitioned afterwards. A no-op for ordinary parameters (one process, DDP, ZeRO-1/2).
    """
    params = _zero3_params(module)
    if not params:
        yield module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield module


def full_state_dict(model, accelerator) -> dict | None:
    """The model's full state dict (clones, on CPU) when ZeRO-3 partitioned it, else ``None`` (use the model's own).

    Collective: every process must call it.
    """
    params = _zero3_params(model)
    if not params:
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if accelerator.is_main_process:
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return None
