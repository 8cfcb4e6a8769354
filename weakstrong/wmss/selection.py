"""Phase 2 of WMSS: per-example entropies, sampling weights, the weighted draw.

* :func:`example_entropies` — teacher-forced mean entropy (nats) of a model over the tokens each example's loss
  trains (the same labels as SFT); position t predicts token t+1, so label t+1 selects position t. Computed from
  the last hidden states with the chunked kernel: no ``[N, V]`` logits.
* :func:`sampling_weights` — the paper's formula (v2 Eq. 9) or the released code's, as a probability vector.
* :func:`resample` — the seeded draw with replacement, optionally de-duplicated.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .config import WEIGHT_FORMULAS

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------- sampling


def sampling_weights(h_strong, h_weak, alpha: float = 0.1, beta: float = 0.8, gamma: float = 0.1,
                     formula: str = "paper") -> np.ndarray:
    """Probability of drawing each example, from its strong and weak mean entropies (nats).

    With ``ΔH = h_strong - h_weak``:

    * ``"paper"`` (v2, Eq. 9): ``p ∝ α·[-ΔH]₊ + β·H_strong + γ·[ΔH]₊``.
    * ``"official"`` (released code): ``p = α·H_weak/ΣH_weak + β·[-ΔH]₊/Σ[-ΔH]₊ + γ·[ΔH]₊/Σ[ΔH]₊``, then
      ``p /= Σp``. A term whose sum is 0 (e.g. no example with ΔH > 0) contributes nothing.

    The two put most of the mass on different examples. Returns float64 weights summing to 1; uniform (with a
    warning) when every term is zero.
    """
    import warnings

    hs = np.asarray(h_strong, dtype=np.float64)
    hw = np.asarray(h_weak, dtype=np.float64)
    if hs.shape != hw.shape or hs.ndim != 1:
        raise ValueError(f"h_strong and h_weak must be 1-D of equal length, got {hs.shape} and {hw.shape}")
    if not (np.isfinite(hs).all() and np.isfinite(hw).all()):
        raise ValueError("entropies must be finite; a NaN usually means an example without supervised tokens")
    if (hs < 0).any() or (hw < 0).any():
        raise ValueError("entropies must be >= 0 (they are in nats)")
    coef = {"alpha": alpha, "beta": beta, "gamma": gamma}
    if any(v < 0 for v in coef.values()):
        raise ValueError(f"alpha, beta, gamma must be >= 0, got {coef}")
    if not any(v > 0 for v in coef.values()):
        raise ValueError("alpha, beta and gamma are all 0: set at least one > 0 (defaults 0.1, 0.8, 0.1)")
    if formula not in WEIGHT_FORMULAS:
        raise ValueError(f"formula must be one of {WEIGHT_FORMULAS}, got {formula!r}")
    if hs.size == 0:
        return hs.copy()
    delta = hs - hw
    neg, pos = np.clip(-delta, 0, None), np.clip(delta, 0, None)
    if formula == "paper":
        p = alpha * neg + beta * hs + gamma * pos
    else:
        def share(x):
            total = x.sum()
            return x / total if total > 0 else np.zeros_like(x)

        p = alpha * share(hw) + beta * share(neg) + gamma * share(pos)
    total = p.sum()
    if total <= 0:
        warnings.warn("every sampling weight is 0 (all entropies and differences are 0); drawing uniformly",
                      stacklevel=2)
        return np.full_like(p, 1.0 / p.size)
    return p / total


def resample(weights, n: int | None = None, seed: int = 42, dedup: bool = True) -> np.ndarray:
    """Draw ``n`` (default ``len(weights)``) indices with replacement, with probabilities ``weights``.

    Seeded (``numpy.random.default_rng(seed)``). ``dedup=True`` keeps each index once, in the order of its first
    draw (the paper: 218 → 123 steps per epoch); ``dedup=False`` returns the raw draw (the released code).
    """
    p = np.asarray(weights, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("weights must be a non-empty 1-D array")
    if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError("weights must be finite, >= 0 and not all 0")
    n = p.size if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    draw = np.random.default_rng(seed).choice(p.size, size=n, replace=True, p=p / p.sum())
    if not dedup:
        return draw.astype(np.int64)
    _, first = np.unique(draw, return_index=True)
    return draw[np.sort(first)].astype(np.int64)


def selection_stats(h_strong, h_weak, indices, n_drawn: int, tol: float = 1e-6) -> dict[str, float]:
    """Telemetry of one selection: mean entropies (nats), share of examples per ΔH sign, set size, duplicates."""
    hs, hw = np.asarray(h_strong, np.float64), np.asarray(h_weak, np.float64)
    delta = hs - hw
    unique = len(np.unique(indices))
    return {
        "entropy/weak": float(hw.mean()) if hw.size else 0.0,
        "entropy/strong": float(hs.mean()) if hs.size else 0.0,
        "entropy/delta": float(delta.mean()) if delta.size else 0.0,
        "entropy/abs_delta": float(np.abs(delta).mean()) if delta.size else 0.0,
        "delta/share_negative": float((delta < -tol).mean()) if delta.size else 0.0,
        "delta/share_zero": float((np.abs(delta) <= tol).mean()) if delta.size else 0.0,
        "delta/share_positive": float((delta > tol).mean()) if delta.size else 0.0,
        "selection/drawn": float(n_drawn),
        "selection/size": float(len(indices)),
        "selection/unique": float(unique),
        "selection/duplicates": float(n_drawn - unique),
    }


# --------------------------------------------------------------------------------------------- model parts


def causal_lm_parts(model):
    """``(backbone, lm_head)`` of a causal LM (a PeftModel is looked through; its adapters stay in the layers)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = lm.base_model if lm.base_model is not lm else None
    if backbone is None:
        raise TypeError(f"{type(lm).__name__} has no backbone under base_model_prefix; pass a *ForCausalLM model")
    return backbone, lm.get_output_embeddings()


def logit_transform(model) -> dict:
    """The transform a causal LM applies to its LM head's output, as keyword arguments of the hidden-state kernels
    (TRL 1.16's fused LM head reads the same config fields): ``logit_scale`` (Cohere's ``logit_scale``, Muse's
    ``output_multiplier``, Falcon-H1's ``lm_head_multiplier``; Granite / MiniCPM3 divide by ``logits_scaling``,
    HyperCLOVA X multiplies by it) and ``final_logit_softcapping`` (Gemma-2/3). Only the non-trivial ones; ``{}``
    for a plain head."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    out = {}
    scale = getattr(config, "logit_scale", None)
    if scale is None:
        scale = getattr(config, "output_multiplier", None)
    if scale is None:
        scale = getattr(config, "lm_head_multiplier", None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scale = config.logits_scaling if config.model_type == "hyperclovax" else 1.0 / config.logits_scaling
    if scale is not None and float(scale) != 1.0:
        out["logit_scale"] = float(scale)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        out["final_logit_softcapping"] = float(cap)
    return out


def head_bias(head):
    """The LM head's bias (``None`` for a bias-free head); an FSDP2 DTensor is all-gathered like the weight."""
    bias = getattr(head, "bias", None)
    if bias is None:
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()
    return bias.full_tensor() if isinstance(bias, DTensor) else bias


def kernel_kwargs(kernel, kwargs: dict, model_name: str) -> dict:
    """``kwargs`` (non-``None`` head bias / logit transform) checked against ``kernel``'s signature: a kernel that
    does not take one of them yet would compute the loss of other logits than the model's, so this refuses."""
    import inspect

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    missing = [k for k in kwargs if k not in inspect.signature(kernel).parameters]
    if missing:
        raise NotImplementedError(
            f"{model_name} transforms its logits or has an LM-head bias ({', '.join(missing)}), and the installed "
            f"weakstrong.kernels.{kernel.__name__} does not take {missing} yet, so WMSS cannot compute the exact "
            "cross entropy of this model's logits. Use a model family with a plain LM head (Llama, Qwen, Mistral, "
            "...) until the kernels support these arguments.")
    return kwargs


def head_weight(head) -> torch.Tensor:
    """The LM head's ``[V, H]`` weight, for the hidden-state kernels (which read it directly).

    Refuses what those kernels would silently get wrong: a PEFT adapter or ``modules_to_save`` copy on the head (its
    bias goes to the kernels through :func:`head_bias`). An FSDP2-sharded weight (DTensor) is all-gathered
    (differentiably), as TRL's fused LM head does.
    """
    if not isinstance(getattr(head, "weight", None), torch.Tensor) or hasattr(head, "base_layer") \
            or hasattr(head, "modules_to_save"):
        raise NotImplementedError(
            f"The LM head is wrapped ({type(head).__name__}): a LoRA adapter or modules_to_save on lm_head is not "
            "supported by WMSS (the losses read the head weight directly). Fix: leave lm_head out of "
            "target_modules / modules_to_save.")
    weight = head.weight
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
    return weight


def forward_inputs(batch: dict) -> dict:
    """The model inputs of a collated batch (everything but the labels)."""
    return {k: v for k, v in batch.items() if k not in ("labels", "num_items_in_batch")}


def supervised_positions(batch: dict):
    """``(mask [B, T-1], targets [N], example [N])``: positions t whose next label is trained (-100 = not), the
    label they predict and the example each belongs to (its row, or with padding-free batches its ``seq_idx``)."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if "seq_idx" in batch:  # padding-free: one row holding every sequence
        example = batch["seq_idx"][:, 1:].to(labels.device)[mask].long()
    elif "position_ids" in batch and "attention_mask" not in batch:
        starts = (batch["position_ids"] == 0).long().cumsum(-1) - 1
        example = starts[:, 1:][mask]
    else:
        example = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[mask]
    return mask, targets[mask], example


def is_prompt_learning(model) -> bool:
    """A PeftModel whose active adapter is a prompt-learning type (prompt tuning, prefix tuning, p-tuning, ...): its
    virtual tokens exist only in the PeftModel's own forward, never in the backbone's."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def backbone_output(model, batch: dict, **extra):
    """The backbone's output (``last_hidden_state`` ``[B, T, H]``, router logits if asked) for a collated batch.

    A prompt-learning PeftModel runs through its own forward, so its virtual tokens (prepended embeddings, or the
    prefix's key/values) act exactly as in SFT; the backbone's output is captured by a forward hook, the LM head sees
    one position only (``logits_to_keep=1``), and the virtual positions are cut off the returned hidden states. Any
    other model (LoRA and the other tuner types live inside the backbone's layers) runs its backbone directly.
    """
    inputs = forward_inputs(batch)
    backbone, _ = causal_lm_parts(model)
    if not is_prompt_learning(model):
        return backbone(**inputs, use_cache=False, **extra)
    if "attention_mask" not in inputs:
        raise ValueError("Prompt-learning adapters need an attention mask: padding-free batches (padding_free=True) "
                         "are not supported with them. Set padding_free=False.")
    captured = {}

    def keep(_module, _args, _kwargs, output):
        captured["output"] = output

    handle = backbone.register_forward_hook(keep, with_kwargs=True)
    try:
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
              logits_to_keep=1, **extra)
    finally:
        handle.remove()
    out = captured["output"]
    virtual = out.last_hidden_state.shape[1] - inputs["input_ids"].shape[1]
    if virtual:
        out.last_hidden_state = out.last_hidden_state[:, virtual:]
    return out


def supervised_hidden(model, batch: dict, mask=None, return_output: bool = False, **extra):
    """Last hidden states ``[N, H]`` at the positions that predict a supervised token (see
    :func:`supervised_positions`); the LM head is not applied, so no ``[N, V]`` logits are built. ``extra`` goes to
    the backbone (e.g. ``output_router_logits``); ``return_output`` also returns its output."""
    if mask is None:
        mask = supervised_positions(batch)[0]
    out = backbone_output(model, batch, **extra)
    hidden = out.last_hidden_state[:, :-1][mask]
    return (hidden, out) if return_output else hidden


def router_aux_loss(model, output, attention_mask=None):
    """The MoE load-balancing loss of a backbone output that holds ``router_logits`` (transformers' Mixtral loss,
    which every MoE family uses; the same call as TRL's fused LM head), unweighted."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    logits = getattr(output, "router_logits", None)
    if not logits:
        raise ValueError(f"{type(lm).__name__} returned no router logits although its router auxiliary loss is "
                         "enabled (router_aux_loss_coef != 0).")
    num_experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    if attention_mask is not None and attention_mask.shape[-1] != logits[0].shape[0] // attention_mask.shape[0]:
        attention_mask = None  # prompt-learning virtual tokens: every position counts
    return load_balancing_loss_func(logits, num_experts, config.num_experts_per_tok, attention_mask)


# --------------------------------------------------------------------------------------------- entropies


def budget_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Positions grouped for padded forwards: sorted by length, a batch grows while it has at most ``batch_size``
    rows and ``rows × longest <= max_tokens`` (a longer example runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        width = max(longest, lengths[i])
        if current and (len(current) + 1 > batch_size or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current, width = [], lengths[i]
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches


def no_supervised_tokens_error(rows: list) -> ValueError:
    shown = ", ".join(str(r) for r in rows[:20]) + (" ..." if len(rows) > 20 else "")
    return ValueError(
        f"{len(rows)} training example(s) have no supervised tokens (rows {shown}), so their entropy is undefined. "
        "Give each example a non-empty completion / assistant turn, or raise max_length (or shorten the prompt) so "
        "it is not truncated away."
    )


@torch.no_grad()
def example_entropies(
    model,
    rows: Sequence[dict],
    collator=None,
    pad_token_id: int = 0,
    batch_size: int = 8,
    max_tokens: int = 16384,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Per-example mean entropy (nats) of ``model`` over the tokens each example's loss trains.

    Teacher-forced: ``H(M; x) = mean_t -Σ_v P(v|c_t) log P(v|c_t)`` over the positions t whose next label is not -100
    (position t predicts token t+1). ``rows`` are prepared examples (``input_ids`` and ``labels``, as TRL's
    ``SFTTrainer._prepare_dataset`` makes them: completion-only, assistant-only or every token); ``collator`` batches
    them (default: TRL's ``DataCollatorForLanguageModeling``; padding-free batches are split back by ``seq_idx``). The
    entropies come from the last hidden states through
    ``weakstrong.kernels.linear_selective_log_softmax_and_entropy`` (no ``[N, V]`` logits). A PeftModel is measured
    with its active adapter. Returns float64 ``[len(rows)]``.
    """
    from weakstrong.kernels import linear_selective_log_softmax_and_entropy

    if collator is None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)
    feats = [{k: list(r[k]) for k in ("input_ids", "labels", "seq_lengths") if k in r} for r in rows]
    empty = [i for i, f in enumerate(feats) if not any(x != IGNORE_INDEX for x in f["labels"][1:])]
    if empty:
        raise no_supervised_tokens_error(empty)
    device = next(model.parameters()).device
    _, head = causal_lm_parts(model)
    extra = kernel_kwargs(linear_selective_log_softmax_and_entropy,
                          {"bias": head_bias(head), **logit_transform(model)}, type(model).__name__)
    was_training = model.training
    model.eval()
    out = np.zeros(len(feats), dtype=np.float64)
    try:
        for idx in budget_batches([len(f["input_ids"]) for f in feats], batch_size, max_tokens):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in collator([feats[i] for i in idx]).items()}
            mask, targets, example = supervised_positions(batch)
            hidden = supervised_hidden(model, batch, mask)
            _, ent = linear_selective_log_softmax_and_entropy(hidden, head_weight(head), targets, **extra)
            sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add_(0, example, ent.double())
            counts = torch.bincount(example, minlength=len(idx))
            means = (sums / counts.clamp(min=1)).cpu().numpy()
            if not np.isfinite(means).all():
                bad = [idx[j] for j in np.flatnonzero(~np.isfinite(means))]
                raise FloatingPointError(
                    f"The model's entropy is not finite on example(s) {bad[:10]} although they have supervised "
                    "tokens: its logits contain NaN/Inf (check the weights, e.g. a diverged checkpoint, and the dtype).")
            out[idx] = means
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return out
