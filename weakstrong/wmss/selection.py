"""Phase 2 of WMSS: per-example entropies, sampling weights, the weighted draw.

* :func:`example_entropies` — teacher-forced mean entropy (nats) of a model over each example's supervised
  completion tokens; the logits at position t predict token t+1, so label t+1 selects position t.
* :func:`sampling_weights` — the paper's formula (v2 Eq. 9) or the released code's, as a probability vector.
* :func:`resample` — the seeded draw with replacement, optionally de-duplicated.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .config import WEIGHT_FORMULAS

IGNORE_INDEX = -100


def _kernels():
    try:
        from weakstrong.kernels import entropy_from_logits, mixed_cross_entropy, selective_log_softmax
    except ImportError:  # the package __init__ may not re-export yet
        from weakstrong.kernels.entropy import entropy_from_logits, selective_log_softmax
        from weakstrong.kernels.mixed_ce import mixed_cross_entropy
    return entropy_from_logits, mixed_cross_entropy, selective_log_softmax


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
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(lm).__name__} transforms its logits ({attr}={getattr(config, attr)}); WMSS computes logits from "
                "the last hidden state and does not support this yet."
            )
    backbone = lm.base_model if lm.base_model is not lm else None
    if backbone is None:
        raise TypeError(f"{type(lm).__name__} has no backbone under base_model_prefix; pass a *ForCausalLM model")
    return backbone, lm.get_output_embeddings()


def supervised_logits(model, input_ids, attention_mask=None, labels=None, **kwargs):
    """Logits ``[N, V]`` at the positions that predict a supervised token, and those tokens ``[N]``.

    ``labels`` are aligned with ``input_ids`` (the TRL convention, -100 = not trained); position t predicts label
    t+1. Only the N supervised positions go through the LM head. Also returns the row of each position ``[N]``.
    """
    backbone, head = causal_lm_parts(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    h = hidden[:, :-1][mask]
    logits = head(h.to(head.weight.dtype))
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[mask]
    return logits, targets[mask], rows


# --------------------------------------------------------------------------------------------- tokenization


def tokenize_example(tokenizer, example: dict, max_length: int | None = None) -> dict:
    """``input_ids`` and ``labels`` (-100 on the prompt) of a prompt/completion or messages example."""
    if "input_ids" in example:
        ids = list(example["input_ids"])
        labels = list(example["labels"]) if "labels" in example else list(ids)
    else:
        if "messages" in example and "prompt" not in example:
            example = messages_to_prompt_completion(example)
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):  # conversational
            p_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        else:
            eos = tokenizer.eos_token or ""
            text = completion if completion.endswith(eos) else completion + eos
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        k = 0
        while k < min(len(p_ids), len(ids)) and p_ids[k] == ids[k]:
            k += 1
        labels = [IGNORE_INDEX] * k + ids[k:]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def messages_to_prompt_completion(example: dict) -> dict:
    """Split a conversation at its final assistant turn(s): everything before is the prompt."""
    messages = list(example["messages"])
    k = len(messages)
    while k > 0 and messages[k - 1]["role"] == "assistant":
        k -= 1
    if k == len(messages) or k == 0:
        raise ValueError("a 'messages' example must end with an assistant turn and start with another role")
    return {"prompt": messages[:k], "completion": messages[k:]}


def unsupervised_rows(labels_per_row: Sequence[Sequence[int]], names: Sequence | None = None) -> list:
    """Rows with no supervised (predictable) token: labels[1:] all -100."""
    bad = []
    for i, labels in enumerate(labels_per_row):
        if not any(x != IGNORE_INDEX for x in list(labels)[1:]):
            bad.append(names[i] if names is not None else i)
    return bad


def no_supervised_tokens_error(rows: list) -> ValueError:
    shown = ", ".join(str(r) for r in rows[:20]) + (" ..." if len(rows) > 20 else "")
    return ValueError(
        f"{len(rows)} training example(s) have no supervised completion tokens (rows {shown}), so their entropy and "
        "loss are undefined. Give each example a non-empty completion, or raise max_length (or shorten the prompt) "
        "so the completion is not truncated away."
    )


# --------------------------------------------------------------------------------------------- entropies


@torch.no_grad()
def example_entropies(
    model,
    dataset,
    tokenizer=None,
    batch_size: int = 8,
    max_length: int | None = None,
    pad_token_id: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Per-example mean entropy (nats) of ``model`` over each example's supervised completion tokens.

    Teacher-forced on the gold completion: ``H(M; x) = mean_t -Σ_v P(v|c_t) log P(v|c_t)`` over the positions t
    whose next token is supervised (logits at t predict token t+1). ``dataset`` rows are tokenized
    (``input_ids`` + ``labels`` aligned with the ids, -100 where not trained, as TRL's ``SFTTrainer`` prepares
    them) or raw prompt/completion or messages rows, tokenized with ``tokenizer``. Batched with right padding,
    sorted by length; entropies via ``weakstrong.kernels.entropy_from_logits``. A PeftModel is measured with its
    active adapter (wrap the call in ``model.disable_adapter()`` for the base model). Returns float64 ``[len]``.
    """
    entropy_from_logits = _kernels()[0]
    rows = [tokenize_example(tokenizer, dict(ex), max_length) if ("input_ids" not in ex or "labels" not in ex)
            else {"input_ids": list(ex["input_ids"]), "labels": list(ex["labels"])} for ex in dataset]
    bad = unsupervised_rows([r["labels"] for r in rows])
    if bad:
        raise no_supervised_tokens_error(bad)
    if pad_token_id is None:
        pad_token_id = 0 if tokenizer is None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                                    else tokenizer.eos_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros(len(rows), dtype=np.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(rows[i]["input_ids"]) for i in idx)
            ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                n = len(rows[i]["input_ids"])
                ids[b, :n] = torch.tensor(rows[i]["input_ids"])
                labels[b, :n] = torch.tensor(rows[i]["labels"])
                attn[b, :n] = 1
            ids, labels, attn = ids.to(device), labels.to(device), attn.to(device)
            logits, _, row = supervised_logits(model, ids, attn, labels)
            ent = entropy_from_logits(logits).double()
            sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add_(0, row, ent)
            counts = torch.bincount(row, minlength=len(idx)).clamp(min=1)
            out[idx] = (sums / counts).cpu().numpy()
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return out
