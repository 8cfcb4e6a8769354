"""Chat completions over HTTP against any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, OpenAI...).

Standard library only (``urllib``). Requests run on a small thread pool (``concurrency``); each one is retried
with exponential backoff and jitter on 429, 408, 5xx, timeouts, refused connections and malformed replies, and
fails at once with a :class:`~weakstrong.backends.ConfigurationError` on 401/403/404 naming the setting to fix.
Replies are cached on disk under a hash of the request (model, messages, sampling), so a rerun costs nothing.
The API key is read from an environment variable at request time; it is never stored on the object, logged,
or written to the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from .._io import atomic_write
import numpy as np

from .base import (ChatBackendError, ChoiceProbs, ConfigurationError, EndpointUnavailableError, Messages,
                   check_conversations, normalize_sampling)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_RETRY_STATUS = {408, 409, 425, 429}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def default_cache_dir() -> Path:
    from ..models import cache_dir

    return cache_dir() / "chat-cache"


def _retry_after(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class OpenAICompatibleChat:
    """A :class:`~weakstrong.backends.ChatBackend` over ``POST {base_url}/chat/completions``.

    Args:
        base_url: the server's API root, e.g. ``"http://localhost:8000/v1"``.
        model: the model name the server expects (``"model"`` field of the request).
        api_key_env: name of the environment variable holding the API key. Unset or empty: no
            ``Authorization`` header is sent (fine for most local servers).
        max_new_tokens, temperature: default sampling (sent as ``max_tokens`` / ``temperature``).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt on retryable failures.
        backoff_base, backoff_max: delay before retry ``k`` (0-based) is ``min(backoff_max, backoff_base·2^k)``
            with "equal jitter" (uniform in its upper half); a ``Retry-After`` header is honoured up to
            ``backoff_max``.
        concurrency: requests in flight at once.
        cache_dir: ``"auto"`` (``$WEAKSTRONG_CACHE/chat-cache``), a folder, or ``None`` for no cache. Sampled
            requests (``temperature > 0``) without a ``seed`` are never cached: each call must draw afresh.
        extra_body: extra JSON fields merged into every request (e.g. ``{"top_k": 20}``); part of the cache key.
        sleep: the function used to wait between retries (tests inject a recorder).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", *,
                 max_new_tokens: int = 512, temperature: float = 0.0, timeout: float = 120.0,
                 max_retries: int = 6, backoff_base: float = 1.0, backoff_max: float = 60.0, concurrency: int = 4,
                 cache_dir: str | os.PathLike | None = "auto", extra_body: dict | None = None,
                 sleep: Callable[[float], None] = time.sleep, name: str | None = None):
        parsed = urllib.parse.urlparse(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigurationError(
                f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', got {base_url!r}")
        if not model:
            raise ConfigurationError("model must name the model served at base_url (e.g. 'Qwen/Qwen2.5-72B-Instruct')")
        if max_retries < 0 or concurrency < 1 or timeout <= 0 or backoff_base < 0:
            raise ValueError("need max_retries >= 0, concurrency >= 1, timeout > 0 and backoff_base >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        self.sleep = sleep
        self.name = name or f"openai:{model}@{self.base_url}"
        self.defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        self.cache_dir = (default_cache_dir() if cache_dir == "auto" else
                          Path(cache_dir).expanduser() if cache_dir is not None else None)
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}
        self._lock = threading.Lock()
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:  # never shows the key
        return (f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    # ------------------------------------------------------------------ public
    def generate(self, conversations: list[Messages], **sampling: Any) -> list[str]:
        conversations = check_conversations(conversations)
        opts = normalize_sampling(self.defaults, sampling)
        if not conversations:
            return []
        workers = min(self.concurrency, len(conversations))
        if workers == 1:
            return [self._one(c, opts) for c in conversations]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat") as pool:
            return list(pool.map(lambda c: self._one(c, opts), conversations))

    def choice_probs(self, conversations: list[Messages], choices: list[str], top_logprobs: int = 20) -> ChoiceProbs:
        """Next-token probabilities of one-token ``choices`` (e.g. ``"1".."5"``) from one-token completions with
        ``logprobs`` (``max_tokens=1, temperature=0, logprobs=true, top_logprobs=20``).

        A choice's probability sums the top-logprob entries that spell it once stripped of spaces (``"3"``,
        ``" 3"``); a choice absent from the top list counts 0. Rows are renormalized over the choices; ``mass``
        is the choices' share of the whole distribution (a lower bound: only the top entries are visible). A
        reply where no choice appears gives a row of NaN and mass 0. Replies are cached like ``generate``'s.
        """
        conversations = check_conversations(conversations)
        choices = [str(c) for c in choices]
        if not choices:
            raise ValueError("choices is empty")
        if len(set(c.strip() for c in choices)) != len(choices):
            raise ValueError(f"choices {choices} must be distinct once stripped of spaces")
        index = {c.strip(): j for j, c in enumerate(choices)}
        n, k = len(conversations), len(choices)
        probs, mass = np.full((n, k), np.nan), np.zeros(n)

        def one(conv):
            body = {"model": self.model, "messages": conv, "temperature": 0.0, "max_tokens": 1,
                    "logprobs": True, "top_logprobs": int(top_logprobs), **self.extra_body}
            path = self._cache_path(self.cache_key(body))
            cached = self._cache_get(path)
            if cached is not None:
                with self._lock:
                    self.stats["cache_hits"] += 1
                return json.loads(cached)
            top = self._post_with_retries(body, self._post_top_logprobs)
            if path is not None:
                self._cache_put(path, body, json.dumps(top))
            return top

        workers = min(self.concurrency, max(1, n))
        if workers == 1:
            tops = [one(c) for c in conversations]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat") as pool:
                tops = list(pool.map(one, conversations))
        for i, top in enumerate(tops):
            row = np.zeros(k)
            for item in top:
                j = index.get(str(item.get("token", "")).strip())
                lp = item.get("logprob")
                if j is not None and isinstance(lp, (int, float)) and np.isfinite(lp):
                    row[j] += float(np.exp(lp))
            mass[i] = row.sum()
            if mass[i] > 0:
                probs[i] = row / mass[i]
        return ChoiceProbs(probs, mass)

    def _post_top_logprobs(self, body: dict) -> list[dict]:
        """The first generated token's ``top_logprobs`` list (``[{"token", "logprob"}, ...]``)."""
        payload = self._post_payload(body)
        try:
            first = payload["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise _Retryable("the reply has no choices[0]") from None
        logprobs = first.get("logprobs") if isinstance(first, dict) else None
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise ChatBackendError(
                f"{self.url} (model {self.model!r}) returned no logprobs: this server or model does not support "
                "'logprobs'/'top_logprobs' on chat completions; use judge_mode='json' instead")
        top = content[0].get("top_logprobs") if isinstance(content[0], dict) else None
        if not isinstance(top, list):
            top = [{"token": content[0].get("token"), "logprob": content[0].get("logprob")}]
        return [{"token": t.get("token"), "logprob": t.get("logprob")} for t in top if isinstance(t, dict)]

    def request_body(self, conversation: Messages, opts: dict) -> dict:
        """The JSON body sent for one conversation (also what the cache key hashes)."""
        body = {"model": self.model, "messages": conversation, "temperature": float(opts["temperature"]),
                "max_tokens": int(opts["max_new_tokens"])}
        for key in ("top_p", "seed", "stop"):
            if opts.get(key) is not None:
                body[key] = opts[key]
        return {**body, **self.extra_body}

    def cache_key(self, body: dict) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, "request": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    # ------------------------------------------------------------------ cache
    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, path: Path | None) -> str | None:
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return record["reply"] if isinstance(record.get("reply"), str) else None
        except (OSError, ValueError, KeyError, AttributeError):
            logger.warning("ignoring unreadable chat cache entry %s", path)
            return None

    @staticmethod
    def _cache_put(path: Path, body: dict, reply: str) -> None:
        atomic_write(path, json.dumps({"format": CACHE_FORMAT, "request": body, "reply": reply}, ensure_ascii=False))

    # ------------------------------------------------------------------ one request
    def _one(self, conversation: Messages, opts: dict) -> str:
        body = self.request_body(conversation, opts)
        cacheable = self.cache_dir is not None and (opts["temperature"] == 0 or opts.get("seed") is not None)
        path = self._cache_path(self.cache_key(body)) if cacheable else None
        cached = self._cache_get(path)
        if cached is not None:
            with self._lock:
                self.stats["cache_hits"] += 1
            return cached
        reply = self._post_with_retries(body)
        if path is not None:
            self._cache_put(path, body, reply)
        return reply

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _post_with_retries(self, body: dict, post: Callable[[dict], Any] | None = None):
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            try:
                return (post or self._post)(body)
            except _Retryable as err:
                last = str(err)
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, err.retry_after)
                with self._lock:
                    self.stats["retries"] += 1
                logger.warning("%s: %s; retry %d/%d in %.1fs", self.url, last, attempt + 1, self.max_retries, delay)
                self.sleep(delay)
        raise EndpointUnavailableError(
            f"{self.url} (model {self.model!r}) failed {self.max_retries + 1} times; last error: {last}. Check that "
            "the server is up and reachable at base_url, or raise max_retries/timeout. Work already done is kept "
            "(replies are cached and the LRL loop resumes after its last completed batch): rerun the same command.")

    def _post(self, body: dict) -> str:
        payload = self._post_payload(body)
        try:
            content = payload["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable("the reply has no choices[0].message") from None
        return content if isinstance(content, str) else ""

    def _post_payload(self, body: dict) -> dict:
        """POST one request; the decoded JSON reply (retryable failures raise :class:`_Retryable`)."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with self._lock:
            self.stats["requests"] += 1
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            self._raise_for_status(err)
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise _Retryable(f"connection error ({type(reason).__name__}: {reason})") from None
        try:
            payload = json.loads(raw)
        except ValueError:
            raise _Retryable(f"malformed JSON in the reply ({raw[:80]!r})") from None
        if not isinstance(payload, dict):
            raise _Retryable("the reply is not a JSON object")
        if payload.get("error"):
            raise ChatBackendError(f"{self.url} returned an error: {str(payload['error'])[:300]}")
        return payload

    def _raise_for_status(self, err: urllib.error.HTTPError):
        status = err.code
        try:
            detail = err.read(300).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the body is only a hint
            detail = ""
        finally:
            err.close()
        if status in (401, 403):
            set_or_not = "is set but was rejected" if os.environ.get(self.api_key_env) else "is not set"
            raise ConfigurationError(
                f"{self.url} answered HTTP {status} (unauthorized): the API key environment variable "
                f"{self.api_key_env!r} {set_or_not}. Export a valid key in {self.api_key_env}, or pass "
                "api_key_env='<NAME>' to read it from another variable.") from None
        if status == 404:
            raise ConfigurationError(
                f"{self.url} answered HTTP 404 (not found): check base_url (the API root, usually ending in '/v1'; "
                f"got {self.base_url!r}) and model (got {self.model!r}; it must be a model this server serves). "
                f"Server said: {detail[:200]}") from None
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}", _retry_after(err.headers.get("Retry-After") if err.headers else None))
        raise ChatBackendError(f"{self.url} answered HTTP {status}: {detail[:300]}") from None
