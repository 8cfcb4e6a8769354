"""``WMSSTrainer``: one round of Weak-Driven Learning (WMSS) as one TRL Trainer run.

``WMSSTrainer(model=M1, weak_model=M0, args=WMSSConfig(...), train_dataset=...)`` — the strong model (already
fine-tuned, e.g. by ``SFTTrainer``) and the weak one, taken like TRL trainers take a second model (``ref_model``,
``teacher_model``). ``train()`` is one run:

1. phase 2, at its start — per-example entropies of weak and strong over the tokens the loss trains, sampling
   weights (``weight_formula``), a seeded weighted draw; written to ``output_dir/selection/`` and logged (``wmss/*``)
   at step 0 of ``state.log_history``;
2. phase 3 — joint training of strong + weak on the CE of their mixed logits (:class:`JointModel`) over the drawn
   examples, for ``num_train_epochs`` / ``max_steps``.

Checkpoints are ``output_dir/checkpoint-N`` (strong model at the root, weak branch in ``weak/``, the drawn set in
``wmss_state.json``); ``train(resume_from_checkpoint=True)`` continues the run exactly, selection included.
Evaluation runs on the strong model: ``eval_loss`` is its own CE; the mixed CE is ``eval_mixed_ce``.
``save_model()`` writes the strong model only. The whole method (M0 → SFT → K rounds) is :func:`run_wmss`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import warnings

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer

from ..distributed import gather_in_order, shard_indices
from .config import IDENTITY_FIELDS, WMSSConfig
from .joint import STRONG_ADAPTER, WEAK_ADAPTER, JointModel
from .plots import write_entropies
from .selection import (
    causal_lm_parts,
    is_prompt_learning,
    example_entropies,
    resample,
    sampling_weights,
    selection_stats,
)

logger = logging.getLogger(__name__)

STATE_NAME = "wmss_state.json"
INDEX_COLUMN = "wmss_index"
WEAK_SUBDIR = "weak"
SELECTION_DIR = "selection"


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def _is_adapter_dir(path) -> bool:
    return isinstance(path, str) and os.path.isfile(os.path.join(path, "adapter_config.json"))


def check_finite(module, name: str) -> None:
    """Refuse a model whose weights hold NaN/Inf (the local shard under ZeRO-3), naming the first bad tensor."""
    for pname, p in module.named_parameters():
        data = getattr(p, "ds_tensor", p)
        if data.numel() and not torch.isfinite(data.detach()).all():
            raise ValueError(f"The {name} model's weights contain NaN/Inf (first: {pname}). It cannot be trained or "
                             "measured: load an earlier, finite checkpoint (a diverged run, or a dtype overflow).")


class _SelectionLog(TrainerCallback):
    """Writes the phase-2 statistics into the run's log (step 0), once the Trainer state of the run exists; on a
    resume, continues the ``num_tokens`` count of the interrupted run (SFTTrainer restarts it at 0)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # callbacks after this one (it runs first) get the user's model as ``model``, as with SFTTrainer
        self.trainer.callback_handler.model = self.trainer.joint_model.strong
        logs, self.trainer._pending_selection_log = self.trainer._pending_selection_log, None
        if logs:
            self.trainer.log(logs)
        counted = [h["num_tokens"] for h in state.log_history if "num_tokens" in h and "loss" in h]
        if state.global_step > 0 and counted:
            self.trainer._total_train_tokens = int(counted[-1])


class WMSSTrainer(SFTTrainer):
    """Trainer for one round of WMSS (Weak-Driven Learning): entropy-based data selection, then joint training of the
    strong and weak models on their mixed logits. A subclass of TRL's ``SFTTrainer``: data preparation, collator,
    PEFT, logging and checkpoints are SFTTrainer's.

    Args:
        model: the strong model M1 (e.g. the output of ``SFTTrainer``): a path / hub id (loaded with
            ``args.model_init_kwargs``), a loaded causal LM or a ``PeftModel`` (LoRA mode).
        weak_model: the weak model M0 — an earlier checkpoint of the same model (same vocabulary):
            * a loaded causal LM or a path (loaded with ``args.weak_model_init_kwargs``, default
              ``args.model_init_kwargs``): a second model, trained too unless ``freeze_weak``;
            * LoRA mode (``model`` is a ``PeftModel``): ``None`` = the base model under the adapter, as a second
              adapter ``"weak"`` initialised to zero (so it IS the base at the start, and trainable; one copy of the
              base weights), or the path of a saved adapter of the same base (e.g. an earlier round's strong adapter).
        args: a [`WMSSConfig`] (an ``SFTConfig`` / ``TrainingArguments`` is converted, tokens included).
        train_dataset: any SFT dataset: prompt/completion (completion-only loss), messages (every token, or every
            assistant turn with ``assistant_only_loss=True``), text / ``formatting_func`` (language modelling), or
            tokenized ``input_ids`` (+ ``labels``). Entropies and the loss use exactly the labels SFT would train.
        eval_dataset, data_collator, processing_class, compute_metrics, callbacks, optimizers,
        optimizer_cls_and_kwargs, preprocess_logits_for_metrics, formatting_func: as in [`~trl.SFTTrainer`].
        peft_config: wrap a plain ``model`` with a new LoRA adapter; then ``weak_model`` must be given (the base of
            a freshly wrapped M1 is M1 itself).
    """

    _tag_names = ["trl", "sft", "wmss"]
    _name = "WMSS"

    def __init__(
        self,
        model,
        args: WMSSConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func=None,
        *,
        weak_model=None,
    ):
        from ..models import resolve_model_path

        if args is None:
            name = model if isinstance(model, str) else type(model).__name__
            args = WMSSConfig(f"{str(name).rstrip('/').split('/')[-1]}-WMSS")
        elif isinstance(args, TrainingArguments) and not isinstance(args, WMSSConfig):
            args = WMSSConfig.from_sft_config(args)
        elif not isinstance(args, WMSSConfig):
            raise TypeError(f"args must be a WMSSConfig, got {type(args).__name__}. The signature is SFTTrainer's, "
                            "WMSSTrainer(model, args, ...), and the weak model is a keyword: "
                            "WMSSTrainer(model, args, weak_model=M0, ...). From an SFTConfig: "
                            "WMSSConfig.from_sft_config(your_sft_config, mix_lambda=...).")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if not isinstance(train_dataset, Dataset):
            raise TypeError(f"The train dataset must be a datasets.Dataset (WMSS re-samples it by index), got "
                            f"{type(train_dataset).__name__}. Fix: materialise it with Dataset.from_list / "
                            "from_generator.")
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: WMSS needs at least one example to measure and train on.")
        if compute_loss_func is not None:
            raise ValueError("compute_loss_func is not supported by WMSSTrainer: its loss is the cross entropy of the "
                             "mixed logits (weakstrong.wmss.joint.mixed_loss), computed without the full logits. "
                             "Choose the objective with loss_type ('nll' / 'dft') and label_smoothing_factor, or "
                             "subclass WMSSTrainer and override compute_loss.")
        if isinstance(model, str):
            model = resolve_model_path(model)
        if isinstance(weak_model, str) and not _is_adapter_dir(weak_model):
            weak_model = resolve_model_path(weak_model)
        strong_is_peft = _is_peft(model)
        if weak_model is None and not strong_is_peft:
            if peft_config is not None:
                raise ValueError(
                    "weak_model=None with peft_config: the weak model would be the base under the new adapter, i.e. "
                    "the strong model itself (ΔH = 0, the collapse the paper warns about). Fix: pass the LoRA SFT "
                    "model (a PeftModel whose base is M0) as model, or give weak_model=M0.")
            raise ValueError(
                "weak_model is required in full fine-tuning: pass the model before SFT (M0: a path or a loaded model), "
                "as with ref_model in DPO. For M0 → SFT → WMSS in one call use weakstrong.wmss.run_wmss.")
        if _is_adapter_dir(weak_model) and not strong_is_peft:
            raise ValueError(f"weak_model {weak_model!r} is a PEFT adapter: then model must be a PeftModel on the same "
                             "base (LoRA mode). Fix: pass the strong model as a PeftModel, or a full weak model.")
        self._adapters = strong_is_peft and (weak_model is None or _is_adapter_dir(weak_model))
        self._pending_selection_log = None
        self.selection: dict | None = None
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers,
                         optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                         quantization_config=quantization_config, peft_config=peft_config,
                         formatting_func=formatting_func)
        pc = self.accelerator.parallelism_config
        if pc is not None and (pc.cp_enabled or pc.sp_enabled or pc.tp_size > 1):
            raise ValueError("Tensor / context / sequence parallelism (from the accelerate config) is not supported by "
                             "WMSS: its loss needs whole sequences of both models on each process. Use DDP or "
                             "DeepSpeed ZeRO-2/3 (data parallel).")
        strong = self.model
        if self._adapters:
            self._add_weak_adapter(strong, weak_model)
            weak = None
        else:
            weak = self._prepare_weak(weak_model)
            self._check_vocab(weak, strong)
        self._full_train_dataset = self.train_dataset
        if is_prompt_learning(strong) and self.padding_free:
            raise ValueError("padding_free=True is not supported with a prompt-learning adapter (prompt tuning, prefix "
                             "tuning, p-tuning): its virtual tokens need the attention mask. Set padding_free=False.")
        self.model = self.model_wrapped = JointModel(
            strong, weak, lam=args.mix_lambda, freeze_weak=args.freeze_weak, loss_type=args.loss_type,
            label_smoothing=args.label_smoothing_factor, router_aux_loss=self.aux_loss_enabled)
        self._has_joint = True  # from here on, trainer.model is the strong model outside the Trainer's own loops
        self.model_accepts_loss_kwargs = True  # the mixed loss is normalised by num_items_in_batch
        self.callback_handler.callbacks.insert(0, _SelectionLog(self))
        if (self._adapters and args.gradient_checkpointing and self.is_deepspeed_enabled
                and self.accelerator.state.deepspeed_plugin.zero_stage == 3):
            # Not verified: the adapter-pinned recomputation (joint.py) has been tested with DDP / one process only.
            raise ValueError("WMSS LoRA mode under DeepSpeed ZeRO-3 with gradient_checkpointing is not verified yet. "
                             "Fix: set gradient_checkpointing=False, or use ZeRO-2 / DDP, or full fine-tuning.")

    # ------------------------------------------------------------------ models
    # ``trainer.model`` is the user's model (the strong model: a PreTrainedModel or its PeftModel), as with SFTTrainer:
    # ``generate``, tags, ``isinstance``, ``save_pretrained`` act on it. The module the Trainer trains is the
    # :class:`JointModel` (strong + weak, one optimizer, one DDP / DeepSpeed wrapper): ``trainer.joint_model``. The
    # Trainer's own loops (``train``, ``evaluate``, ``predict``) see the JointModel as ``self.model``, through
    # :meth:`_trainer_scope`.
    @property
    def model(self):
        slot = self.__dict__.get("_model_slot")
        if not self.__dict__.get("_has_joint") or self.__dict__.get("_scope_depth", 0) > 0:
            return slot
        return self.accelerator.unwrap_model(slot).strong

    @model.setter
    def model(self, value):
        self.__dict__["_model_slot"] = value

    @property
    def joint_model(self) -> JointModel:
        """The trained module: strong + weak (:class:`~weakstrong.wmss.joint.JointModel`)."""
        return self.accelerator.unwrap_model(self.__dict__["_model_slot"])

    @contextlib.contextmanager
    def _trainer_scope(self):
        self.__dict__["_scope_depth"] = self.__dict__.get("_scope_depth", 0) + 1
        try:
            yield
        finally:
            self.__dict__["_scope_depth"] -= 1

    @property
    def weak_model(self):
        """The weak branch: the weak model (two-models layout) or the PeftModel computing it (adapter ``"weak"``)."""
        return self.joint_model.weak_module()

    def _add_weak_adapter(self, strong, source):
        from peft import LoraConfig

        if WEAK_ADAPTER in strong.peft_config:
            raise ValueError(f"The strong PeftModel already has an adapter named {WEAK_ADAPTER!r}: WMSS adds its weak "
                             "adapter under that name. Fix: delete or rename it.")
        if STRONG_ADAPTER not in strong.peft_config or set(strong.peft_config) != {STRONG_ADAPTER}:
            raise ValueError(f"LoRA mode expects one adapter named {STRONG_ADAPTER!r} (the strong model), got "
                             f"{sorted(strong.peft_config)}.")
        cfg = strong.peft_config[STRONG_ADAPTER]
        if not isinstance(cfg, LoraConfig):
            raise NotImplementedError(f"LoRA mode supports LoraConfig adapters, got {type(cfg).__name__}.")
        if cfg.modules_to_save or getattr(cfg, "trainable_token_indices", None):
            raise NotImplementedError("LoRA mode does not support modules_to_save / trainable_token_indices (they are "
                                      "copies outside the LoRA layers that the weak adapter cannot switch).")
        if source is None:
            weak_cfg = copy.deepcopy(cfg)
            weak_cfg.init_lora_weights = True  # B = 0: the weak branch starts as the base model exactly
            weak_cfg.inference_mode = False
            strong.add_adapter(WEAK_ADAPTER, weak_cfg)
        else:
            strong.load_adapter(source, adapter_name=WEAK_ADAPTER, is_trainable=True)
        strong.set_adapter(STRONG_ADAPTER)

    def _prepare_weak(self, weak):
        """Load (a string, with ``weak_model_init_kwargs`` or ``model_init_kwargs``) and place the weak model."""
        from trl.trainer.utils import create_model_from_path

        args = self.args
        if isinstance(weak, str):
            kwargs = dict(args.weak_model_init_kwargs if args.weak_model_init_kwargs is not None
                          else (args.model_init_kwargs or {}))
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                kwargs["device_map"] = None
            kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            weak = create_model_from_path(weak, **kwargs)
        if getattr(weak, "hf_device_map", None) is None and not any(hasattr(p, "ds_id") for p in weak.parameters()):
            weak = weak.to(args.device)
        return weak

    def _check_vocab(self, weak, strong):
        vw = _full_shape(causal_lm_parts(weak)[1].weight)[0]
        vs = _full_shape(causal_lm_parts(strong)[1].weight)[0]
        if vw != vs:
            raise ValueError(
                f"The weak model's vocabulary ({vw} tokens) differs from the strong model's ({vs}): their logits "
                "cannot be mixed. Fix: use an earlier checkpoint of the same model (same tokenizer) as weak_model, "
                "or resize_token_embeddings so both use the same token ids."
            )

    # ------------------------------------------------------------------ dataset preparation
    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        tag = dataset_name == "train" and isinstance(dataset, Dataset)
        n = len(dataset) if tag else 0
        if tag and INDEX_COLUMN not in dataset.column_names:
            dataset = dataset.add_column(INDEX_COLUMN, list(range(n)))
        prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if tag:
            kept = set(int(i) for i in prepared[INDEX_COLUMN])
            if not kept:
                raise ValueError("No training example has a token to train on (all were dropped after truncation to "
                                 f"max_length={args.max_length}). Raise max_length or check the completions.")
            dropped = [i for i in range(n) if i not in kept]
            if dropped:
                logger.warning("WMSS: %d training example(s) have no supervised token after truncation and are left "
                               "out, as SFTTrainer does (rows %s). Raise max_length to keep them.", len(dropped),
                               ", ".join(map(str, dropped[:20])))
        return prepared

    # ------------------------------------------------------------------ phase 2
    def _event(self, name: str, **info):
        for cb in self.callback_handler.callbacks:
            fn = getattr(cb, "on_wmss_event", None)
            if fn is not None:
                fn(name, **info)

    def select(self) -> list[int]:
        """Phase 2: entropies of weak and strong, weights, the seeded draw. Returns positions into the prepared
        training set (with repeats unless ``dedup``); sets ``self.selection``."""
        args = self.args
        data = self._full_train_dataset
        n = len(data)
        joint = self.joint_model
        self._event("phase", phase="entropy", round=None, total=2 * n)
        # Several processes: each measures a contiguous block of rows, gathered back in dataset order, so every
        # process holds the same entropies and draws the same (seeded) indices.
        acc = self.accelerator
        mine = shard_indices(n, acc.process_index, acc.num_processes)
        cols = [c for c in ("input_ids", "labels", "seq_lengths") if c in data.column_names]
        part = data.select(mine.tolist()).select_columns(cols).to_list() if len(mine) else []
        kw = dict(collator=self.data_collator, pad_token_id=self._tokenizer.pad_token_id,
                  batch_size=args.entropy_batch_size, max_tokens=args.entropy_max_tokens,
                  progress=lambda k: self._event("advance", k=k))
        h = {}
        with torch.no_grad():
            for which in ("strong", "weak"):
                with joint.branch(which) as m, gathered_for_forward(m):
                    h[which] = example_entropies(m, part, **kw) if part else np.zeros(0)
        hs, hw = gather_in_order(h["strong"], n, acc), gather_in_order(h["weak"], n, acc)
        original = np.asarray(list(data[INDEX_COLUMN]), dtype=np.int64)
        weights = sampling_weights(hs, hw, args.alpha, args.beta, args.gamma, args.weight_formula)
        seed = args.seed if args.selection_seed is None else args.selection_seed
        positions = resample(weights, n, seed=seed, dedup=args.dedup) if args.selection else np.arange(n)
        stats = selection_stats(hs, hw, positions, n_drawn=n)
        mean_abs = float(np.abs(hs - hw).mean())
        if mean_abs < args.collapse_tolerance:
            warnings.warn(
                f"WMSS COLLAPSE WARNING: the weak and strong models are nearly identical on the training set (mean "
                f"|ΔH| = {mean_abs:.2e} nats < collapse_tolerance={args.collapse_tolerance}). The paper (App. B.5) "
                "reports that a weak model this close to the strong one makes WMSS collapse. Use an earlier "
                "checkpoint (the base model) as the weak model, or train the strong model longer.", stacklevel=3)
        if args.should_save:
            write_entropies(os.path.join(args.output_dir, SELECTION_DIR), original, hw, hs, weights,
                            positions_drawn=positions, plot=args.save_entropy_plots,
                            title=f"WMSS selection ({args.weight_formula} weights)")
        self.selection = {"h_weak": hw, "h_strong": hs, "weights": weights, "positions": positions.tolist(),
                          "indices": original[positions].tolist(), "stats": stats}
        self._pending_selection_log = {f"wmss/{k}": v for k, v in stats.items()}
        return positions.tolist()

    # ------------------------------------------------------------------ the run
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """Phase 2 (selection), then phase 3 on the drawn set, as one Trainer run. ``resume_from_checkpoint`` (a
        ``checkpoint-N`` folder, or True for the latest under ``output_dir``) continues it: the drawn set is read from
        the checkpoint, not measured again."""
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = get_last_checkpoint(self.args.output_dir)
            if ckpt is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        elif ckpt is False:
            ckpt = None
        joint = self.joint_model
        check_finite(joint.strong, "strong")
        if not joint.adapters:
            check_finite(joint.weak, "weak")
        positions = self._positions_from_checkpoint(ckpt) if ckpt else self.select()
        self.train_dataset = self._full_train_dataset.select(positions)
        liger = self.args.use_liger_kernel
        if liger:
            self._apply_liger_kernel()
        weak_hook = self._weak_neftune()
        try:
            # Transformers applies Liger to ``self.model`` at the start of train(); inside the run that is the
            # JointModel, which Liger does not know: it was applied to both models just above.
            self.args.use_liger_kernel = False
            with self._trainer_scope():
                return super().train(resume_from_checkpoint=ckpt, trial=trial,
                                     ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self.args.use_liger_kernel = liger
            if weak_hook is not None:
                weak_hook.remove()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        with self._trainer_scope():
            return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                    metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        with self._trainer_scope():
            return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _apply_liger_kernel(self):
        """``use_liger_kernel``: Liger's layer kernels on the strong model and on a separate weak model (the same
        call as Transformers' on SFT's model; TRL keeps Liger's fused linear cross entropy off, as WMSS needs)."""
        from transformers.integrations.liger import apply_liger_kernel

        joint = self.joint_model
        for m in (joint.strong,) + (() if joint.adapters else (joint.weak,)):
            apply_liger_kernel(m, self.args.liger_kernel_config)

    def _weak_neftune(self):
        """``neftune_noise_alpha``: Transformers hooks the input embeddings of ``self.model`` (the strong model's,
        through :meth:`JointModel.get_input_embeddings`); a separate weak model gets the same noise on its own, so both
        branches see noisy embeddings as in the adapters layout (one shared embedding). Returns the hook handle."""
        joint = self.joint_model
        if self.neftune_noise_alpha is None or joint.adapters or joint.lam == 1.0:
            return None
        from transformers.integrations.neftune import neftune_post_forward_hook

        embeddings = joint.weak.get_input_embeddings()
        embeddings.neftune_noise_alpha = self.neftune_noise_alpha
        return embeddings.register_forward_hook(neftune_post_forward_hook)

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict:
        data = self._full_train_dataset
        if getattr(self, "_data_digest", None) is None:
            digest = hashlib.sha1()
            for i in sorted({0, len(data) // 2, len(data) - 1}):
                digest.update(json.dumps([list(data[i]["input_ids"]), list(data[i]["labels"])]).encode())
            digest.update(json.dumps([int(i) for i in data[INDEX_COLUMN]]).encode())
            self._data_digest = digest.hexdigest()
        return {"n_train": len(data), "data_digest": self._data_digest, "adapters": self._adapters,
                **{k: getattr(self.args, k) for k in IDENTITY_FIELDS}}

    def _positions_from_checkpoint(self, ckpt: str) -> list[int]:
        path = os.path.join(ckpt, STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{ckpt} has no {STATE_NAME}: it is not a WMSSTrainer checkpoint (an SFT checkpoint "
                             "cannot resume a WMSS run). Fix: pass the SFT model as model= and start a new run.")
        with open(path) as f:
            state = json.load(f)
        now = self._identity()
        changed = {k: (state["identity"].get(k), v) for k, v in now.items() if state["identity"].get(k) != v}
        if changed:
            raise ValueError(f"Cannot resume from {ckpt}: the run's identity changed {changed} (checkpoint, now). "
                             "Resume with the same data and WMSS settings, or use a new output_dir.")
        self.selection = {k: state[k] for k in ("positions", "indices", "stats")}
        return list(state["positions"])

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
        if self.args.should_save and self.selection is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            state = {"identity": self._identity(), **{k: self.selection[k] for k in ("positions", "indices", "stats")}}
            with open(os.path.join(folder, STATE_NAME), "w") as f:
                json.dump(state, f)

    def _save(self, output_dir: str | None = None, state_dict=None):
        """The strong model at ``output_dir`` (``save_pretrained`` format; LoRA: its ``"default"`` adapter). Inside
        a checkpoint also the weak branch, in ``weak/``, so that a resume continues both."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        joint = self.joint_model
        with_weak = getattr(self, "_saving_checkpoint", False)
        parts = _split_state_dict(state_dict) if state_dict else {"strong": None, "weak": None}
        strong_sd = {"state_dict": parts["strong"]} if parts["strong"] else {}
        if joint.adapters:
            adapters = [STRONG_ADAPTER] + ([WEAK_ADAPTER] if with_weak else [])
            joint.strong.save_pretrained(output_dir, selected_adapters=adapters, **strong_sd)  # weak -> weak/
        else:
            joint.strong.save_pretrained(output_dir, **strong_sd)
            if with_weak:
                weak_sd = {"state_dict": parts["weak"]} if parts["weak"] else {}
                joint.weak.save_pretrained(os.path.join(output_dir, WEAK_SUBDIR), **weak_sd)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """The strong model only (``save_pretrained``-compatible). Under DeepSpeed ZeRO-3 its partitioned weights are
        gathered from every process (collective: call on all of them) and written by the main process."""
        if _internal_call or not self.is_deepspeed_enabled:
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        joint = self.joint_model
        state_dict = full_state_dict(joint.strong, self.accelerator)
        if self.args.should_save:
            self._save(output_dir, state_dict={f"strong.{k}": v for k, v in state_dict.items()} if state_dict else None)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # the engine's / FSDP's own format of the JointModel
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        joint = self.joint_model
        if joint.adapters:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(joint.strong, load_peft_weights(resume_from_checkpoint),
                                      adapter_name=STRONG_ADAPTER)
            weak_dir = os.path.join(resume_from_checkpoint, WEAK_ADAPTER)
            set_peft_model_state_dict(joint.strong, load_peft_weights(weak_dir), adapter_name=WEAK_ADAPTER)
        else:
            _load_weights(joint.strong, resume_from_checkpoint)
            _load_weights(joint.weak, os.path.join(resume_from_checkpoint, WEAK_SUBDIR))

    def _load_best_model(self):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        logger.info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # ------------------------------------------------------------------ loss and metrics
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: :func:`~weakstrong.wmss.joint.mixed_loss` (normalised like SFT's loss), plus the strong model's
        weighted MoE router loss as SFT adds it. Evaluation: the strong model's own loss (same ``loss_type`` / label
        smoothing), so that ``eval_loss`` means the same as in SFT; the mixed CE is ``mixed_ce`` / ``eval_mixed_ce``."""
        joint = self.joint_model
        mode = "train" if joint.training else "eval"
        joint.register_zero3_heads()
        out = model(**inputs)
        self._log_joint_metrics(mode, out, joint)
        local_n = out.num_tokens.clamp(min=1)
        if mode == "train":
            denom = num_items_in_batch if num_items_in_batch is not None else local_n
            loss = out.loss_sum / torch.as_tensor(denom, device=out.loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            if out.aux_loss is not None:  # as SFTTrainer: a per-micro-batch mean, averaged over accumulation steps
                steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
                loss = loss + self.router_aux_loss_coef * out.aux_loss / steps
            self._total_train_tokens += _count_tokens(inputs, self.accelerator)
        else:
            loss = out.strong_loss_sum / local_n
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, out) if return_outputs else loss

    def _log_joint_metrics(self, mode: str, out, joint) -> None:
        """Token-weighted means across processes of the pass's statistics (SFT's names for the strong model's:
        ``entropy``, ``mean_token_accuracy``, ``aux_loss``; WMSS's own: ``mixed_ce``, ``strong_ce``, ``weak_ce``,
        ``weak_entropy``)."""
        sums = self.accelerator.gather(torch.stack([
            out.num_tokens.float(), out.mixed_ce_sum, out.strong_nll_sum, out.weak_nll_sum,
            out.strong_entropy_sum, out.weak_entropy_sum, out.strong_top1_sum]).reshape(1, -1)).reshape(-1, 7).sum(0)
        n = sums[0].clamp(min=1)
        metrics = self._metrics[mode]
        metrics["mixed_ce"].append((sums[1] / n).item())
        metrics["strong_ce"].append((sums[2] / n).item())
        metrics["entropy"].append((sums[4] / n).item())  # TRL's name: the trained (strong) model's entropy
        metrics["mean_token_accuracy"].append((sums[6] / n).item())  # TRL's name and definition, strong model
        if joint.lam < 1.0:
            metrics["weak_ce"].append((sums[3] / n).item())
            metrics["weak_entropy"].append((sums[5] / n).item())
        if out.aux_loss is not None:
            metrics["aux_loss"].append(self.accelerator.gather_for_metrics(out.aux_loss.detach()).mean().item())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """``eval_loss`` = the strong model's CE; with ``compute_metrics``, the strong model's logits and labels."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
            if prediction_loss_only:
                return loss.detach(), None, None
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, output="strong_logits").logits
        return loss.detach(), logits, inputs.get("labels")


def _count_tokens(inputs, accelerator) -> int:
    """Tokens of a batch, counted as SFTTrainer counts ``num_tokens`` (padding-free batches have no mask)."""
    if "attention_mask" in inputs:
        local = inputs["attention_mask"].sum()
    elif "position_ids" in inputs:
        local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
    else:
        local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
    return int(accelerator.gather(local.reshape(1)).sum().item())


def _split_state_dict(state_dict: dict) -> dict:
    """A JointModel state dict (``strong.*`` / ``weak.*``) split by branch; any other dict is the strong model's."""
    if not any(k.startswith("strong.") for k in state_dict):
        return {"strong": state_dict, "weak": None}
    parts = {"strong": {}, "weak": {}}
    for k, v in state_dict.items():
        head, _, rest = k.partition(".")
        if head in parts:
            parts[head][rest] = v
    return {k: v or None for k, v in parts.items()}


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

    Phase 2 runs before the training engine exists and each process measures its own rows, so the full parameters
    are gathered once (read-only, ``modifier_rank=None``) for the whole pass and re-partitioned afterwards. A no-op
    for ordinary parameters (one process, DDP, ZeRO-1/2).
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
