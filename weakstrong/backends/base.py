"""The chat-generation protocol every teacher, judge or simulated agent talks through.

A backend turns a batch of conversations (each a list of ``{"role", "content"}`` messages) into one reply
string per conversation. Sampling options are keyword arguments with the same names everywhere:

* ``temperature`` (0 = greedy; the default),
* ``max_new_tokens`` (the reply budget; ``max_tokens`` is accepted as an alias),
* ``top_p``, ``seed`` and ``stop`` (optional).

``seed`` is one int for the whole batch, or a sequence of ints with one seed per conversation (so that two
conversations of one batch never share a seed; :func:`request_seeds` checks the length). What a backend
guarantees for it is in its own docstring.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

Messages = list[dict[str, str]]

SAMPLING_KEYS = ("temperature", "max_new_tokens", "top_p", "seed", "stop")


from ..cli import UserError


class ChatBackendError(RuntimeError):
    """A chat backend could not produce replies."""


class ConfigurationError(ChatBackendError, UserError):
    """The backend is misconfigured (bad key, URL or model name); retrying cannot help. The CLI prints it without
    a traceback."""


class EndpointUnavailableError(ChatBackendError, UserError):
    """The endpoint kept failing (rate limits, server errors, timeouts, refused connections) until its retries or
    its deadline ran out. The CLI prints it without a traceback (the server must be fixed, not the code)."""


class UnusableReplyError(ChatBackendError, UserError):
    """The server answered, but not with something usable (``content: null``, an ``error`` object, no logprobs
    where they were asked for). Not retried: the same request gets the same reply. The message names the server
    and what came back; the CLI prints it without a traceback."""


_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}(/|$)")


def looks_like_endpoint(spec: str) -> str | None:
    """``"http://" + spec`` when ``spec`` names an endpoint but lacks the scheme (``host:port/v1::MODEL``,
    ``127.0.0.1:8000/v1``, ``[::1]:8000::M``); ``None`` for anything that may be a local model (a path or hub id
    never holds ``::`` nor starts with ``host:port``)."""
    if not isinstance(spec, str) or "://" in spec:
        return None
    text = spec.strip()
    if "::" in text.replace("[::", "[").replace("::]", "]") or _HOST_PORT.match(text):
        return "http://" + text
    return None


def parse_endpoint(spec: str) -> tuple[list[str], str] | None:
    """``"URL::MODEL"`` (``"http://host:8000/v1::Qwen/Qwen2.5-7B-Instruct"``; several replicas of one model:
    ``"http://a:8000/v1,http://b:8000/v1::MODEL"``) as ``(base_urls, model)``; ``None`` when ``spec`` does not
    name an endpoint (a local model name or path). The one way every CLI and recipe names an endpoint."""
    if not isinstance(spec, str):
        return None
    if not spec.lower().startswith(("http://", "https://")):
        looks_like = looks_like_endpoint(spec)
        if looks_like:
            model = "" if "::" in spec else "::MODEL"
            raise ConfigurationError(f"{spec!r} looks like an endpoint without its scheme: did you mean "
                                     f"{looks_like + model!r}? An endpoint is named URL::MODEL, the URL starting with "
                                     "http:// or https:// (it is not loaded as a local model).")
        return None
    if "::" not in spec:
        return None
    depth, cut = 0, -1
    for i, ch in enumerate(spec):  # the first "::" outside [IPv6] brackets
        depth += (ch == "[") - (ch == "]")
        if depth == 0 and spec.startswith("::", i):
            cut = i
            break
    if cut < 0:
        return None
    urls, model = spec[:cut], spec[cut + 2:]
    urls = [u.strip() for u in urls.split(",") if u.strip()]
    if not model.strip() or not urls:
        raise ConfigurationError(f"{spec!r}: an endpoint is named URL::MODEL, e.g. "
                                 "'http://localhost:8000/v1::Qwen/Qwen2.5-7B-Instruct' (replicas: 'URL1,URL2::MODEL')")
    return urls, model.strip()


@runtime_checkable
class ChatBackend(Protocol):
    """Anything with ``generate(conversations, **sampling) -> list[str]`` (one reply per conversation)."""

    def generate(self, conversations: list[Messages], **sampling: Any) -> list[str]: ...


class ChoiceProbs(NamedTuple):
    """What ``choice_probs`` returns (unpacks as ``probs, mass``).

    ``probs[i, k]``: the probability of ``choices[k]`` as the next token of conversation ``i``, renormalized over
    the choices (rows sum to 1; a row of NaN when none of the choices could be read, e.g. absent from an
    endpoint's top logprobs). ``mass[i]``: the probability the choices had among the full vocabulary before
    renormalizing — a sanity measure: a small mass means the model did not take the question as intended.
    """

    probs: np.ndarray
    mass: np.ndarray


@runtime_checkable
class ChoiceScorer(Protocol):
    """A backend that can score a closed set of one-token answers from one forward pass (no sampling)."""

    def choice_probs(self, conversations: list[Messages], choices: list[str]) -> ChoiceProbs: ...


def normalize_sampling(defaults: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """Merge per-call sampling options over a backend's defaults, checking names and ranges."""
    sampling = dict(sampling)
    if "max_tokens" in sampling:
        sampling.setdefault("max_new_tokens", sampling.pop("max_tokens"))
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"unknown sampling options {unknown}; use {list(SAMPLING_KEYS)}")
    out = {**defaults, **{k: v for k, v in sampling.items() if v is not None}}
    out.setdefault("temperature", 0.0)
    if out["temperature"] < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {out['temperature']}")
    if int(out.get("max_new_tokens", 1)) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {out['max_new_tokens']}")
    top_p = out.get("top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    if "seed" in out:
        out["seed"] = _check_seed(out["seed"])
    return out


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_seed(seed):
    if seed is None or _is_int(seed):
        return None if seed is None else int(seed)
    if isinstance(seed, (list, tuple, np.ndarray)) and all(_is_int(s) for s in seed):
        return [int(s) for s in seed]
    raise TypeError(f"seed must be an int or a sequence of ints (one per conversation), got {seed!r:.120}")


def request_seeds(opts: dict[str, Any], n: int) -> list[int | None]:
    """One seed per conversation from normalized sampling options: an int seed is shared by all ``n``, a list
    must have exactly ``n`` entries, no seed gives ``None`` for each."""
    seed = opts.get("seed")
    if isinstance(seed, list):
        if len(seed) != n:
            raise ValueError(f"seed has {len(seed)} values for {n} conversations: pass one int, or exactly one "
                             "seed per conversation, in the same order")
        return list(seed)
    return [seed] * n


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """``text`` up to (not including) the first occurrence of any stop string (OpenAI's semantics)."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def check_conversations(conversations) -> list[Messages]:
    """Validate the batch shape early, with a message that says what was expected."""
    if isinstance(conversations, dict) or (
        isinstance(conversations, list) and conversations and isinstance(conversations[0], dict)
    ):
        raise TypeError("generate() takes a LIST of conversations (list[list[dict]]); wrap a single one in [...]")
    out = []
    for i, conv in enumerate(conversations):
        if not isinstance(conv, (list, tuple)) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                          for m in conv):
            raise TypeError(f"conversation {i} must be a list of {{'role', 'content'}} dicts, got {conv!r:.200}")
        out.append([{"role": str(m["role"]), "content": str(m["content"])} for m in conv])
    return out
