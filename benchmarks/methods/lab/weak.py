"""Weak models for the reviewers' controls: weak logits shuffled over the vocabulary per token, and a weak model
from another seed with the same mean entropy.

**Shuffled logits through the hidden-state path.** ``WMSSTrainer`` never asks the weak model for logits: it takes
the weak backbone's last hidden states ``h [N, H]`` and the head's weight ``W [V, H]`` and lets the kernel form
``h @ W.T`` chunk by chunk (``weakstrong/wmss/joint.py``; selection does the same). A hook on the head's output is
never called, and a per-token permutation of the logits is not a fixed change of ``W``. What the kernel does accept
is any hidden size for the weak branch (``linear_mixed_cross_entropy``: ``[N, Hw]`` and ``[V, Hw]``). So
:class:`ShuffledLogitsLM` reports as its "last hidden state" the weak model's own logits, permuted per token
(``H' = V``), and as its head the identity ``[V, V]``: the kernel's ``h' @ I.T`` is then exactly the permuted
logits, for the loss and for the selection's entropies. A permutation keeps every token's entropy and its set of
probabilities and destroys which token gets which. The permutations come from a generator seeded at construction
(a fresh one per token per forward, deterministic for a given seed and call order). The wrapper is frozen: a
gradient through a random permutation would train the weak model towards noise.

**Entropy matching.** :func:`entropy_matched` scales another model's head by ``c`` (logits ``c·z``, the same weight
change everywhere, so the hidden-state path sees it) with ``c`` found by bisection so that its mean per-token entropy
on the selection set equals a target to ``tol`` nats.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput


class _ShuffledBackbone(nn.Module):
    def __init__(self, owner):
        super().__init__()
        self._owner = [owner]  # not a submodule (no parameter twice)

    def forward(self, input_ids=None, **kwargs):
        owner = self._owner[0]
        kwargs.pop("use_cache", None)
        z = owner.inner(input_ids=input_ids, use_cache=False, **kwargs).logits
        return BaseModelOutput(last_hidden_state=owner.shuffle(z))


class ShuffledLogitsLM(nn.Module):
    """A frozen causal LM whose logits are permuted over the vocabulary, independently at every token position.

    Looks like a ``*ForCausalLM`` to ``weakstrong.wmss`` (``config``, ``base_model`` = the backbone,
    ``get_output_embeddings()`` = a bias-free head): the backbone returns the permuted logits ``[B, T, V]`` as its
    last hidden state and the head is the identity, so ``hidden @ head.weight.T`` = the permuted logits.
    ``forward`` returns them as ``.logits`` too."""

    base_model_prefix = "model"

    def __init__(self, inner, seed: int):
        super().__init__()
        self.inner = inner
        w = inner.get_output_embeddings().weight
        v = w.shape[0]
        self.lm_head = nn.Linear(v, v, bias=False, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(v, dtype=w.dtype))
        self.model = _ShuffledBackbone(self)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.requires_grad_(False)

    @property
    def config(self):
        return self.inner.config

    @property
    def base_model(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head

    def shuffle(self, z: torch.Tensor) -> torch.Tensor:
        """``z [..., V]`` with the last axis permuted by an independent random permutation at every position."""
        keys = torch.rand(z.shape, generator=self.generator).to(z.device)
        return z.gather(-1, keys.argsort(-1))

    def forward(self, input_ids=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        h = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        return CausalLMOutput(logits=h @ self.lm_head.weight.T)


@torch.no_grad()
def answer_logits(model, data) -> torch.Tensor:
    """Teacher-forced logits ``[N, A, V]`` of ``model`` at the answer positions of an ``EncodedSet`` (the tokens
    SFT and WMSS train: the completion and EOS)."""
    keep = data.input_ids.shape[1] - data.prompt_len
    was = model.training
    model.eval()
    try:
        return model(input_ids=data.input_ids[:, :-1], use_cache=False, logits_to_keep=keep).logits.double()
    finally:
        model.train(was)


def mean_entropy(logits: torch.Tensor, scale: float = 1.0) -> float:
    logp = torch.log_softmax(scale * logits, -1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def entropy_matched(source_dir: str, target_entropy: float, data, out_dir: str, tol: float = 1e-4,
                    reference_dir: str | None = None) -> dict:
    """Save ``source_dir``'s model with its head scaled by ``c`` under ``out_dir/weak-entropy-matched``, with ``c``
    chosen so that its mean per-token entropy on ``data`` (an ``EncodedSet``: the selection set's answer tokens) is
    ``target_entropy`` ± ``tol`` nats. Returns the path and how it was matched; with ``reference_dir`` (the weak
    model it stands in for) also how different its content is: the mean KL(reference ‖ matched) per token and the
    share of tokens where both put their argmax on the same entry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source_dir)
    z = answer_logits(model, data)
    h0 = mean_entropy(z)
    if target_entropy <= 0 or target_entropy >= math.log(z.shape[-1]):
        raise ValueError(f"target entropy {target_entropy} nats is outside (0, log V): no scaling reaches it")
    lo, hi = 1e-3, 1e3  # entropy falls monotonically in c: H(lo) ≈ log V > target > H(hi) ≈ 0
    for _ in range(200):
        c = math.sqrt(lo * hi)
        h = mean_entropy(z, c)
        if abs(h - target_entropy) <= tol:
            break
        lo, hi = (c, hi) if h > target_entropy else (lo, c)
    else:
        raise RuntimeError(f"entropy matching did not converge (last c={c}, H={h}, target {target_entropy})")
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(c)
    path = os.path.join(out_dir, "weak-entropy-matched")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source_dir).save_pretrained(path)
    info = {"em_scale": round(c, 5), "em_entropy_source": round(h0, 5), "em_entropy_target": round(target_entropy, 5),
            "em_entropy_matched": round(mean_entropy(answer_logits(model, data)), 5)}
    if reference_dir is not None:
        ref = answer_logits(AutoModelForCausalLM.from_pretrained(reference_dir), data)
        zm = c * z
        lp_r, lp_m = torch.log_softmax(ref, -1), torch.log_softmax(zm, -1)
        info["em_kl_ref_matched"] = round(float((lp_r.exp() * (lp_r - lp_m)).sum(-1).mean()), 5)
        info["em_argmax_agree"] = round(float((ref.argmax(-1) == zm.argmax(-1)).double().mean()), 5)
        gold = data.targets
        info["em_token_acc_ref"] = round(float((ref.argmax(-1) == gold).double().mean()), 5)
        info["em_token_acc_matched"] = round(float((zm.argmax(-1) == gold).double().mean()), 5)
    info["path"] = path
    return info
