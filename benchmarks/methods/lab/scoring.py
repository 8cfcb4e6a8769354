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
#: pass@k under sampling: the k values and the sampling temperatures reported by :func:`score`
PASS_KS = (1, 4, 16)
PASS_TEMPERATURES = (1.0, 0.6)


def pass_key(k: int, temperature: float) -> str:
    return f"pass@{k}_T{temperature:g}"


@torch.no_grad()
def score(model, data: EncodedSet, batch_size: int | None = None) -> dict:
    """Exact-match accuracy (= greedy decoding, see the module docstring) and per-token logit statistics.

    Returns ``accuracy``, ``n``, ``correct`` (bool array ``[N]``, per problem, for paired bootstraps),
    ``token_accuracy``, and the means over answer tokens (digits and EOS) of :data:`STAT_KEYS`: the target's logit,
    the mean and the max of the other vocabulary entries' logits, the margin target − max other, the entropy of the
    softmax (nats) and the NLL of the target (nats), and pass@k under sampling (:data:`PASS_KS` at
    :data:`PASS_TEMPERATURES`, keys :func:`pass_key`, see :func:`pass_at_k_exact`). Only the answer positions' logits are computed
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
    seq_logp = {t: [] for t in PASS_TEMPERATURES}
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
            for t in PASS_TEMPERATURES:  # log P(the sampled answer = gold) at temperature t, per problem
                lp = torch.log_softmax(logits.double() / t, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                seq_logp[t].append(lp.sum(-1).cpu())
            n_tok += tgt.numel()
    finally:
        model.train(was_training)
    c = torch.cat(correct).numpy().astype(bool)
    out = {"n": int(c.size), "accuracy": float(c.mean()), "correct": c, "token_accuracy": tok_right / max(n_tok, 1)}
    out.update({k: s / max(n_tok, 1) for k, s in sums.items()})
    out["accuracy_se"] = math.sqrt(out["accuracy"] * (1 - out["accuracy"]) / max(c.size, 1))
    for t in PASS_TEMPERATURES:
        p = torch.cat(seq_logp[t]).exp().numpy()
        for k in PASS_KS:
            out[pass_key(k, t)] = float(pass_at_k_exact(p, k).mean())
    return out


def pass_at_k_exact(p_correct, k: int) -> np.ndarray:
    """Per-problem pass@k of k independent samples, each right with probability ``p_correct``: ``1 - (1 - p)^k``.

    Here ``p`` is known exactly: every answer has the same length, so a sample (ancestral sampling at temperature T,
    stopped after the answer's length) is right iff it emits each gold token given the gold prefix, which has
    probability ``Π_t softmax(z_t / T)[y_t]`` from one teacher-forced pass. ``1 - (1 - p)^k`` is the expectation of
    the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` of n samples with c right (Chen et al., 2021) over
    c ~ Binomial(n, p): the value that estimator converges to, without its sampling noise
    (``tests/test_lab.py`` checks the two against each other on real samples)."""
    p = np.clip(np.asarray(p_correct, dtype=np.float64), 0.0, 1.0)
    return 1.0 - (1.0 - p) ** k


def pass_at_k_unbiased(n: int, c, k: int) -> np.ndarray:
    """The unbiased estimator of pass@k from n samples of which c are right, per problem: ``1 - C(n-c,k)/C(n,k)``
    (computed as a product, stable for large n)."""
    c = np.asarray(c, dtype=np.int64)
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples per problem, got n = {n}")
    out = np.ones(c.shape, dtype=np.float64)
    for i, ci in np.ndenumerate(c):
        if n - ci >= k:
            out[i] = 1.0 - np.prod(1.0 - k / np.arange(n - ci + 1, n + 1))
    return out


@torch.no_grad()
def sample_correct(model, data: EncodedSet, n: int, temperature: float, seed: int = 0,
                   batch_size: int = 4096) -> np.ndarray:
    """Draw ``n`` answers per problem by ancestral sampling at ``temperature`` (as many tokens as the gold answer,
    EOS included) and count the right ones: int array ``[N]``. Ignores the fixed-length shortcut on purpose: it is
    the Monte-Carlo check of :func:`pass_at_k_exact`."""
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    prompts = data.input_ids[:, : data.prompt_len].repeat_interleave(n, dim=0)
    gold = data.targets.repeat_interleave(n, dim=0)
    right = []
    try:
        for i in range(0, len(prompts), batch_size):
            seq = prompts[i:i + batch_size]
            for _ in range(gold.shape[1]):
                z = model(input_ids=seq, use_cache=False, logits_to_keep=1).logits[:, -1].double()
                nxt = torch.multinomial(torch.softmax(z / temperature, -1), 1, generator=gen)
                seq = torch.cat([seq, nxt], dim=1)
            right.append((seq[:, data.prompt_len:] == gold[i:i + batch_size]).all(-1))
    finally:
        model.train(was_training)
    return torch.cat(right).view(len(data), n).sum(-1).numpy()


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
