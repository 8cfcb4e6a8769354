"""Local chat generation with a transformers causal LM: chat template, left padding, batched."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .base import ChoiceProbs, Messages, check_conversations, cut_at_stop, normalize_sampling, request_seeds


class _RowSampler:
    """A logits processor that samples each row of a batch with its own ``torch.Generator``.

    It applies temperature and top-p itself, draws one token per row from that row's generator, and leaves only
    that token finite, so that greedy decoding (``do_sample=False``) picks it. A row consumes exactly one draw of
    its own generator per step, whatever the other rows do: its reply depends on its seed and its prompt only.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float | None, device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        logits = scores.float() / self.temperature
        if self.top_p is not None and self.top_p < 1.0:
            ordered, idx = torch.sort(logits, descending=True, dim=-1)
            cum = torch.softmax(ordered, dim=-1).cumsum(-1)
            drop = cum - torch.softmax(ordered, dim=-1) >= self.top_p  # keep the smallest set reaching top_p
            logits = logits.scatter(-1, idx, ordered.masked_fill(drop, float("-inf")))
        probs = torch.softmax(logits, dim=-1)
        picked = torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, picked[:, None], 0.0)
        return out


class TransformersChat:
    """A :class:`~weakstrong.backends.ChatBackend` over a local model.

    Args:
        model: ``"default"`` (the embedded SmolLM2-135M-Instruct), a local path, a hub id available offline, or a
            loaded ``PreTrainedModel``.
        tokenizer: the model's tokenizer; loaded with the model when ``None``.
        batch_size: conversations per ``generate`` call.
        max_new_tokens: default reply budget (overridable per call).
        temperature: default temperature; ``0`` is greedy decoding.
        model_init_kwargs: passed to ``from_pretrained`` when ``model`` is a string (e.g. ``dtype``).

    Conversations are rendered with the tokenizer's chat template (``add_generation_prompt=True``); a tokenizer
    without one gets the plain ``role: content`` transcript followed by ``assistant:``.

    Sampling (``temperature > 0``) and ``seed``:

    * ``seed=[s0, s1, ...]`` (one per conversation): each conversation samples from its own ``torch.Generator``
      seeded with its seed, so its reply depends on its prompt and its seed only — not on the other conversations,
      their order, or ``batch_size`` (up to the floating-point effect of left padding on the logits, as for
      greedy decoding). The same seeds give the same replies on every call.
    * ``seed=s`` (one int): the global torch RNG is seeded once per call (and restored afterwards); the replies
      are reproducible for the same batch and ``batch_size``, but a conversation's reply depends on the rest of
      the batch (the rows share one random stream).
    * no seed: fresh draws from the global RNG.
    """

    def __init__(self, model="default", tokenizer=None, batch_size: int = 8, max_new_tokens: int = 256,
                 temperature: float = 0.0, name: str | None = None, **model_init_kwargs):
        from ..models import load_model

        if isinstance(model, str) or tokenizer is None:
            label = model if isinstance(model, str) else getattr(model.config, "_name_or_path", type(model).__name__)
            model, tokenizer = load_model(model, **model_init_kwargs) if isinstance(model, str) else load_model(model)
        else:
            label = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name or f"transformers:{label}"
        self.identity = self.name  # what a resumed run compares
        self.defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={self.batch_size})"

    def render(self, conversation: Messages) -> str:
        """The exact text the model is conditioned on."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant:"

    def choice_token_ids(self, choices: list[str]) -> list[list[int]]:
        """For each choice, the single-token ids that spell it: the bare text and, when it is one other token, the
        text after a space (``"3"`` and ``" 3"``). A choice with no single-token spelling is an error."""
        out = []
        for c in choices:
            ids = []
            for text in (c, " " + c):
                enc = self.tokenizer.encode(text, add_special_tokens=False)
                if len(enc) == 1 and enc[0] not in ids:
                    ids.append(enc[0])
            if not ids:
                raise ValueError(f"choice {c!r} is not a single token for {self.name}'s tokenizer "
                                 f"({self.tokenizer.encode(c, add_special_tokens=False)}); use one-token choices")
            out.append(ids)
        flat = [i for ids in out for i in ids]
        if len(flat) != len(set(flat)):
            raise ValueError(f"choices {choices} share tokens; they must be distinct")
        return out

    @torch.no_grad()
    def choice_probs(self, conversations: list[Messages], choices: list[str],
                     progress: Callable[[int], None] | None = None) -> ChoiceProbs:
        """Next-token probabilities of ``choices`` after each conversation's assistant-turn start: one forward
        pass per batch of ``batch_size`` (left padding, no grad, only the last position's logits).

        Returns :class:`~weakstrong.backends.ChoiceProbs`: ``probs`` ``[n, len(choices)]`` (softmax over the
        choices' logits, rows sum to 1) and ``mass`` ``[n]`` (the choices' share of the full softmax)."""
        conversations = check_conversations(conversations)
        if not choices:
            raise ValueError("choices is empty")
        groups = self.choice_token_ids(list(choices))
        n, k = len(conversations), len(choices)
        probs, mass = np.full((n, k), np.nan), np.full(n, np.nan)
        if not n:
            return ChoiceProbs(probs, mass)
        model, tok = self.model, self.tokenizer
        prompts = [self.render(c) for c in conversations]
        lengths = [len(tok.encode(p, add_special_tokens=False)) for p in prompts]
        order = sorted(range(n), key=lambda i: -lengths[i])  # similar lengths share a batch: less padding
        flat = torch.tensor([i for ids in groups for i in ids])  # every spelling of every choice
        owner = torch.tensor([j for j, ids in enumerate(groups) for _ in ids])
        was_training = model.training
        model.eval()
        side, tok.padding_side = tok.padding_side, "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        device = next(model.parameters()).device
        try:
            for start in range(0, n, self.batch_size):
                idx = order[start: start + self.batch_size]
                enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
                pos = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
                out = model(**enc, position_ids=pos, logits_to_keep=1, use_cache=False)
                logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
                tok_logp = logp[:, flat]
                # log-probability of each choice (summed over its spellings), then renormalize over the choices
                choice_logp = torch.stack([torch.logsumexp(tok_logp[:, owner == j], dim=1) for j in range(k)], dim=1)
                total = torch.logsumexp(choice_logp, dim=1)
                probs[idx] = torch.softmax(choice_logp, dim=1).numpy()
                mass[idx] = total.exp().numpy()
                if progress is not None:
                    progress(len(idx))
        finally:
            tok.padding_side = side
            model.train(was_training)
        return ChoiceProbs(probs, mass)

    def generate(self, conversations: list[Messages], progress: Callable[[int], None] | None = None,
                 **sampling: Any) -> list[str]:
        from ..evaluation import generate_completions

        conversations = check_conversations(conversations)
        opts = normalize_sampling(self.defaults, sampling)
        request_seeds(opts, len(conversations))  # a seed list of the wrong length fails here, greedy or not
        prompts = [self.render(c) for c in conversations]
        if opts["temperature"] == 0:
            texts = generate_completions(self.model, self.tokenizer, prompts, int(opts["max_new_tokens"]),
                                         self.batch_size, progress)
        else:
            texts = self._sample(prompts, opts, progress)
        return [cut_at_stop(t, opts.get("stop")) for t in texts]

    @torch.no_grad()
    def _sample(self, prompts: list[str], opts: dict, progress) -> list[str]:
        model, tok = self.model, self.tokenizer
        was_training = model.training
        model.eval()
        side, tok.padding_side = tok.padding_side, "left"
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        seeds = request_seeds(opts, len(prompts))
        per_row = isinstance(opts.get("seed"), list)
        out: list[str] = []
        try:
            with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                if opts.get("seed") is not None and not per_row:
                    torch.manual_seed(int(opts["seed"]))
                for i in range(0, len(prompts), self.batch_size):
                    enc = tok(prompts[i: i + self.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
                    common = dict(max_new_tokens=int(opts["max_new_tokens"]), pad_token_id=pad_id, top_k=None)
                    if per_row:
                        from transformers import LogitsProcessorList

                        sampler = _RowSampler(seeds[i: i + self.batch_size], opts["temperature"], opts.get("top_p"),
                                              device)
                        gen = model.generate(**enc, do_sample=False, temperature=None, top_p=None,
                                             logits_processor=LogitsProcessorList([sampler]), **common)
                    else:
                        gen = model.generate(**enc, do_sample=True, temperature=float(opts["temperature"]),
                                             top_p=opts.get("top_p") or 1.0, **common)
                    out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                    if progress is not None:
                        progress(enc["input_ids"].shape[0])
        finally:
            tok.padding_side = side
            model.train(was_training)
        return out
