"""Shared fixtures: the local OpenAI-compatible fake server of the LRL tests, taught to answer logprob requests."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest


def _lrl_conftest():
    # pytest runs in importlib mode (tests/ is no package): load the LRL fixtures module by path to reuse its server
    path = Path(__file__).resolve().parents[1] / "lrl" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_weakstrong_tests_lrl_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LRL = _lrl_conftest()
FakeOpenAIServer = _LRL.FakeOpenAIServer


class LogprobServer(FakeOpenAIServer):
    """The LRL fake server; a request with ``logprobs`` gets one token and ``top_logprobs`` from ``self.top``:
    ``top(body) -> {token: probability}`` (the most likely first, as real servers order them)."""

    def __init__(self):
        super().__init__()
        self.top = lambda body: {"3": 0.5, "4": 0.3, "Hello": 0.2}
        self.omit_logprobs = False

    def reply(self, body: dict) -> dict:
        if not body.get("logprobs"):
            return super().reply(body)
        dist = sorted(self.top(body).items(), key=lambda kv: -kv[1])[: int(body.get("top_logprobs") or 1)]
        first = dist[0][0] if dist else ""
        choice = {"index": 0, "message": {"role": "assistant", "content": first}, "finish_reason": "length"}
        if not self.omit_logprobs:
            choice["logprobs"] = {"content": [{
                "token": first, "logprob": math.log(dist[0][1]) if dist else 0.0,
                "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in dist]}]}
        return {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": [choice]}


@pytest.fixture
def logprob_server():
    with _LRL.serving(LogprobServer()) as server:
        yield server
