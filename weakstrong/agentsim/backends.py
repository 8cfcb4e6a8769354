"""The chat backends a simulation talks through: thin names over :mod:`weakstrong.backends` (one client).

* :class:`TransformersBackend` — ``weakstrong.backends.TransformersChat`` (local, batched, chat template).
* :class:`OpenAICompatibleBackend` — ``weakstrong.backends.OpenAICompatibleChat`` (HTTP, retries, cache).
* :class:`ScriptedBackend` — replies computed by a Python function, for tests and dry runs.

Any object with ``generate(conversations, **sampling) -> list[str]`` works (the ``ChatBackend`` protocol).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..backends import ChatBackend, OpenAICompatibleChat, TransformersChat, normalize_sampling
from ..backends.base import check_conversations


class TransformersBackend(TransformersChat):
    """A local model (``"default"`` = the embedded SmolLM2-135M-Instruct), batched. Same arguments as
    :class:`weakstrong.backends.TransformersChat`; ``batch_size`` defaults to 16 here."""

    def __init__(self, model="default", tokenizer=None, batch_size: int = 16, **kwargs):
        super().__init__(model, tokenizer, batch_size=batch_size, **kwargs)


class OpenAICompatibleBackend(OpenAICompatibleChat):
    """Any OpenAI-compatible ``/chat/completions`` server; same arguments as
    :class:`weakstrong.backends.OpenAICompatibleChat` (``base_url`` — one URL or a list of replicas served
    round-robin —, ``model``, ``api_key_env``, ``concurrency`` in total over the replicas...). Error messages name
    the recipe's ``backend.*`` keys unless ``run_label``/``setting_names`` are given."""

    def __init__(self, base_url, model, *args, **kwargs):
        kwargs.setdefault("run_label", "the agent simulation (weakstrong agentsim)")
        kwargs.setdefault("setting_names", {k: f"backend.{k}: " for k in (
            "base_url", "model", "api_key_env", "connect_timeout", "read_timeout", "deadline", "max_retries",
            "first_reply_deadline")})
        kwargs.setdefault("resume_hint", "The completed ticks are kept (and replies cached): rerun the same command "
                                         "and the simulation resumes after its last completed tick.")
        super().__init__(base_url, model, *args, **kwargs)


class ScriptedBackend:
    """Replies from ``fn(conversation, sampling) -> str``; deterministic when ``fn`` is.

    The default ``fn`` echoes a short reply derived from a hash of the conversation and the seed, so different
    agents and ticks get different text. ``calls`` counts ``generate`` calls; ``fail_on_call`` (1-based) raises
    :class:`RuntimeError` on that call (tests use it to crash a tick half-way).
    """

    name = "scripted"
    per_conversation_seeds = True  # generate(..., seed=[one per conversation]) is understood

    def __init__(self, fn: Callable[[list[dict], dict], str] | None = None, fail_on_call: int | None = None,
                 on_fail: Callable[[], Any] | None = None):
        self.fn = fn or default_script
        self.fail_on_call = fail_on_call
        self.on_fail = on_fail
        self.calls = 0
        self.conversations = 0

    def generate(self, conversations, **sampling) -> list[str]:
        conversations = check_conversations(conversations)
        seeds = sampling.pop("seed", None)
        if not isinstance(seeds, (list, tuple)):
            seeds = [seeds] * len(conversations)
        elif len(seeds) != len(conversations):
            raise ValueError(f"seed has {len(seeds)} entries for {len(conversations)} conversations: pass one per "
                             "conversation, or a single int")
        opts = normalize_sampling({"max_new_tokens": 256}, sampling)
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            if self.on_fail is not None:
                self.on_fail()
            raise RuntimeError(f"scripted failure on generate call {self.calls}")
        self.conversations += len(conversations)
        return [self.fn(c, {**opts, "seed": s} if s is not None else opts) for c, s in zip(conversations, seeds)]


_WORDS = ("truth", "markets", "coffee", "freedom", "code", "rain", "justice", "memes", "history", "growth",
          "doubt", "community", "stars", "data", "music", "power")


def default_script(conversation: list[dict], sampling: dict) -> str:
    """A deterministic reply that depends on the whole conversation and the sampling seed."""
    blob = repr(conversation) + repr(sampling.get("seed"))
    h = hashlib.sha256(blob.encode()).digest()
    user = conversation[-1]["content"]
    words = [_WORDS[b % len(_WORDS)] for b in h[:6]]
    if "non-negotiable beliefs" in user:
        return "\n".join(f"- I believe in {w} above all" for w in words[: 2 + h[6] % 3])
    if "Rewrite your memory" in user:
        return ("I am someone who keeps thinking about " + ", ".join(words) + ". ") * (1 + h[7] % 40)
    return f"My take on {words[0]} and {words[1]}: {words[2]} matters more than {words[3]}. #{h.hex()[:6]}"


def backend_name(backend: ChatBackend) -> str:
    return str(getattr(backend, "name", type(backend).__name__))


def backend_identity(backend: ChatBackend) -> dict:
    """What about a backend decides its replies, beyond the sampling the simulation sets per call: the kind, the
    model, and for an OpenAI-compatible client its endpoint(s) and extra request fields. A resumed simulation must
    match it. Read from attributes, so a wrapper that forwards them (``__getattr__``) has its inner backend's
    identity. (A local model's batch size is not part of it: each conversation samples from its own generator.)"""
    urls = getattr(backend, "base_urls", None) or ([backend.base_url] if isinstance(getattr(backend, "base_url", None),
                                                                                   str) else None)
    if urls and getattr(backend, "model", None):
        return {"type": "openai", "model": str(backend.model), "base_url": [str(u) for u in urls],
                "extra_body": dict(getattr(backend, "extra_body", None) or {})}
    name = backend_name(backend)
    if isinstance(backend, TransformersChat) or name.startswith("transformers:"):
        return {"type": "transformers", "model": name}
    ident = {"type": type(backend).__name__, "model": name}
    extra = getattr(backend, "identity", None)
    if callable(extra):
        ident.update(extra())
    return ident


def generate_seeded(backend: ChatBackend, conversations: list, seeds: list[int], **sampling) -> list[str]:
    """One reply per conversation, request ``i`` sampled with ``seeds[i]``, in ONE ``generate`` call with
    ``seed=[...]`` — the ``ChatBackend`` protocol's per-conversation seeds (:mod:`weakstrong.backends.base`):
    :class:`TransformersChat` gives each conversation its own generator, :class:`OpenAICompatibleChat` sends each
    request its own seed over its replicas, ``concurrency`` at a time.

    A backend that declares ``per_conversation_seeds = False`` (it takes one int only) gets one call per
    conversation with its own seed, ``backend.concurrency`` (default 1) at a time: slower, but two requests never
    share a seed.
    """
    if len(seeds) != len(conversations):
        raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
    if not conversations:
        return []
    if getattr(backend, "per_conversation_seeds", True):
        return backend.generate(conversations, seed=[int(s) for s in seeds], **sampling)

    def one(i):
        replies = backend.generate([conversations[i]], seed=int(seeds[i]), **sampling)
        if len(replies) != 1:
            raise RuntimeError(f"backend returned {len(replies)} replies for 1 conversation")
        return replies[0]

    workers = max(1, min(int(getattr(backend, "concurrency", 1) or 1), len(conversations)))
    if workers == 1:
        return [one(i) for i in range(len(conversations))]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agentsim") as pool:
        return list(pool.map(one, range(len(conversations))))


def backend_tokenizer(backend: ChatBackend):
    """The backend's tokenizer when it has one (needed for token budgets), else ``None``."""
    return getattr(backend, "tokenizer", None)
