"""The checkpoints of a WMSS run (``WMSSTrainer``'s Trainer overrides, kept apart from the method).

``output_dir/checkpoint-N`` holds the strong model at its root (``save_pretrained``; LoRA: its ``"default"`` adapter),
the weak branch in ``weak/`` (LoRA: the ``"weak"`` adapter), and ``wmss_state.json``: the drawn set and the run's
identity (data digest and the WMSS fields that define the draw). A resume reads the drawn set from there and refuses
a changed identity. ``save_model()`` writes the strong model only; under ZeRO-3 its partitioned weights are gathered
(:func:`weakstrong.distributed.full_state_dict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from ..distributed import full_state_dict
from .config import IDENTITY_FIELDS
from .joint import STRONG_ADAPTER, WEAK_ADAPTER

logger = logging.getLogger(__name__)

STATE_NAME = "wmss_state.json"
INDEX_COLUMN = "wmss_index"
WEAK_SUBDIR = "weak"


class CheckpointsMixin:
    """Checkpoint, save and load overrides of :class:`~weakstrong.wmss.trainer.WMSSTrainer` (a ``Trainer``)."""

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
