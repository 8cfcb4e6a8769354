"""``WMSSTrainer``: one round of Weak-Driven Learning (WMSS) as one TRL Trainer run.

``WMSSTrainer(M1, WMSSConfig(...), train_dataset=..., weak_model=M0)`` — the strong model (already
fine-tuned, e.g. by ``SFTTrainer``) and the weak one, taken like TRL trainers take a second model (``ref_model``,
``teacher_model``). ``train()`` is one run:

1. phase 2, at its start — per-example entropies of weak and strong over the tokens the loss trains, sampling
   weights (``weight_formula``), a seeded weighted draw; written to ``output_dir/selection/`` and logged (``wmss/*``)
   with the run's first log entry;
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
import logging
import os
import warnings

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer

from .._trl_defaults import peft_wrapping
from ..distributed import full_shape, gather_in_order, gathered_for_forward, shard_indices
from .checkpoints import INDEX_COLUMN, CheckpointsMixin
from .config import WMSSConfig
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
    """Gives callbacks the user's model; on a resume, continues the ``num_tokens`` count of the interrupted run
    (SFTTrainer restarts it at 0)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # callbacks after this one (it runs first) get the user's model as ``model``, as with SFTTrainer
        self.trainer.callback_handler.model = self.trainer.joint_model.strong
        counted = [h["num_tokens"] for h in state.log_history if "num_tokens" in h and "loss" in h]
        if state.global_step > 0 and counted:
            self.trainer._total_train_tokens = int(counted[-1])


class WMSSTrainer(CheckpointsMixin, SFTTrainer):
    """Trainer for one round of WMSS (Weak-Driven Learning): entropy-based data selection, then joint training of the
    strong and weak models on their mixed logits. A subclass of TRL's ``SFTTrainer``: data preparation, collator,
    PEFT, logging and checkpoints are SFTTrainer's.

    Parameters are SFTTrainer's, in its order, plus the keyword ``weak_model``; every one is classified in the contract
    table (``weakstrong/wmss/contract.py``, ``docs/wmss_contract.md``).

    Args:
        model (`str | PreTrainedModel | PeftModel`):
            The strong model M1 (e.g. the output of `SFTTrainer`): a path / hub id (loaded with
            `args.model_init_kwargs`), a loaded causal LM, or a `PeftModel`. `trainer.model` stays this model (or its
            `PeftModel`); the trained module (strong + weak) is `trainer.joint_model`.
        args ([`WMSSConfig`], *optional*):
            An `SFTConfig` / `TrainingArguments` is converted (tokens included). Defaults to
            `WMSSConfig("<model name>-WMSS")`.
        data_collator (`DataCollator`, *optional*):
            As in `SFTTrainer`; also batches the phase-2 entropy forwards.
        train_dataset ([`~datasets.Dataset`]):
            Any SFT dataset: prompt/completion (completion-only loss), messages (every token, or every assistant turn
            with `assistant_only_loss=True`), text / `formatting_func` (language modelling), or tokenized `input_ids`
            (+ `labels`). Entropies and the loss use exactly the labels SFT would train. Not an `IterableDataset`
            (WMSS re-samples by index).
        eval_dataset (`Dataset | dict[str, Dataset]`, *optional*):
            Evaluated on the strong model (`eval_loss` = its own loss, as SFT's).
        processing_class (`PreTrainedTokenizerBase | ProcessorMixin`, *optional*):
            As in `SFTTrainer`.
        compute_loss_func (`None`):
            Refused: the loss is [`~weakstrong.wmss.joint.mixed_loss`]; choose `loss_type` / `label_smoothing_factor`.
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*):
            Receives the strong model's logits.
        callbacks (`list[TrainerCallback]`, *optional*):
            As in `SFTTrainer`; they get the strong model as `model`.
        optimizers (`tuple[Optimizer | None, LambdaLR | None]`, *optional*, defaults to `(None, None)`):
            A given optimizer must hold the weak model's parameters too for the weak model to train.
        optimizer_cls_and_kwargs (`tuple[type[Optimizer], dict]`, *optional*):
            Built over both models' trainable parameters.
        preprocess_logits_for_metrics (`Callable`, *optional*):
            On the strong model's logits.
        quantization_config (`BitsAndBytesConfig`, *optional*):
            Applied when `model` is a string, as in `SFTTrainer` (the weak model: `weak_model_init_kwargs`).
        peft_config (`PeftConfig`, *optional*):
            Wraps a plain `model` with a new adapter; then `weak_model` must be given (the base of a freshly wrapped M1
            is M1 itself). Prompt-learning types run through the `PeftModel`'s forward (virtual tokens included).
        formatting_func (`Callable`, *optional*):
            As in `SFTTrainer`.
        weak_model (`str | PreTrainedModel | None`, keyword-only):
            The weak model M0 — an earlier checkpoint of the same model (same vocabulary): a loaded causal LM or a
            path (loaded with `args.weak_model_init_kwargs`, default `args.model_init_kwargs`), trained too unless
            `freeze_weak`. LoRA mode (`model` is a LoRA `PeftModel`): `None` = the base model under the adapter, as a
            second adapter `"weak"` initialised to zero (one copy of the base weights), or the path of a saved adapter
            of the same base.
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
        with peft_wrapping():
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
        if (self._adapters and args.activation_checkpointing and self.is_deepspeed_enabled
                and self.accelerator.state.deepspeed_plugin.zero_stage == 3):
            # Not verified: the adapter-pinned recomputation (joint.py) has been tested with DDP / one process only.
            raise ValueError("WMSS LoRA mode under DeepSpeed ZeRO-3 with gradient_checkpointing is not verified yet. "
                             "Fix: set activation_checkpointing=False, or use ZeRO-2 / DDP, or full fine-tuning.")

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
        vw = full_shape(causal_lm_parts(weak)[1].weight)[0]
        vs = full_shape(causal_lm_parts(strong)[1].weight)[0]
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """SFT's ``log``; the phase-2 statistics (``wmss/*``) join the run's first log entry (whichever it is: a
        training step, an evaluation, or the final summary), so ``state.log_history`` has SFT's entries and steps."""
        pending, self._pending_selection_log = self._pending_selection_log, None
        if pending:
            logs.update(pending)  # in place, like SFT's own metrics: evaluate() returns this dict
        super().log(logs, start_time)

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
            self._total_train_tokens += _count_tokens(inputs, self.accelerator)
        else:
            loss = out.strong_loss_sum / local_n
        if out.aux_loss is not None:  # as SFTTrainer (eval too): a per-micro-batch mean, averaged over accumulation
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * out.aux_loss / steps
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
