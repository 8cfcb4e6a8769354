"""Exact-match scoring by teacher-forced argmax, and the logit statistics of the mechanism table.

Why teacher forcing equals greedy decoding here: every answer has the same length (``answer_len`` digits + EOS).
Greedy decoding emits, at each answer position, the argmax given the tokens it emitted before. If every
teacher-forced argmax equals the gold token, greedy emits gold at the first position, hence sees the gold prefix at
the second, and so on: it outputs exactly the gold answer. If some teacher-forced argmax is wrong, take the first
such position: greedy has emitted the gold prefix up to it, so it emits the same wrong token there and the answer is
wrong. So "all teacher-forced argmaxes right" ⇔ "greedy output = gold answer + EOS", and one batched forward pass
replaces autoregressive decoding (``tests/test_lab.py`` checks this against ``model.generate``). Ties between two
logits are the only difference (argmax picks the lower id in both; batched float noise could in principle split a
near-tie differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EncodedSet:
    """A held-out set as one unpadded tensor: ``input_ids [N, L]``, answer positions ``[prompt_len - 1, L - 1)``."""

    input_ids: torch.Tensor
    prompt_len: int

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode(task, tokenizer, pairs) -> EncodedSet:
    """Tokenize ``pairs`` exactly as TRL's ``SFTTrainer`` does for prompt/completion rows (completion + EOS)."""
    texts = [task.prompt(int(a), int(b)) + task.answer(int(a), int(b)) + tokenizer.eos_token for a, b in pairs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = {len(x) for x in ids}
    if lengths != {task.prompt_len + task.answer_len + 1}:
        raise ValueError(f"expected every problem to have {task.prompt_len + task.answer_len + 1} tokens, got {lengths}: "
                         "the tokenizer must write each digit, '+' and '=' as one token (the scorer needs one fixed "
                         "answer length). Use a model whose tokenizer splits digits (SmolLM2, Llama 3, Qwen) or the "
                         "lab's character tokenizer (model = \"\")")
    return EncodedSet(torch.tensor(ids, dtype=torch.long), task.prompt_len)


STAT_KEYS = ("target_logit", "nontarget_logit_mean", "nontarget_logit_max", "margin", "entropy", "nll")


@torch.no_grad()
def score(model, data: EncodedSet, batch_size: int | None = None) -> dict:
    """Exact-match accuracy (= greedy decoding, see the module docstring) and per-token logit statistics.

    Returns ``accuracy``, ``n``, ``correct`` (bool array ``[N]``, per problem, for paired bootstraps),
    ``token_accuracy``, and the means over answer tokens (digits and EOS) of :data:`STAT_KEYS`: the target's logit,
    the mean and the max of the other vocabulary entries' logits, the margin target − max other, the entropy of the
    softmax (nats) and the NLL of the target (nats). Only the answer positions' logits are computed
    (``logits_to_keep``); ``batch_size`` (default: up to 1,024 problems, fewer for a large vocabulary) bounds their
    memory.
    """
    keep = data.input_ids.shape[1] - data.prompt_len  # the answer positions of input_ids[:, :-1]
    if batch_size is None:
        vocab = model.get_output_embeddings().weight.shape[0]
        batch_size = max(8, min(1024, 2 ** 25 // (keep * vocab)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, tok_right = [], 0
    sums = dict.fromkeys(STAT_KEYS, 0.0)
    n_tok = 0
    try:
        for i in range(0, len(data), batch_size):
            ids = data.input_ids[i:i + batch_size].to(device)
            logits = model(input_ids=ids[:, :-1], use_cache=False, logits_to_keep=keep).logits.float()
            tgt = ids[:, data.prompt_len:]
            right = logits.argmax(-1) == tgt
            correct.append(right.all(-1).cpu())
            tok_right += int(right.sum())
            z_t = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            others = logits.scatter(-1, tgt.unsqueeze(-1), float("-inf"))
            v = logits.shape[-1]
            logp = torch.log_softmax(logits, -1)
            stats = {
                "target_logit": z_t,
                "nontarget_logit_mean": (logits.sum(-1) - z_t) / (v - 1),
                "nontarget_logit_max": others.max(-1).values,
                "margin": z_t - others.max(-1).values,
                "entropy": -(logp.exp() * logp).sum(-1),
                "nll": -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1),
            }
            for k, x in stats.items():
                sums[k] += float(x.double().sum())
            n_tok += tgt.numel()
    finally:
        model.train(was_training)
    c = torch.cat(correct).numpy().astype(bool)
    out = {"n": int(c.size), "accuracy": float(c.mean()), "correct": c, "token_accuracy": tok_right / max(n_tok, 1)}
    out.update({k: s / max(n_tok, 1) for k, s in sums.items()})
    out["accuracy_se"] = math.sqrt(out["accuracy"] * (1 - out["accuracy"]) / max(c.size, 1))
    return out


def scalar_metrics(result: dict, prefix: str = "") -> dict:
    """The JSON/CSV-friendly part of :func:`score`'s result (drops the per-problem array)."""
    return {f"{prefix}{k}": (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()
            if not isinstance(v, np.ndarray)}


def pack(correct) -> str:
    """Per-problem correctness (bool ``[N]``) as a compact hex string, for JSON."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``n`` bits as a bool array."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)
