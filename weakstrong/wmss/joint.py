"""Phase 3 of WMSS: the strong and weak models trained together on the cross entropy of their mixed logits.

:class:`JointModel` is the one ``nn.Module`` the Trainer sees in phase 3 (so DDP/DeepSpeed wrapping, gradient
clipping and the optimizer cover both branches). Two layouts:

* full fine-tuning — two separate causal LMs, ``strong`` and ``weak`` (each with its own optimizer state);
* LoRA — one PeftModel: the strong branch is its ``"default"`` adapter; the weak branch is either the base model
  with the adapter disabled (then frozen) or a second adapter (``weak_adapter``) on the same base weights.

:func:`mixed_loss` is the loss: token CE of ``softmax(λ·z_strong + (1-λ)·z_weak)`` over supervised completion
tokens, computed by ``weakstrong.kernels.mixed_cross_entropy`` on the supervised positions only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .selection import _kernels, supervised_logits


@dataclass
class JointOutput:
    """Sums over this micro-batch's supervised tokens (divide by ``num_tokens`` for means)."""

    loss_sum: torch.Tensor  # differentiable: summed mixed CE
    num_tokens: torch.Tensor
    strong_ce_sum: torch.Tensor  # detached: the strong model's own CE
    strong_entropy_sum: torch.Tensor
    weak_entropy_sum: torch.Tensor


def mixed_loss(strong_logits, weak_logits, targets, lam: float):
    """``(summed mixed CE, per-token H_strong, per-token H_weak)``; λ = 1 is the strong model's own CE.

    Gradients: ``λ(P_mix - e_y)`` to the strong logits, ``(1-λ)(P_mix - e_y)`` to the weak logits.
    """
    entropy_from_logits, mixed_cross_entropy, selective_log_softmax = _kernels()
    if weak_logits is None:  # λ = 1: the weak model does not enter the loss
        logp = selective_log_softmax(strong_logits, targets)
        with torch.no_grad():
            h = entropy_from_logits(strong_logits.detach()).float()
        return -logp.float().sum(), h, torch.zeros_like(h)
    return mixed_cross_entropy(strong_logits, weak_logits, targets, lam=lam, reduction="sum", return_entropies=True)


class JointModel(nn.Module):
    """Strong + weak causal LMs whose forward returns the mixed-logit loss (see module docstring).

    Args:
        strong: the strong causal LM, or the PeftModel in LoRA mode.
        weak: the weak causal LM (full mode); ``None`` in LoRA mode.
        lam: λ, the strong logits' weight.
        freeze_weak: no gradient to the weak branch.
        weak_adapter: LoRA mode only: name of the weak adapter, or ``None`` = base model with adapters disabled.
        strong_adapter: LoRA mode only: name of the strong adapter.
    """

    def __init__(self, strong, weak=None, lam: float = 0.5, freeze_weak: bool = False,
                 weak_adapter: str | None = None, strong_adapter: str = "default"):
        super().__init__()
        self.strong = strong
        self.lora = weak is None
        if not self.lora:
            self.weak = weak
        self.lam = float(lam)
        self.weak_adapter = weak_adapter
        self.strong_adapter = strong_adapter
        # the base model with adapters disabled cannot be trained; nor can a weak model that λ = 1 leaves out
        self.freeze_weak = bool(freeze_weak or (self.lora and weak_adapter is None) or self.lam == 1.0)
        self.config = getattr(strong, "config", None)
        self._set_trainable()

    # ------------------------------------------------------------------ branches
    def _set_trainable(self):
        if self.lora:
            names = [self.strong_adapter] + ([self.weak_adapter] if self.weak_adapter and not self.freeze_weak else [])
            self.strong.set_adapter(self.strong_adapter)
            if self.weak_adapter is not None:
                self.strong.set_requires_grad(self.weak_adapter, requires_grad=not self.freeze_weak)
            self.strong.set_requires_grad(names, requires_grad=True)
        elif self.freeze_weak:
            self.weak.requires_grad_(False)
        else:
            self.weak.requires_grad_(True)

    @contextlib.contextmanager
    def branch(self, which: str):
        """Context in which ``self.module_for(which)`` computes that branch (switches LoRA adapters)."""
        if not self.lora:
            yield self.strong if which == "strong" else self.weak
            return
        peft = self.strong
        if which == "strong":
            yield peft
            return
        if self.weak_adapter is None:
            with peft.disable_adapter():
                yield peft
            self._set_trainable()  # disable_adapter toggles requires_grad; restore before the strong pass
            return
        peft.set_adapter(self.weak_adapter)
        self._fix_lora_grads()
        try:
            yield peft
        finally:
            peft.set_adapter(self.strong_adapter)
            self._fix_lora_grads()

    def _fix_lora_grads(self):
        # peft's set_adapter freezes the inactive adapter; both stay trainable here
        names = [self.strong_adapter] + ([self.weak_adapter] if not self.freeze_weak else [])
        self.strong.set_requires_grad(names, requires_grad=True)
        if self.freeze_weak and self.weak_adapter is not None:
            self.strong.set_requires_grad(self.weak_adapter, requires_grad=False)

    def branch_logits(self, which: str, input_ids, attention_mask=None, labels=None, **kwargs):
        with self.branch(which) as module:
            return supervised_logits(module, input_ids, attention_mask, labels, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs) -> JointOutput:
        for k in ("num_items_in_batch", "use_cache", "fused_lm_head", "return_dict"):
            kwargs.pop(k, None)
        weak_logits = None
        if self.lam < 1.0:
            with contextlib.nullcontext() if not self.freeze_weak else torch.no_grad():
                weak_logits, _, _ = self.branch_logits("weak", input_ids, attention_mask, labels, **kwargs)
        strong_logits, targets, _ = self.branch_logits("strong", input_ids, attention_mask, labels, **kwargs)
        _, _, selective_log_softmax = _kernels()
        loss_sum, h_strong, h_weak = mixed_loss(strong_logits, weak_logits, targets, self.lam)
        with torch.no_grad():
            strong_ce = -selective_log_softmax(strong_logits.detach(), targets).float().sum()
        n = torch.as_tensor(targets.numel(), device=strong_logits.device)
        return JointOutput(loss_sum, n, strong_ce, h_strong.float().sum(), h_weak.float().sum())

    # ------------------------------------------------------------------ Trainer hooks
    def activation_checkpointing_enable(self, **kwargs):
        for m in (self.strong,) + (() if self.lora else (self.weak,)):
            fn = getattr(m, "activation_checkpointing_enable", None) or getattr(m, "gradient_checkpointing_enable")
            fn(**kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable
