"""Phase 3 of WMSS: the strong and weak models trained together on the cross entropy of their mixed logits.

:class:`JointModel` is the one ``nn.Module`` the Trainer trains (so DDP/DeepSpeed wrapping, gradient clipping and the
optimizer cover both branches). Two layouts:

* two models — ``strong`` and ``weak`` are separate causal LMs (full fine-tuning; each has its own optimizer state
  unless ``freeze_weak``);
* adapters (LoRA) — one PeftModel: the strong branch is its ``"default"`` adapter, the weak branch a second adapter
  ``"weak"`` on the same base weights (zero-initialised = the base model M0, or loaded from an earlier round).

:func:`mixed_loss` is the loss, from the last hidden states of both branches through
``weakstrong.kernels.linear_mixed_cross_entropy``: token CE of ``softmax(λ·z_strong + (1-λ)·z_weak)`` over the
supervised tokens, with the strong/weak entropies and NLLs of the same pass; no ``[N, V]`` logits of either model
exist at once.

Adapters and gradient checkpointing: the two branches run the same layers with different adapters, one after the
other. A checkpointed layer recomputes its forward during backward, when the other adapter may be active; so in the
adapters layout every checkpointed layer records the adapter active at its forward and re-activates it for the
recomputation (:meth:`JointModel.activation_checkpointing_enable`). Adapters are switched on the LoRA layers only
(``requires_grad`` is never touched), so a switch inside backward is harmless.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .selection import (
    causal_lm_parts,
    head_bias,
    head_weight,
    kernel_kwargs,
    logit_transform,
    router_aux_loss,
    supervised_hidden,
    supervised_positions,
)

STRONG_ADAPTER = "default"
WEAK_ADAPTER = "weak"


@dataclass
class JointOutput(ModelOutput):
    """Sums over a micro-batch's supervised tokens (divide by ``num_tokens`` for means). ``loss_sum`` is
    differentiable; the rest is detached. Weak statistics are 0 when λ = 1 (the weak model is not run)."""

    loss_sum: torch.Tensor | None = None  # summed objective (mixed_loss: the mixed CE, DFT or smoothed)
    mixed_ce_sum: torch.Tensor | None = None  # summed mixed CE (λ = 1: the strong CE)
    num_tokens: torch.Tensor | None = None
    strong_nll_sum: torch.Tensor | None = None  # the strong model's own CE
    weak_nll_sum: torch.Tensor | None = None
    strong_entropy_sum: torch.Tensor | None = None
    weak_entropy_sum: torch.Tensor | None = None
    strong_top1_sum: torch.Tensor | None = None  # tokens where the strong model's argmax is the target
    strong_loss_sum: torch.Tensor | None = None  # the strong model's own loss (same loss_type / label smoothing)
    aux_loss: torch.Tensor | None = None  # the strong model's MoE router balancing loss (differentiable), if enabled
    logits: torch.Tensor | None = None  # only with output="strong_logits"


LOSS_TYPES = ("nll", "dft")


def mixed_loss(strong_hidden, strong_weight, weak_hidden, weak_weight, targets, lam: float, loss_type: str = "nll",
               label_smoothing: float = 0.0, strong_bias=None, weak_bias=None, transform: dict | None = None):
    r"""The WMSS objective, summed over the supervised tokens, from hidden states ``[N, H]`` and heads ``[V, H]``.

    With ``z_s = T(h_s W_sᵀ + b_s)``, ``z_w = T(h_w W_wᵀ + b_w)`` — the models' own logits: ``b`` the LM-head bias
    (if any), ``T`` the family's logit transform ``transform`` (``logit_scale``, then ``final_logit_softcapping``:
    :func:`~weakstrong.wmss.selection.logit_transform`), shared by both models — ``z = λ·z_s + (1-λ)·z_w``,
    ``p = softmax(z)`` and, for token ``t`` with target ``y_t``, ``ℓ_t = -log p_t(y_t)`` (the mixed cross entropy):

    * ``loss_type="nll"``:  ``L = Σ_t ℓ_t``;
    * ``loss_type="dft"`` (Dynamic Fine-Tuning, arXiv 2508.05629, as TRL's SFT applies it to the trained model's
      distribution, here the mixture's):  ``L = Σ_t sg(p_t(y_t))·ℓ_t`` (``sg`` = stop-gradient);
    * ``label_smoothing = ε > 0`` (``loss_type="nll"`` only; transformers' ``LabelSmoother`` on the mixed logits):
      ``L = Σ_t [(1-ε)·ℓ_t + ε·(1/V)·Σ_v -log p_t(v)] = Σ_t [ℓ_t + ε·(z_t[y_t] - (1/V)·Σ_v z_t[v])]`` — exact
      without the ``[N, V]`` logits, since the mean logit is ``s·(h·mean_v(W_v) + mean_v(b_v))`` (linear in the
      head; refused with a soft-cap, which is not linear).

    λ = 1 is the strong model alone (the weak model is not needed; ``weak_hidden`` may be ``None``). Gradients of
    ``nll``: ``λ(p - e_y)`` to the strong logits, ``(1-λ)(p - e_y)`` to the weak ones (never built: the kernel
    recomputes them chunk by chunk).

    Returns ``(L, stats)``; ``stats`` holds detached per-token tensors: ``mixed_ce`` (``ℓ_t``), ``strong_nll``,
    ``strong_entropy``, ``weak_nll``, ``weak_entropy`` (``None`` at λ = 1), ``strong_top1`` (the strong model's argmax equals the target:
    SFT's ``mean_token_accuracy``) and ``strong_loss`` (the strong model's own loss under the same ``loss_type`` /
    ``label_smoothing``: what ``eval_loss`` reports, as SFT's would).
    """
    from weakstrong.kernels import linear_mixed_cross_entropy, linear_selective_log_softmax_and_entropy

    from .selection import kernel_kwargs

    transform = dict(transform or {})
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if label_smoothing and loss_type != "nll":
        raise ValueError("label_smoothing applies to loss_type='nll' only")
    if label_smoothing and transform.get("final_logit_softcapping"):
        raise NotImplementedError("label_smoothing_factor with a soft-capped model (final_logit_softcapping) is not "
                                  "supported: the smoothing term needs every logit once the logits are not linear.")
    if lam == 1.0:
        extra = kernel_kwargs(linear_selective_log_softmax_and_entropy, {"bias": strong_bias, **transform}, "The model")
        logp, ent = linear_selective_log_softmax_and_entropy(strong_hidden, strong_weight, targets, **extra)
        per_token = -logp
        st = {"strong_nll": per_token.detach(), "strong_entropy": ent.detach(), "weak_nll": None,
              "weak_entropy": None}
    else:
        extra = kernel_kwargs(linear_mixed_cross_entropy,
                              {"strong_bias": strong_bias, "weak_bias": weak_bias, **transform}, "The model")
        per_token, mst = linear_mixed_cross_entropy(strong_hidden, strong_weight, weak_hidden, weak_weight, targets,
                                                    lam=lam, reduction="none", return_stats=True, **extra)
        st = {"strong_nll": mst.strong_nll, "strong_entropy": mst.strong_entropy, "weak_nll": mst.weak_nll,
              "weak_entropy": mst.weak_entropy}
    st["mixed_ce"] = per_token.detach()
    if loss_type == "dft":
        per_token = per_token * torch.exp(-per_token.detach())
    scale = transform.get("logit_scale", 1.0)
    if label_smoothing:
        gap = _target_minus_mean_logit(strong_hidden, strong_weight, targets, strong_bias, scale)
        if lam != 1.0:
            gap = lam * gap + (1.0 - lam) * _target_minus_mean_logit(weak_hidden, weak_weight, targets, weak_bias,
                                                                     scale)
        per_token = per_token + label_smoothing * gap
    with torch.no_grad():
        own = st["strong_nll"]
        if loss_type == "dft":
            own = own * torch.exp(-own)
        if label_smoothing:
            own = own + label_smoothing * _target_minus_mean_logit(strong_hidden, strong_weight, targets, strong_bias,
                                                                   scale).float()
        st["strong_loss"] = own
        st["strong_top1"] = top1_hits(strong_hidden, strong_weight, targets, strong_bias, scale)
    return per_token.sum(), st


def _target_minus_mean_logit(hidden, weight, targets, bias=None, scale: float = 1.0):
    """``z[y] - mean_v z[v]`` per token for ``z = scale·(hidden @ weightᵀ + bias)`` (float32; differentiable),
    without ``[N, V]``."""
    h = hidden.float()
    w = weight.float()
    gap = (h * w[targets]).sum(-1) - h @ w.mean(0)
    if bias is not None:
        gap = gap + bias.float()[targets] - bias.float().mean()
    return scale * gap


@torch.no_grad()
def top1_hits(hidden, weight, targets, bias=None, scale: float = 1.0) -> torch.Tensor:
    """``argmax_v z[v] == target`` per token (bool) for ``z = scale·(hidden @ weightᵀ + bias)``, in the kernels'
    token chunks (float32): SFT's ``mean_token_accuracy`` numerator, without the full ``[N, V]`` logits (a soft-cap
    is monotonic: it keeps the argmax)."""
    from weakstrong.kernels import linear

    n, v = hidden.shape[0], weight.shape[0]
    out = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    step = max(1, int(linear.default_token_chunk(n, v, hidden.device)))
    w = weight.float()
    for i in range(0, n, step):
        z = hidden[i:i + step].float() @ w.T
        if bias is not None:
            z = z + bias.float()
        out[i:i + step] = (z * scale).argmax(-1) == targets[i:i + step]
    return out


def _lora_layers(peft_model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]


class JointModel(nn.Module):
    """Strong + weak causal LMs whose forward returns the mixed-logit loss and its statistics (module docstring).

    Args:
        strong: the strong causal LM (a PeftModel in the adapters layout).
        weak: the weak causal LM (two-models layout), or ``None`` for the adapters layout (adapter ``"weak"`` on
            ``strong``).
        lam: λ, the strong logits' weight.
        freeze_weak: no gradient to the weak branch.
        loss_type, label_smoothing: the objective (:func:`mixed_loss`).
        router_aux_loss: return the strong model's MoE load-balancing loss (``aux_loss``) from its router logits.
    """

    _keys_to_ignore_on_save = None
    main_input_name = "input_ids"
    accepts_loss_kwargs = True  # the mixed loss is normalised by num_items_in_batch (gradient accumulation)

    def __init__(self, strong, weak=None, lam: float = 0.5, freeze_weak: bool = False, loss_type: str = "nll",
                 label_smoothing: float = 0.0, router_aux_loss: bool = False):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type
        self.label_smoothing = float(label_smoothing)
        self.router_aux_loss = bool(router_aux_loss)
        self.strong = strong
        self.adapters = weak is None
        if not self.adapters:
            self.weak = weak
        self.lam = float(lam)
        self.freeze_weak = bool(freeze_weak or self.lam == 1.0)  # λ = 1 leaves the weak model out of the loss
        self._active = STRONG_ADAPTER
        self._layers = _lora_layers(strong) if self.adapters else []
        if self.adapters and WEAK_ADAPTER not in strong.peft_config:
            raise ValueError(f"the adapters layout needs a {WEAK_ADAPTER!r} adapter on the strong PeftModel")
        self._zero3_registered = False
        self.transform = logit_transform(strong)
        if not self.adapters and logit_transform(weak) != self.transform:
            raise ValueError(f"The strong and weak models transform their logits differently ({self.transform} vs "
                             f"{logit_transform(weak)}): use an earlier checkpoint of the same model as the weak one.")
        self.check_kernels()
        self.set_trainable()

    def check_kernels(self):
        """Refuse now (at construction) a head bias or logit transform the installed kernels cannot take yet."""
        from weakstrong.kernels import linear_mixed_cross_entropy, linear_selective_log_softmax_and_entropy

        head_s, head_w = self.heads()
        name = type(self.strong.get_base_model() if hasattr(self.strong, "get_base_model") else self.strong).__name__
        bs, bw = getattr(head_s, "bias", None), getattr(head_w, "bias", None)
        for bias in (bs, bw):  # phase 2's entropies, and the loss at λ = 1
            kernel_kwargs(linear_selective_log_softmax_and_entropy, {"bias": bias, **self.transform}, name)
        if self.lam < 1.0:
            kernel_kwargs(linear_mixed_cross_entropy, {"strong_bias": bs, "weak_bias": bw, **self.transform}, name)
        if self.label_smoothing and self.transform.get("final_logit_softcapping"):
            raise ValueError("label_smoothing_factor with a soft-capped model (final_logit_softcapping, e.g. Gemma-2) "
                             "is not supported: set label_smoothing_factor=0.0.")

    # ------------------------------------------------------------------ transformers-facing attributes
    @property
    def config(self):
        return self.strong.config

    @property
    def generation_config(self):
        return getattr(self.strong, "generation_config", None)

    @property
    def _no_split_modules(self):  # FSDP auto-wrap policy
        return getattr(self.strong, "_no_split_modules", None)

    def get_input_embeddings(self):
        """The strong model's input embeddings (NEFTune's hook; in the adapters layout shared with the weak branch)."""
        model = self.strong.get_base_model() if hasattr(self.strong, "get_base_model") else self.strong
        return model.get_input_embeddings()

    def weak_module(self):
        return self.strong if self.adapters else self.weak

    # ------------------------------------------------------------------ trainability
    def set_trainable(self):
        """Strong trainable; weak trainable unless frozen (adapters layout: only the LoRA weights of each)."""
        if self.adapters:
            self.strong.set_requires_grad([STRONG_ADAPTER], requires_grad=True)
            self.strong.set_requires_grad([WEAK_ADAPTER], requires_grad=not self.freeze_weak)
        else:
            self.weak.requires_grad_(not self.freeze_weak)

    # ------------------------------------------------------------------ adapter switching
    @contextlib.contextmanager
    def adapter(self, name: str):
        """Activate one adapter on every LoRA layer (adapters layout; a no-op otherwise). Only the layers' active
        adapter changes (not ``requires_grad``, not the PeftModel's own ``active_adapter`` used for saving)."""
        if not self.adapters or name == self._active:
            yield
            return
        previous = self._active
        self._set_active(name)
        try:
            yield
        finally:
            self._set_active(previous)

    def _set_active(self, name: str):
        for layer in self._layers:
            layer._active_adapter = [name]
        self._active = name

    @contextlib.contextmanager
    def branch(self, which: str):
        """``with joint.branch("weak") as module:`` — the module computing that branch."""
        if which not in ("strong", "weak"):
            raise ValueError(f"branch must be 'strong' or 'weak', got {which!r}")
        with self.adapter(STRONG_ADAPTER if which == "strong" else WEAK_ADAPTER):
            yield self.strong if (which == "strong" or self.adapters) else self.weak

    def _pinned(self, checkpoint_func):
        """Wrap a layer's checkpoint function so that its recomputation runs with the adapter of its forward."""
        if getattr(checkpoint_func, "_wmss_pinned", False):
            return checkpoint_func
        joint = self

        def run(function, *args, **kwargs):
            name = joint._active

            def replay(*a, **k):
                with joint.adapter(name):
                    return function(*a, **k)

            return checkpoint_func(replay, *args, **kwargs)

        run._wmss_pinned = True
        return functools.wraps(checkpoint_func)(run) if hasattr(checkpoint_func, "__name__") else run

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False):
        kw = dict(activation_checkpointing_kwargs=activation_checkpointing_kwargs, every_n_layers=every_n_layers,
                  offload=offload)
        for m in (self.strong,) + (() if self.adapters else (self.weak,)):
            m.activation_checkpointing_enable(**kw)
        if self.adapters:
            for module in self.strong.modules():
                func = module.__dict__.get("_gradient_checkpointing_func")
                if func is not None:
                    module._gradient_checkpointing_func = self._pinned(func)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self):
        for m in (self.strong,) + (() if self.adapters else (self.weak,)):
            m.activation_checkpointing_disable()

    gradient_checkpointing_disable = activation_checkpointing_disable

    # ------------------------------------------------------------------ ZeRO-3
    def heads(self):
        """The LM head modules of the strong and weak branches (the same module in the adapters layout)."""
        _, hs = causal_lm_parts(self.strong)
        _, hw = causal_lm_parts(self.weak_module())
        return hs, hw

    def register_zero3_heads(self):
        """Under ZeRO-3, register the head weights as external parameters of this module: the kernels read them
        directly (never through the head's forward), in the forward and again in the backward, so DeepSpeed must
        gather them for this module's forward and backward. Idempotent; a no-op without ZeRO-3."""
        if self._zero3_registered:
            return
        params = {id(t): t for h in self.heads() for t in (h.weight, getattr(h, "bias", None))
                  if t is not None and hasattr(t, "ds_id")}
        if params:
            import deepspeed

            for p in params.values():
                deepspeed.zero.register_external_parameter(self, p)
        self._zero3_registered = True

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids=None, labels=None, output: str = "loss", **kwargs) -> JointOutput:
        """``output="loss"``: the mixed loss and statistics (:class:`JointOutput`). ``output="strong_logits"``: the
        strong model's full logits ``[B, T, V]`` (only for ``compute_metrics``)."""
        for k in ("num_items_in_batch", "use_cache", "return_dict", "fused_lm_head"):
            kwargs.pop(k, None)
        batch = {"input_ids": input_ids, "labels": labels, **kwargs}
        if output == "strong_logits":
            with self.branch("strong") as m:
                return JointOutput(logits=m(input_ids=input_ids, **kwargs, use_cache=False).logits)
        if output != "loss":
            raise ValueError(f"output must be 'loss' or 'strong_logits', got {output!r}")
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        mask, targets, _ = supervised_positions(batch)
        head_s, head_w = self.heads()
        h_weak = None
        if self.lam < 1.0:
            grad = torch.is_grad_enabled() and not self.freeze_weak
            with self.branch("weak") as m, torch.set_grad_enabled(grad):
                h_weak = supervised_hidden(m, batch, mask)
        extra = {"output_router_logits": True} if self.router_aux_loss else {}
        with self.branch("strong") as m:
            h_strong, out_strong = supervised_hidden(m, batch, mask, return_output=True, **extra)
        aux = router_aux_loss(m, out_strong, batch.get("attention_mask")) if self.router_aux_loss else None
        params = [t for h in (head_s, head_w) for t in (h.weight, getattr(h, "bias", None)) if t is not None]
        with maybe_gather_lm_head_ctx(*params):
            w_s = head_weight(head_s)
            w_w = head_weight(head_w) if self.lam < 1.0 else None
            loss_sum, st = mixed_loss(h_strong, w_s, h_weak, w_w, targets, self.lam, loss_type=self.loss_type,
                                      label_smoothing=self.label_smoothing, strong_bias=head_bias(head_s),
                                      weak_bias=head_bias(head_w) if self.lam < 1.0 else None,
                                      transform=self.transform)
        zero = loss_sum.new_zeros(())

        def total(x):
            return zero if x is None else x.float().sum()

        return JointOutput(loss_sum=loss_sum, mixed_ce_sum=total(st["mixed_ce"]),
                           num_tokens=torch.as_tensor(targets.numel(), device=loss_sum.device),
                           strong_nll_sum=total(st["strong_nll"]), weak_nll_sum=total(st["weak_nll"]),
                           strong_entropy_sum=total(st["strong_entropy"]),
                           weak_entropy_sum=total(st["weak_entropy"]), strong_top1_sum=total(st["strong_top1"]),
                           strong_loss_sum=total(st["strong_loss"]), aux_loss=aux)
