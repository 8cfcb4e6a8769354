"""Chat completions over HTTP against any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, OpenAI...).

Standard library only (``http.client``). Requests run on a small thread pool (``concurrency``), spread
round-robin over one or several replicas of the same model (``base_url`` may be a list); each one is retried
with exponential backoff and jitter on 429, 408, 5xx, timeouts, refused connections and malformed replies, within
a total ``deadline`` (``first_reply_deadline``, shorter, until an endpoint has answered once; a request awaiting
its reply logs ``waiting for <url> (no reply for N s)``), and fails at once with a
:class:`~weakstrong.backends.ConfigurationError` on 401/403/404 naming the setting to fix. Replies are cached on disk under a hash of the request (the set of endpoints, model,
messages, sampling), so a rerun costs nothing. The API key is read from an environment variable at request time;
it is never stored on the object, logged, or written to the cache.

Server quirks handled here (they are the server's, not the protocol's): a server that leaves the ``stop`` string
in its reply (``transformers serve`` does) is trimmed client-side; a server pinned to one model name (``transformers
serve`` answers HTTP 400 "Server is pinned to 'X'" unless the request names exactly its served path) gets a
:class:`ConfigurationError` naming that path, and ``model_alias`` keeps a short, machine-independent name for the
run's identity and reports.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from .._io import atomic_write
import numpy as np

from .base import (ChoiceProbs, ConfigurationError, EndpointUnavailableError, Messages,
                   UnusableReplyError, check_conversations, cut_at_stop, normalize_sampling, request_seeds)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: the key holds the set of endpoints (format 1 entries, keyed on the model only, are unused)
_RETRY_STATUS = {408, 409, 425, 429}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_PINNED = re.compile(r"pinned to '([^']+)'")
# how each setting is named in messages; a CLI passes its own flags (e.g. {"api_key_env": "--teacher_api_key_env"})
_SETTING_NAMES = ("base_url", "model", "api_key_env", "connect_timeout", "read_timeout", "deadline", "max_retries",
                  "first_reply_deadline")
_DEFAULT_RESUME_HINT = "Replies already received are cached: rerun the same command to continue."


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def _readable(sock, timeout: float) -> bool:
    """Whether ``sock`` has bytes to read (or was closed) within ``timeout`` seconds; ``poll`` where there is one
    (no limit on descriptor numbers), ``select`` elsewhere."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    return bool(select.select([sock], [], [], timeout)[0])


def _seconds(x: float) -> str:
    """Seconds as a user reads them: one decimal below 10 s, whole seconds above."""
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def _server_message(raw: bytes, limit: int = 300) -> str:
    """What a server said in an error reply: the ``error.message`` / ``detail`` / ``message`` of a JSON body, or
    the body's text, on one line and cut to ``limit`` characters."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        found = (err.get("message") if isinstance(err, dict) else err) or body.get("detail") or body.get("message")
        if found:
            text = found if isinstance(found, str) else json.dumps(found)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _no_text_message(url: str, model: str, choice, content) -> str:
    """Why a reply without text cannot be used, with what came back instead (the decision: such a reply is an
    error, never an empty answer, and it is not retried: the same request would get the same reply)."""
    message = choice.get("message") if isinstance(choice, dict) else None
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    shown = json.dumps(message, ensure_ascii=False)
    shown = shown if len(shown) <= 300 else shown[:300] + "..."
    hint = "check the model and the request (a null content usually means a tool call or a refusal)"
    if reason == "tool_calls" or (isinstance(message, dict) and message.get("tool_calls")):
        hint = "the model answered with a tool call: serve it without tool-calling enabled, or use another model"
    elif isinstance(message, dict) and (message.get("reasoning_content") or message.get("reasoning")):
        hint = ("a reasoning model spent the reply on its reasoning" + (" and hit the token budget: raise the "
                "max_new_tokens of this step" if reason == "length" else "") + ", or serve it without the "
                "reasoning parser")
    return (f"{url} (model {model!r}) answered with message content {content!r} instead of text (finish_reason "
            f"{reason!r}; the message was {shown}): nothing was cached and the request is not retried (the same "
            f"request gets the same reply). {hint[0].upper() + hint[1:]}.")


def default_cache_dir() -> Path:
    from ..models import cache_dir

    return cache_dir() / "chat-cache"


def _retry_after(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class _Endpoint:
    """One replica: where to connect (directly or through an environment proxy) and the request path."""

    def __init__(self, base_url: str):
        parsed = urllib.parse.urlparse(base_url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc or not parsed.hostname:
            raise ConfigurationError(
                f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = parsed.port or (443 if self.https else 80)
        self.path = (parsed.path.rstrip("/") or "") + "/chat/completions"
        proxy = None
        if self.host not in _LOOPBACK and not urllib.request.proxy_bypass(self.host):
            proxy = urllib.request.getproxies().get(parsed.scheme)
        self.proxy = urllib.parse.urlparse(proxy) if proxy else None

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.proxy is not None:
            if not self.https:  # plain HTTP through the proxy: absolute URL as the request target
                return http.client.HTTPConnection(self.proxy.hostname, self.proxy.port or 80, timeout=timeout)
            conn = http.client.HTTPSConnection(self.proxy.hostname, self.proxy.port or 80, timeout=timeout,
                                               context=ssl.create_default_context())
            conn.set_tunnel(self.host, self.port)  # HTTPS: CONNECT tunnel to the server
            return conn
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def target(self) -> str:
        """The request target: the path, or the absolute URL through a plain-HTTP proxy."""
        return self.url if (self.proxy is not None and not self.https) else self.path


class OpenAICompatibleChat:
    """A :class:`~weakstrong.backends.ChatBackend` over ``POST {base_url}/chat/completions``.

    Args:
        base_url: the server's API root, e.g. ``"http://localhost:8000/v1"``, or a list of them: replicas
            serving the same model. A batch's requests are assigned round-robin (request ``i`` of the ``k``-th
            request this client sends goes to replica ``k mod n``; the order is fixed by the batch, not by timing);
            a retry goes to the next replica, so one replica down slows a run but does not stop it.
        model: the model name sent in each request (``"model"`` field). ``transformers serve`` needs its
            served path here exactly.
        model_alias: the name used for this backend's ``name``, run identities and reports (default: ``model``);
            e.g. ``"SmolLM2-135M-Instruct"`` when ``model`` is a machine-specific path.
        api_key_env: name of the environment variable holding the API key. Unset or empty: no
            ``Authorization`` header is sent (fine for most local servers).
        max_new_tokens, temperature: default sampling (sent as ``max_tokens`` / ``temperature``).
        connect_timeout: seconds to open a connection (a server that is down fails fast).
        read_timeout: seconds to wait for the reply once connected (``timeout`` is accepted as its old name).
        deadline: total seconds one request may take, retries and waits included; then
            :class:`EndpointUnavailableError` (``None``: only ``max_retries`` bounds it).
        first_reply_deadline: the same bound while nothing at all has come back from any endpoint of this client
            yet (not one HTTP reply, whatever its status): a wrong port or a server that accepts connections and
            never answers fails after this many seconds instead of ``deadline`` (``None``: ``deadline`` only).
            Once an endpoint has answered, ``deadline`` applies (a busy server may be slow; a dead one is not).
        wait_report_every: while a reply is awaited, log ``waiting for <url> (no reply for N s)`` every this many
            seconds (at most one line per endpoint per period; sooner when ``read_timeout`` is short: at least
            three lines per attempt, at most one a second).
        max_retries: retries after the first attempt on retryable failures.
        backoff_base, backoff_max: delay before retry ``k`` (0-based) is ``min(backoff_max, backoff_base·2^k)``
            with "equal jitter" (uniform in its upper half); a ``Retry-After`` header is honoured up to
            ``backoff_max``.
        concurrency: requests in flight at once, in total over all replicas (give ``n × per-server`` for ``n``).
        cache_dir: ``"auto"`` (``$WEAKSTRONG_CACHE/chat-cache``), a folder, or ``None`` for no cache. Sampled
            requests (``temperature > 0``) without a ``seed`` are never cached: each call must draw afresh. The
            key holds the sorted set of ``base_url`` values and the request, not the replica that served it.
        extra_body: extra JSON fields merged into every request (e.g. ``{"top_k": 20}``); part of the cache key.
        sleep: the function used to wait between retries (tests inject a recorder).
        run_label: what this client serves in error messages, e.g. ``"the LRL teacher (weakstrong lrl)"``.
        resume_hint: the last sentence of an "endpoint unavailable" error: what is kept and how to continue (the
            caller knows: e.g. "the teacher loop resumes after its last completed batch").
        setting_names: how the user sets each option where this client was built (e.g. ``{"api_key_env":
            "--teacher_api_key_env", "read_timeout": "--teacher_read_timeout"}``), used in error messages;
            default: the Python argument names (``api_key_env=``).

    ``seed`` may be one int or one int per conversation (see :mod:`weakstrong.backends.base`); each request
    carries its own. The server decides what a seed guarantees (vLLM: per-request generators; ``transformers
    serve``: a global ``torch.manual_seed``, racy under concurrency, and it samples only when the model's
    generation config has ``do_sample``).
    """

    def __init__(self, base_url: str | Sequence[str], model: str, api_key_env: str = "OPENAI_API_KEY", *,
                 model_alias: str | None = None, max_new_tokens: int = 512, temperature: float = 0.0,
                 connect_timeout: float = 10.0, read_timeout: float = 120.0, deadline: float | None = 600.0,
                 first_reply_deadline: float | None = 180.0, wait_report_every: float = 15.0,
                 timeout: float | None = None, max_retries: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, concurrency: int = 4, cache_dir: str | os.PathLike | None = "auto",
                 extra_body: dict | None = None, sleep: Callable[[float], None] = time.sleep, name: str | None = None,
                 run_label: str | None = None, setting_names: dict[str, str] | None = None,
                 resume_hint: str | None = None):
        urls = [base_url] if isinstance(base_url, str) or base_url is None else list(base_url)
        if not urls:
            raise ConfigurationError("base_url is an empty list: give at least one URL such as "
                                     "'http://localhost:8000/v1'")
        self.endpoints = [_Endpoint(u) for u in urls]
        if len({e.base_url for e in self.endpoints}) != len(self.endpoints):
            raise ConfigurationError(f"base_url lists the same endpoint twice: {urls}")
        if not model:
            raise ConfigurationError("model must name the model served at base_url (e.g. 'Qwen/Qwen2.5-72B-Instruct')")
        if timeout is not None:
            read_timeout = timeout
        if (max_retries < 0 or concurrency < 1 or connect_timeout <= 0 or read_timeout <= 0 or backoff_base < 0
                or (deadline is not None and deadline <= 0) or wait_report_every <= 0
                or (first_reply_deadline is not None and first_reply_deadline <= 0)):
            raise ValueError("need max_retries >= 0, concurrency >= 1, connect_timeout > 0, read_timeout > 0, "
                             "deadline > 0 (or None), first_reply_deadline > 0 (or None), wait_report_every > 0 "
                             "and backoff_base >= 0")
        self.base_urls = [e.base_url for e in self.endpoints]
        self.base_url = self.base_urls[0]
        self.url = self.endpoints[0].url
        self.model = model
        self.model_alias = model_alias or model
        self.api_key_env = api_key_env
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.deadline = None if deadline is None else float(deadline)
        self.first_reply_deadline = None if first_reply_deadline is None else float(first_reply_deadline)
        self.wait_report_every = float(wait_report_every)
        self.resume_hint = resume_hint or _DEFAULT_RESUME_HINT
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        self.sleep = sleep
        where = self.base_url if len(self.base_urls) == 1 else f"{self.base_url}+{len(self.base_urls) - 1}"
        self.name = name or f"openai:{self.model_alias}@{where}"
        #: what a resumed run compares: the model, not where it is served (replicas may be added or moved)
        self.identity = f"openai:{self.model_alias}"
        self.run_label = run_label
        self.setting_names = {k: f"{k}=" for k in _SETTING_NAMES}
        self.setting_names.update(setting_names or {})
        self.defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        self.cache_dir = (default_cache_dir() if cache_dir == "auto" else
                          Path(cache_dir).expanduser() if cache_dir is not None else None)
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0,
                      "per_endpoint": {u: 0 for u in self.base_urls}}
        self._lock = threading.Lock()
        self._next_endpoint = 0
        self._last_reply: dict[str, float] = {}  # endpoint -> monotonic time of its last HTTP reply (any status)
        self._last_wait_report: dict[str, float] = {}

    @property
    def timeout(self) -> float:  # the old single timeout: now the read timeout
        return self.read_timeout

    def __repr__(self) -> str:  # never shows the key
        urls = self.base_url if len(self.base_urls) == 1 else self.base_urls
        return (f"{type(self).__name__}(base_url={urls!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    def _reserve(self, n: int) -> int:
        """The replica index of the first of ``n`` requests about to be sent (round-robin over calls)."""
        with self._lock:
            start = self._next_endpoint
            self._next_endpoint = (start + n) % len(self.endpoints)
        return start

    def _map(self, fn, items: list) -> list:
        workers = min(self.concurrency, len(items))
        if workers <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat") as pool:
            return list(pool.map(fn, items))

    # ------------------------------------------------------------------ public
    def generate(self, conversations: list[Messages], **sampling: Any) -> list[str]:
        """One reply per conversation, in order. ``seed`` may be one int or one per conversation; ``stop``
        strings are cut from the replies here even when the server leaves them in."""
        conversations = check_conversations(conversations)
        opts = normalize_sampling(self.defaults, sampling)
        seeds = request_seeds(opts, len(conversations))
        if not conversations:
            return []
        first = self._reserve(len(conversations))
        jobs = [(first + i, c, {**opts, "seed": s}) for i, (c, s) in enumerate(zip(conversations, seeds))]
        return self._map(lambda job: self._one(*job), jobs)

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

        first = self._reserve(n) if n else 0

        def one(item):
            i, conv = item
            body = {"model": self.model, "messages": conv, "temperature": 0.0, "max_tokens": 1,
                    "logprobs": True, "top_logprobs": int(top_logprobs), **self.extra_body}
            path = self._cache_path(self.cache_key(body))
            cached = self._cache_get(path)
            if cached is not None:
                with self._lock:
                    self.stats["cache_hits"] += 1
                return json.loads(cached)
            top = self._post_with_retries(body, first + i, self._top_logprobs)
            if path is not None:
                self._cache_put(path, body, json.dumps(top))
            return top

        tops = self._map(one, list(enumerate(conversations)))
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

    def _top_logprobs(self, payload: dict, endpoint: _Endpoint) -> list[dict]:
        """The first generated token's ``top_logprobs`` list (``[{"token", "logprob"}, ...]``)."""
        try:
            first = payload["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise _Retryable("the reply has no choices[0]") from None
        logprobs = first.get("logprobs") if isinstance(first, dict) else None
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise UnusableReplyError(self._where(
                f"{endpoint.url} (model {self.model!r}) returned no logprobs: this server or model does not support "
                "'logprobs'/'top_logprobs' on chat completions (transformers serve ignores them); use "
                "judge_mode='json' instead"))
        top = content[0].get("top_logprobs") if isinstance(content[0], dict) else None
        if not isinstance(top, list):
            top = [{"token": content[0].get("token"), "logprob": content[0].get("logprob")}]
        return [{"token": t.get("token"), "logprob": t.get("logprob")} for t in top if isinstance(t, dict)]

    def request_body(self, conversation: Messages, opts: dict) -> dict:
        """The JSON body sent for one conversation (also what the cache key hashes). ``opts["seed"]`` must be
        this request's own seed (an int or None)."""
        body = {"model": self.model, "messages": conversation, "temperature": float(opts["temperature"]),
                "max_tokens": int(opts["max_new_tokens"])}
        for key in ("top_p", "seed", "stop"):
            if opts.get(key) is not None:
                body[key] = opts[key]
        return {**body, **self.extra_body}

    def cache_key(self, body: dict) -> str:
        """The hash of the request and the SET of endpoints (sorted): a reply from server A is never returned for
        server B, and it does not matter which replica of a list served it."""
        blob = json.dumps({"format": CACHE_FORMAT, "endpoints": sorted(self.base_urls), "request": body},
                          sort_keys=True, ensure_ascii=False)
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

    def _cache_put(self, path: Path, body: dict, reply: str) -> None:
        atomic_write(path, json.dumps({"format": CACHE_FORMAT, "endpoints": sorted(self.base_urls), "request": body,
                                       "reply": reply}, ensure_ascii=False))

    # ------------------------------------------------------------------ one request
    def _one(self, slot: int, conversation: Messages, opts: dict) -> str:
        body = self.request_body(conversation, opts)
        cacheable = self.cache_dir is not None and (opts["temperature"] == 0 or opts.get("seed") is not None)
        path = self._cache_path(self.cache_key(body)) if cacheable else None
        cached = self._cache_get(path)
        if cached is not None:
            with self._lock:
                self.stats["cache_hits"] += 1
            return cut_at_stop(cached, opts.get("stop"))
        reply = cut_at_stop(self._post_with_retries(body, slot, self._content), opts.get("stop"))
        if path is not None:
            self._cache_put(path, body, reply)
        return reply

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _where(self, message: str) -> str:
        return f"{self.run_label}: {message}" if self.run_label else message

    def _post_with_retries(self, body: dict, slot: int = 0, read: Callable[[dict, _Endpoint], Any] | None = None):
        """POST ``body`` to replica ``slot mod n`` (the next replica on each retry) until it succeeds, a
        non-retryable error, ``max_retries`` retries or the ``deadline`` — whichever comes first."""
        read = read or self._content
        started = time.monotonic()
        last, attempts, out_of_time = "no attempt made", 0, False
        for attempt in range(self.max_retries + 1):
            endpoint = self.endpoints[(slot + attempt) % len(self.endpoints)]
            deadline = self._deadline()
            remaining = None if deadline is None else deadline - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                out_of_time = True
                break
            attempts += 1
            try:
                return read(self._post_payload(endpoint, body, remaining), endpoint)
            except _Retryable as err:
                last = str(err) if len(self.endpoints) == 1 else f"{err} (from {endpoint.base_url})"
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, err.retry_after)
                deadline = self._deadline()
                if deadline is not None:
                    left = deadline - (time.monotonic() - started)
                    if left <= delay:
                        out_of_time = True
                        break
                with self._lock:
                    self.stats["retries"] += 1
                logger.warning("%s: %s; retry %d/%d in %.1fs", endpoint.url, err, attempt + 1, self.max_retries,
                               delay)
                self.sleep(delay)
        names = self.setting_names
        took = time.monotonic() - started
        if not self._answered():
            raise EndpointUnavailableError(self._where(
                f"{', '.join(self.base_urls)} (model {self.model!r}) never answered: nothing has come back from it "
                f"since this run started ({attempts} attempts in {took:.0f} s; last error: {last}). Check that an "
                f"OpenAI-compatible server is running at {names['base_url'].rstrip('=')} (host, port, the '/v1' "
                "root): one that accepts connections but never replies is hung or is another kind of service. A "
                f"server that is still loading its model needs more time: raise {names['first_reply_deadline']} "
                f"(now {self.first_reply_deadline:g} s; it applies until the first reply). {self.resume_hint}"))
        why = (f"the {self.deadline:g} s deadline ran out after {attempts} attempts" if out_of_time
               else f"failed {attempts} times")
        raise EndpointUnavailableError(self._where(
            f"{', '.join(self.base_urls)} (model {self.model!r}) {why} in {took:.0f} s; "
            f"last error: {last}. Check that the server is up and reachable at {names['base_url'].rstrip('=')}, or "
            f"raise {names['deadline']} (total per request), {names['read_timeout']} (per attempt) or "
            f"{names['max_retries']}. {self.resume_hint}"))

    def _answered(self) -> bool:
        """Whether any endpoint of this client has sent back an HTTP reply (any status) in this process."""
        with self._lock:
            return bool(self._last_reply)

    def _deadline(self) -> float | None:
        """The total time a request may take now: ``deadline``, or ``first_reply_deadline`` (when shorter) while
        nothing has come back from any endpoint yet."""
        if self._answered() or self.first_reply_deadline is None:
            return self.deadline
        return self.first_reply_deadline if self.deadline is None else min(self.deadline, self.first_reply_deadline)

    def _await_reply(self, sock, endpoint: _Endpoint, read: float) -> None:
        """Block until the reply's first bytes can be read, logging ``waiting for <url> (no reply for N s)`` every
        ``wait_report_every`` seconds (once per endpoint and period over all threads); raise :class:`_Retryable`
        after ``read`` seconds without a byte."""
        sent = time.monotonic()
        every = min(self.wait_report_every, max(1.0, read / 3))  # a short attempt still reports while it waits
        while True:
            if getattr(sock, "pending", None) is not None and sock.pending():
                return  # TLS bytes already decrypted and buffered
            waited = time.monotonic() - sent
            if waited >= read:
                raise _Retryable(f"read timeout: no reply within {_seconds(read)} s")
            if _readable(sock, min(every, read - waited)):
                return
            now = time.monotonic()
            with self._lock:
                last_report = self._last_wait_report.get(endpoint.base_url, -float("inf"))
                due = now - last_report >= every * 0.999
                if due:
                    self._last_wait_report[endpoint.base_url] = now
                last_reply = self._last_reply.get(endpoint.base_url)
            if due:
                since = ("nothing has come back from it yet in this run" if last_reply is None
                         else f"its last reply came {now - last_reply:.0f} s ago")
                logger.warning("waiting for %s (no reply for %s s; %s; this attempt gives up after %s s)",
                               endpoint.url, _seconds(now - sent), since, _seconds(read))

    def _content(self, payload: dict, endpoint: _Endpoint) -> str:
        try:
            choice = payload["choices"][0]
            content = choice["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable("the reply has no choices[0].message") from None
        if not isinstance(content, str):
            raise UnusableReplyError(self._where(_no_text_message(endpoint.url, self.model, choice, content)))
        return content

    def _post_payload(self, endpoint: _Endpoint, body: dict, remaining: float | None = None) -> dict:
        """POST one request to ``endpoint``; the decoded JSON reply (retryable failures raise :class:`_Retryable`).
        Connecting may take ``connect_timeout``; each read of the reply ``read_timeout`` (or what is left of the
        deadline)."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "Content-Length": str(len(data))}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connect = self.connect_timeout if remaining is None else max(0.05, min(self.connect_timeout, remaining))
        read = self.read_timeout if remaining is None else max(0.05, min(self.read_timeout, remaining))
        with self._lock:
            self.stats["requests"] += 1
            self.stats["per_endpoint"][endpoint.base_url] += 1
        conn = endpoint.connection(connect)
        try:
            try:
                conn.connect()
            except (socket.timeout, TimeoutError) as err:
                raise _Retryable(f"connect timeout after {connect:g} s ({type(err).__name__})") from None
            except OSError as err:
                raise _Retryable(f"connection error ({type(err).__name__}: {err})") from None
            conn.sock.settimeout(read)
            try:
                conn.request("POST", endpoint.target(), body=data, headers=headers)
                self._await_reply(conn.sock, endpoint, read)
                resp = conn.getresponse()
                with self._lock:
                    self._last_reply[endpoint.base_url] = time.monotonic()
                status, raw = resp.status, resp.read()
            except (socket.timeout, TimeoutError):
                raise _Retryable(f"read timeout: no reply within {_seconds(read)} s") from None
            except (http.client.HTTPException, OSError) as err:
                raise _Retryable(f"connection error ({type(err).__name__}: {err})") from None
        finally:
            conn.close()
        if status >= 400:
            self._raise_for_status(endpoint, status, raw, resp.getheader("Retry-After"))
        try:
            payload = json.loads(raw)
        except ValueError:
            raise _Retryable(f"malformed JSON in the reply ({raw[:80]!r})") from None
        if not isinstance(payload, dict):
            raise _Retryable("the reply is not a JSON object")
        if payload.get("error"):
            raise UnusableReplyError(self._where(f"{endpoint.url} (model {self.model!r}) answered with an error "
                                                 f"object: {_server_message(json.dumps(payload).encode())}"))
        return payload

    def _raise_for_status(self, endpoint: _Endpoint, status: int, raw: bytes, retry_after) -> None:
        detail = raw[:300].decode("utf-8", "replace").strip()
        names = self.setting_names
        if status in (401, 403):
            set_or_not = "is set but was rejected" if os.environ.get(self.api_key_env) else "is not set"
            raise ConfigurationError(self._where(
                f"{endpoint.url} answered HTTP {status} (unauthorized): the API key environment variable "
                f"{self.api_key_env!r} {set_or_not}. Export a valid key in {self.api_key_env}, or pass "
                f"{names['api_key_env']}<NAME> to read it from another variable."))
        if status == 404:
            raise ConfigurationError(self._where(
                f"{endpoint.url} answered HTTP 404 (not found): check {names['base_url'].rstrip('=')} (the API root, "
                f"usually ending in '/v1'; got {endpoint.base_url!r}) and {names['model'].rstrip('=')} (got "
                f"{self.model!r}; it must be a model this server serves). Server said: {detail[:200]}"))
        pinned = _PINNED.search(detail)
        if status == 400 and pinned:
            raise ConfigurationError(self._where(
                f"{endpoint.url} serves only {pinned.group(1)!r} and refused model {self.model!r} (transformers "
                f"serve requires the exact served path): pass {names['model']}{pinned.group(1)!r}"))
        if status in _RETRY_STATUS or status >= 500:
            said = _server_message(raw)
            raise _Retryable(f"HTTP {status}" + (f" (server said: {said})" if said else " (empty body)"),
                             _retry_after(retry_after))
        raise ConfigurationError(self._where(f"{endpoint.url} (model {self.model!r}) refused the request with HTTP "
                                             f"{status}: {_server_message(raw) or '(empty body)'}"))
