"""The OpenAI-compatible client against a local scripted server, and the transformers backend on a tiny model."""

from __future__ import annotations

import logging

import pytest

from weakstrong.backends import (ChatBackend, ChatBackendError, ConfigurationError, EndpointUnavailableError,
                                 OpenAICompatibleChat, TransformersChat)
from weakstrong.teachers import OpenAICompatibleTeacher, Teacher, TransformersTeacher

CONV = [{"role": "user", "content": "Meetings: [9-10]\nRooms available: 1\nCan all meetings be scheduled?"}]


def _client(server, tmp_path, **kw):
    sleeps = []
    defaults = dict(model="m", cache_dir=tmp_path / "cache", sleep=sleeps.append, timeout=5.0, max_retries=3,
                    backoff_base=0.5, backoff_max=4.0)
    client = OpenAICompatibleChat(server.base_url, **{**defaults, **kw})
    return client, sleeps


def test_reply_and_protocols(openai_server, tmp_path):
    client, sleeps = _client(openai_server, tmp_path)
    assert isinstance(client, ChatBackend)
    assert client.generate([CONV]) == ["Rooms 1, so probably.\nAnswer: NO"]
    body = openai_server.requests[0]["body"]
    assert body["model"] == "m" and body["temperature"] == 0.0 and body["max_tokens"] == 512
    assert body["messages"] == CONV and sleeps == []
    assert isinstance(OpenAICompatibleTeacher(openai_server.base_url, "m", cache_dir=None), Teacher)


@pytest.mark.parametrize("fault", [429, 500, 503, "timeout", "malformed"])
def test_retries_then_succeeds(openai_server, tmp_path, fault):
    openai_server.faults = [fault, fault]
    openai_server.hang_seconds = 0.6
    client, sleeps = _client(openai_server, tmp_path, timeout=0.3)
    assert client.generate([CONV], max_new_tokens=7) == ["Rooms 1, so probably.\nAnswer: NO"]
    assert len(openai_server.requests) == 3 and client.stats["retries"] == 2
    # exponential backoff with equal jitter: attempt k waits in [c/2, c], c = min(max, base·2^k)
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_backoff_is_capped_and_jittered(tmp_path):
    client = OpenAICompatibleChat("http://127.0.0.1:9/v1", "m", cache_dir=None, backoff_base=1.0, backoff_max=4.0)
    delays = [client._delay(k, None) for k in range(8)]
    assert all(d <= 4.0 for d in delays) and delays[0] <= 1.0
    assert len({round(client._delay(5, None), 6) for _ in range(20)}) > 1  # jitter
    assert client._delay(0, retry_after=3.0) >= 3.0 and client._delay(0, retry_after=100.0) <= 4.0


def test_gives_up_with_clear_error(openai_server, tmp_path):
    openai_server.faults = [500] * 10
    client, sleeps = _client(openai_server, tmp_path, max_retries=2)
    with pytest.raises(EndpointUnavailableError, match=r"failed 3 times; last error: HTTP 500.*rerun"):
        client.generate([CONV])
    assert len(openai_server.requests) == 3 and len(sleeps) == 2


def test_connection_refused_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    client = OpenAICompatibleChat(f"http://127.0.0.1:{port}/v1", "m", cache_dir=None, max_retries=2,
                                  sleep=sleeps.append, timeout=2.0)
    with pytest.raises(EndpointUnavailableError, match="connection error"):
        client.generate([CONV])
    assert len(sleeps) == 2


def test_401_names_the_key_variable_and_never_leaks_it(openai_server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("MY_TEACHER_KEY", secret)
    openai_server.faults = [429, 401]
    client, _ = _client(openai_server, tmp_path, api_key_env="MY_TEACHER_KEY")
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigurationError, match="MY_TEACHER_KEY.*is set but was rejected") as err:
        client.generate([CONV])
    assert len(openai_server.requests) == 2  # no retry after 401
    assert openai_server.requests[0]["auth"] == f"Bearer {secret}"  # the key is sent...
    assert secret not in str(err.value) and secret not in caplog.text and secret not in repr(client)  # ...never shown
    assert secret not in str(vars(client))


def test_401_without_key_says_it_is_not_set(openai_server, tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    openai_server.faults = [401]
    client, _ = _client(openai_server, tmp_path, api_key_env="NOPE_KEY")
    with pytest.raises(ConfigurationError, match="'NOPE_KEY' is not set"):
        client.generate([CONV])
    assert openai_server.requests[0]["auth"] is None


def test_404_names_base_url_and_model(openai_server, tmp_path):
    openai_server.faults = [404]
    client, sleeps = _client(openai_server, tmp_path, model="no/such-model")
    with pytest.raises(ConfigurationError, match=r"base_url.*'no/such-model'"):
        client.generate([CONV])
    bad_route = OpenAICompatibleChat(openai_server.base_url.replace("/v1", "/v2"), "m", cache_dir=None)
    with pytest.raises(ConfigurationError, match="404"):
        bad_route.generate([CONV])
    assert sleeps == []


def test_other_4xx_is_not_retried(openai_server, tmp_path):
    openai_server.faults = [400]
    client, sleeps = _client(openai_server, tmp_path)
    with pytest.raises(ChatBackendError, match="HTTP 400"):
        client.generate([CONV])
    assert sleeps == [] and len(openai_server.requests) == 1


def test_cache_hits_cost_nothing_and_hold_no_key(openai_server, tmp_path, monkeypatch):
    secret = "sk-cache-SECRET"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    client, _ = _client(openai_server, tmp_path)
    convs = [CONV, [{"role": "user", "content": "Rooms available: 3"}]]
    first = client.generate(convs)
    again = OpenAICompatibleChat(openai_server.base_url, "m", cache_dir=tmp_path / "cache").generate(convs)
    assert first == again and len(openai_server.requests) == 2
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2 and not list((tmp_path / "cache").rglob(".tmp-*"))
    assert all(secret not in f.read_text() for f in files)
    # different sampling or model → a different request, not a cache hit
    client.generate([CONV], max_new_tokens=5)
    OpenAICompatibleChat(openai_server.base_url, "other", cache_dir=tmp_path / "cache").generate([CONV])
    assert len(openai_server.requests) == 4
    # sampled requests without a seed are never served from the cache
    client.generate([CONV], temperature=0.7)
    client.generate([CONV], temperature=0.7)
    assert len(openai_server.requests) == 6


def test_concurrency_keeps_order(openai_server, tmp_path):
    client, _ = _client(openai_server, tmp_path, concurrency=4, cache_dir=None)
    convs = [[{"role": "user", "content": f"Rooms available: {k % 3}"}] for k in range(12)]
    replies = client.generate(convs)
    assert [r.endswith("YES") for r in replies] == [k % 3 >= 2 for k in range(12)]


def test_bad_configuration_fails_early():
    with pytest.raises(ConfigurationError, match="base_url"):
        OpenAICompatibleChat("localhost:8000", "m")
    with pytest.raises(ConfigurationError, match="model"):
        OpenAICompatibleChat("http://127.0.0.1:1/v1", "")
    client = OpenAICompatibleChat("http://127.0.0.1:1/v1", "m", cache_dir=None)
    with pytest.raises(TypeError, match="LIST of conversations"):
        client.generate(CONV)
    with pytest.raises(TypeError, match="unknown sampling"):
        client.generate([CONV], temprature=0.1)


def test_transformers_chat_greedy_sampled_and_stop():
    from weakstrong.models import tiny_model

    model, tok = tiny_model()
    chat = TransformersTeacher(model, tok, batch_size=2)
    assert isinstance(chat, TransformersChat) and isinstance(chat, Teacher)
    convs = [CONV, [{"role": "user", "content": "hi"}], [{"role": "system", "content": "s"}, *CONV]]
    greedy = chat.generate(convs, max_new_tokens=6)
    assert len(greedy) == 3 and greedy == chat.generate(convs, max_new_tokens=6)
    # batched left-padded greedy equals one-at-a-time greedy
    assert [chat.generate([c], max_new_tokens=6)[0] for c in convs] == greedy
    a = chat.generate(convs, temperature=1.0, seed=3, max_new_tokens=6)
    assert a == chat.generate(convs, temperature=1.0, seed=3, max_new_tokens=6)
    stop = greedy[0][2:4] if len(greedy[0]) >= 4 else None
    if stop:
        assert chat.generate([CONV], max_new_tokens=6, stop=stop)[0] == greedy[0][: greedy[0].find(stop)]
    assert chat.render(CONV).endswith("<|im_start|>assistant\n")
