"""The OpenAI-compatible client against a local scripted server, and the transformers backend on a tiny model."""

from __future__ import annotations

import logging
import re
import time

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
    with pytest.raises(EndpointUnavailableError, match=r"failed 3 times in \d+ s; last error: HTTP 500.*rerun"):
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


# ------------------------------------------------------------------ per-request seeds, replicas, server quirks
def _convs(n):
    return [[{"role": "user", "content": f"Rooms available: {k}"}] for k in range(n)]


def _seed_of(server, conv):
    return [r["body"].get("seed") for r in server.requests if r["body"]["messages"] == conv]


def test_per_request_seeds_go_out_one_per_request(openai_server, tmp_path):
    client, _ = _client(openai_server, tmp_path, concurrency=3)
    convs = _convs(3)
    client.generate(convs, temperature=0.7, seed=[11, 12, 13])
    assert [_seed_of(openai_server, c) for c in convs] == [[11], [12], [13]]
    # the same seeds again: served from the cache (a seeded sampled request is reproducible); new seeds are not
    client.generate(convs, temperature=0.7, seed=[11, 12, 13])
    assert len(openai_server.requests) == 3
    client.generate(convs, temperature=0.7, seed=(11, 12, 99))
    assert len(openai_server.requests) == 4 and _seed_of(openai_server, convs[2]) == [13, 99]
    client.generate(convs, temperature=0.7, seed=5)  # one int: every request carries it
    assert [_seed_of(openai_server, c)[-1] for c in convs] == [5, 5, 5]
    with pytest.raises(ValueError, match="seed has 2 values for 3 conversations"):
        client.generate(convs, temperature=0.7, seed=[1, 2])
    with pytest.raises(TypeError, match="seed must be an int or a sequence of ints"):
        client.generate(convs, seed=[1, "2", 3])
    with pytest.raises(TypeError, match="seed must be an int"):
        client.generate(convs, seed=True)


def test_transformers_chat_per_conversation_seeds_do_not_depend_on_the_batch():
    from weakstrong.models import tiny_model

    model, tok = tiny_model()
    convs = [CONV, [{"role": "user", "content": "hi"}], CONV, [{"role": "system", "content": "s"}, *CONV]]
    seeds = [5, 6, 7, 5]
    batched = TransformersChat(model, tok, batch_size=4).generate(convs, temperature=1.0, seed=seeds,
                                                                 max_new_tokens=8)
    alone = [TransformersChat(model, tok, batch_size=1).generate([c], temperature=1.0, seed=[s], max_new_tokens=8)[0]
             for c, s in zip(convs, seeds)]
    assert batched == alone
    # the order of the batch does not matter either; the same conversation with another seed draws other text
    reordered = TransformersChat(model, tok, batch_size=3).generate(convs[::-1], temperature=1.0, seed=seeds[::-1],
                                                                   max_new_tokens=8)
    assert reordered[::-1] == batched
    assert batched[0] != batched[2]
    with pytest.raises(ValueError, match="seed has 3 values for 4 conversations"):
        TransformersChat(model, tok).generate(convs, temperature=1.0, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="seed has 1 values for 4 conversations"):
        TransformersChat(model, tok).generate(convs, seed=[1])  # checked for greedy calls too


def test_requests_are_spread_round_robin_over_replicas(openai_servers, tmp_path):
    a, b = openai_servers
    client = OpenAICompatibleChat([a.base_url, b.base_url], "m", cache_dir=tmp_path / "cache", concurrency=4)
    convs = _convs(6)
    replies = client.generate(convs)
    assert replies == OpenAICompatibleChat(a.base_url, "m", cache_dir=None).generate(convs)
    # request i goes to replica i mod 2, whatever the timing; the next call continues the rotation
    served_by_a = {r["body"]["messages"][0]["content"] for r in a.requests[:3]}
    assert served_by_a == {c[0]["content"] for c in convs[0::2]}
    assert {r["body"]["messages"][0]["content"] for r in b.requests} == {c[0]["content"] for c in convs[1::2]}
    assert client.stats["per_endpoint"] == {a.base_url: 3, b.base_url: 3}
    one = [[{"role": "user", "content": "Rooms available: 9"}]]
    client.generate(one)
    assert client.stats["per_endpoint"] == {a.base_url: 4, b.base_url: 3}
    # the cache key is the SET of replicas: the same list in another order hits the cache...
    again = OpenAICompatibleChat([b.base_url, a.base_url], "m", cache_dir=tmp_path / "cache")
    assert again.generate(convs) == replies and again.stats["requests"] == 0
    # ...a single server of the set is another endpoint: a reply cached for A+B is not returned for A alone
    alone = OpenAICompatibleChat(a.base_url, "m", cache_dir=tmp_path / "cache")
    alone.generate(convs[:1])
    assert alone.stats["requests"] == 1 and alone.stats["cache_hits"] == 0
    with pytest.raises(ConfigurationError, match="same endpoint twice"):
        OpenAICompatibleChat([a.base_url, a.base_url + "/"], "m")
    with pytest.raises(ConfigurationError, match="empty list"):
        OpenAICompatibleChat([], "m")


def test_cache_key_holds_the_endpoint(openai_servers, tmp_path):
    a, b = openai_servers
    b.teacher.garbage = True  # server B answers differently for the same model name
    first = OpenAICompatibleChat(a.base_url, "m", cache_dir=tmp_path / "c").generate([CONV])
    other = OpenAICompatibleChat(b.base_url, "m", cache_dir=tmp_path / "c").generate([CONV])
    assert first != other and len(a.requests) == 1 and len(b.requests) == 1


def test_a_replica_that_is_down_is_skipped_by_the_retry(openai_server, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    sleeps = []
    client = OpenAICompatibleChat([dead, openai_server.base_url], "m", cache_dir=None, sleep=sleeps.append,
                                  max_retries=1, concurrency=2)
    assert len(client.generate(_convs(4))) == 4
    assert client.stats["per_endpoint"] == {dead: 2, openai_server.base_url: 4} and len(sleeps) == 2


def test_stop_strings_are_trimmed_client_side(openai_server, tmp_path):
    client, _ = _client(openai_server, tmp_path)
    # the server (like transformers serve) leaves the stop string and what follows in its reply
    assert client.generate([CONV], stop=["\nAnswer"]) == ["Rooms 1, so probably."]
    assert openai_server.requests[-1]["body"]["stop"] == ["\nAnswer"]
    # a cached reply is trimmed the same way
    assert client.generate([CONV], stop="\nAnswer") == ["Rooms 1, so probably."]
    assert len(openai_server.requests) == 1


def test_null_content_is_an_error_and_not_cached(openai_server, tmp_path):
    openai_server.faults = ["null"]
    client, sleeps = _client(openai_server, tmp_path)
    with pytest.raises(ChatBackendError, match="content None.*tool_calls.*nothing was cached"):
        client.generate([CONV])
    assert not list((tmp_path / "cache").rglob("*.json")) and sleeps == []
    assert client.generate([CONV]) == ["Rooms 1, so probably.\nAnswer: NO"]  # nothing stale was kept


def test_pinned_server_names_the_model_to_pass(openai_server, tmp_path):
    openai_server.faults = ["pinned"]
    client, _ = _client(openai_server, tmp_path, setting_names={"model": "--teacher URL::"})
    with pytest.raises(ConfigurationError, match=r"serves only '/srv/models/m'.*--teacher URL::'/srv/models/m'"):
        client.generate([CONV])
    alias = OpenAICompatibleChat(openai_server.base_url, "/srv/models/m", model_alias="small", cache_dir=None)
    assert alias.name.startswith("openai:small@") and alias.request_body(CONV, {"temperature": 0,
                                                                                "max_new_tokens": 4})["model"] == "/srv/models/m"


def test_total_deadline_bounds_a_server_that_never_answers(openai_server, tmp_path):
    import time

    openai_server.faults = [None] + ["timeout"] * 50  # it answers once, then hangs: the total deadline applies
    openai_server.hang_seconds = 3.0
    client = OpenAICompatibleChat(openai_server.base_url, "m", cache_dir=None, read_timeout=0.4, deadline=1.5,
                                  max_retries=20, backoff_base=0.01, run_label="the LRL teacher (weakstrong lrl)",
                                  setting_names={"deadline": "--teacher_deadline",
                                                 "read_timeout": "--teacher_read_timeout"})
    assert client.generate([CONV]) == ["Rooms 1, so probably.\nAnswer: NO"]
    openai_server.requests.clear()
    start = time.monotonic()
    with pytest.raises(EndpointUnavailableError) as err:
        client.generate([CONV])
    assert time.monotonic() - start < 2.5
    msg = str(err.value)
    assert msg.startswith("the LRL teacher (weakstrong lrl): ") and "1.5 s deadline ran out" in msg
    assert re.search(r"read timeout: no reply within 0\.\d+ s", msg) and "--teacher_deadline" in msg
    assert "--teacher_read_timeout" in msg and 2 <= len(openai_server.requests) <= 5


def test_setting_names_replace_python_names_in_errors(openai_server, tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    openai_server.faults = [401]
    client, _ = _client(openai_server, tmp_path, api_key_env="NOPE_KEY",
                        setting_names={"api_key_env": "--teacher_api_key_env "})
    with pytest.raises(ConfigurationError, match="pass --teacher_api_key_env <NAME>"):
        client.generate([CONV])


def test_a_server_that_never_answers_is_reported_while_waiting_and_fails_at_the_first_reply_deadline(
        silent_server, caplog):
    url, held = silent_server
    client = OpenAICompatibleChat(url, "m", cache_dir=None, read_timeout=1.5, deadline=600.0,
                                  first_reply_deadline=2.5, wait_report_every=0.5, max_retries=20, backoff_base=0.01,
                                  setting_names={"first_reply_deadline": "--teacher_first_reply_deadline"})
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="weakstrong.backends.openai_compat"):
        with pytest.raises(EndpointUnavailableError) as err:
            client.generate([CONV])
    took = time.monotonic() - start
    assert len(held) >= 2  # it did connect, more than once
    assert 2.4 <= took < 60, took  # the 2.5 s first-reply deadline, not the 600 s one (bound loose for busy CI)
    msg = str(err.value)
    assert "never answered: nothing has come back from it since this run started" in msg
    assert "read timeout: no reply within" in msg and "--teacher_first_reply_deadline (now 2.5 s" in msg
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for ")]
    assert waits and all(f"waiting for {url}/chat/completions (no reply for " in w for w in waits)
    assert "nothing has come back from it yet in this run" in waits[0]


def test_http_500_reports_what_the_server_said(openai_server, tmp_path):
    openai_server.faults = [500] * 3
    client, _ = _client(openai_server, tmp_path, max_retries=1)
    with pytest.raises(EndpointUnavailableError, match=r"last error: HTTP 500 \(server said: scripted 500\)"):
        client.generate([CONV])
    from weakstrong.backends.openai_compat import _server_message

    assert _server_message(b'{"detail": "CUDA out of memory"}') == "CUDA out of memory"
    assert _server_message(b"<html>Internal\n  Server Error</html>") == "<html>Internal Server Error</html>"
    long = _server_message(b"x" * 1000)
    assert long.startswith("x" * 300 + "...") and "(1000 characters)" in long


def test_no_scheme_endpoint_is_refused_with_the_url_meant():
    from weakstrong.backends import parse_endpoint

    for spec, meant in [("127.0.0.1:18431/v1::M", "http://127.0.0.1:18431/v1::M"),
                        ("localhost:8000/v1", "http://localhost:8000/v1::MODEL"),
                        ("[::1]:8000/v1::M", "http://[::1]:8000/v1::M")]:
        with pytest.raises(ConfigurationError, match=re.escape(f"did you mean {meant!r}?")):
            parse_endpoint(spec)
    for local in ("default", "HuggingFaceTB/SmolLM2-135M-Instruct", "./models/tiny", "/abs/path", "C:/models/x"):
        assert parse_endpoint(local) is None
    assert parse_endpoint("http://h:1/v1::M") == (["http://h:1/v1"], "M")
