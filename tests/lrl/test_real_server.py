"""The OpenAI-compatible client and the LRL teacher loop against a REAL server: ``transformers serve`` on the
embedded SmolLM2-135M-Instruct (the ``real_server`` fixture of tests/conftest.py)."""

from __future__ import annotations

import pytest

from weakstrong.backends import (ChatBackendError, ConfigurationError, EndpointUnavailableError, OpenAICompatibleChat,
                                 TransformersChat)
from weakstrong.lrl import ReflectionLoop, build_curriculum
from weakstrong.lrl.prompts import solve_messages
from weakstrong.tasks import MeetingRoomsTask

pytestmark = pytest.mark.embedded
TASK = MeetingRoomsTask()


def _client(server, tmp_path=None, **kw):
    return OpenAICompatibleChat(server.base_url, server.model, cache_dir=None if tmp_path is None else tmp_path / "c",
                                **kw)


def test_server_quirks_are_handled_by_the_client(real_server):
    conv = [[{"role": "user", "content": "List three colours, one per line."}]]
    # 1. pinned model name: the error names the exact path to pass
    with pytest.raises(ConfigurationError, match=f"serves only '{real_server.model}'"):
        OpenAICompatibleChat(real_server.base_url, "SmolLM2", cache_dir=None).generate(conv, max_new_tokens=2)
    # 2. the server leaves stop strings in its reply; the client cuts there, as the OpenAI API does
    client = _client(real_server)
    full = client.generate(conv, max_new_tokens=24)[0]
    assert "\n" in full.strip(), full
    stop = "\n"
    assert client.generate(conv, max_new_tokens=24, stop=[stop]) == [full[: full.find(stop)]]
    # 3. logprobs are ignored: the judge's probs mode says so instead of returning nonsense
    with pytest.raises(ChatBackendError, match="returned no logprobs"):
        client.choice_probs(conv, ["1", "2"])
    # the same model name under an alias keeps a short name for reports
    assert _client(real_server, model_alias="smollm2").name.startswith("openai:smollm2@http://127.0.0.1")


def test_greedy_replies_equal_the_local_backend(real_server):
    rows = TASK.generate(3, seed=5)
    convs = [solve_messages(TASK, r, None) for r in rows]
    served = _client(real_server, concurrency=3).generate(convs, max_new_tokens=24)
    local = TransformersChat("default", batch_size=1).generate(convs, max_new_tokens=24)
    assert served == local


def test_a_killed_server_fails_fast_and_a_restarted_one_answers(real_server_alive):
    server = real_server_alive
    client = _client(server, connect_timeout=2, deadline=3, max_retries=2, backoff_base=0.1)
    conv = [[{"role": "user", "content": "hi"}]]
    assert client.generate(conv, max_new_tokens=2)
    server.kill()
    with pytest.raises(EndpointUnavailableError, match="connection error"):
        client.generate([[{"role": "user", "content": "hello"}]], max_new_tokens=2)
    server.restart()
    assert client.generate([[{"role": "user", "content": "hello"}]], max_new_tokens=2)
