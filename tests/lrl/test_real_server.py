"""The OpenAI-compatible client and the LRL teacher loop against a REAL server: ``transformers serve`` on the
embedded SmolLM2-135M-Instruct (the ``real_server`` fixture of tests/conftest.py)."""

from __future__ import annotations

import pytest

from weakstrong.backends import ChatBackendError, ConfigurationError, EndpointUnavailableError, OpenAICompatibleChat
from weakstrong.lrl import ReflectionLoop, build_curriculum
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


# ------------------------------------------------------------------ the LRL teacher loop through the real server
LOOP = dict(batch_size=2, distill_every=2, journal_examples=2, solve_max_new_tokens=24, reflect_max_new_tokens=24,
            distill_max_new_tokens=32)


def _problems():
    return TASK.generate(4, seed=21)


def _summary(result):
    return {"journal": result.journal, "strategies": [(s["version"], s["source"], s["text"]) for s in result.strategies],
            "results": [(r["batch"], r["completion"], r["parsed"], r["correct"]) for r in result.results]}


@pytest.fixture(scope="module")
def local_loop(tmp_path_factory):
    """The same loop with the local backend (one conversation at a time, as the server decodes)."""
    from weakstrong.teachers import TransformersTeacher

    return ReflectionLoop(TransformersTeacher("default", batch_size=1), TASK, tmp_path_factory.mktemp("local"),
                          **LOOP).run(_problems())


class _KillAfter:
    """Fault injection: forwards to a real client, then kills the real server after ``calls`` generate calls."""

    def __init__(self, client, server, calls):
        self.client, self.server, self.left = client, server, calls

    def __getattr__(self, name):
        return getattr(self.client, name)

    def generate(self, conversations, **sampling):
        out = self.client.generate(conversations, **sampling)
        self.left -= 1
        if self.left == 0:
            self.server.kill()
        return out


@pytest.mark.slow
def test_lrl_loop_through_the_real_server_equals_the_local_backend(real_server, local_loop, tmp_path):
    """solve → journal → distil → curriculum through transformers serve, greedy: byte-identical to the local
    backend's journal, strategies, answers and curriculum."""
    client = _client(real_server, tmp_path, concurrency=2)
    served = ReflectionLoop(client, TASK, tmp_path / "run", **LOOP).run(_problems())
    assert _summary(served) == _summary(local_loop)
    assert served.teacher_calls == 4 + 2 + 1 and client.stats["requests"] == 7
    assert (tmp_path / "run" / "journal.md").read_text().count("=== BATCH") == 2
    assert served.accuracy == local_loop.accuracy
    kw = dict(size=8, seed=1, strategies=[s["text"] for s in served.strategies])
    assert (build_curriculum(TASK, served.results, served.strategy, **kw).to_list()
            == build_curriculum(TASK, local_loop.results, local_loop.strategy, **kw).to_list())


@pytest.mark.slow
def test_server_killed_mid_run_then_restarted_the_loop_resumes_losing_nothing(real_server_alive, local_loop, tmp_path):
    server = real_server_alive
    crashing = _KillAfter(_client(server, tmp_path, connect_timeout=2, deadline=120, max_retries=2, backoff_base=0.1),
                          server, calls=2)  # batch 1's solves and journal entry, then the server dies
    with pytest.raises(EndpointUnavailableError, match="LRL teacher loop in .*batch 2/2 \\(solve\\).*connection error"):
        ReflectionLoop(crashing, TASK, tmp_path / "run", **LOOP).run(_problems())
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 2
    server.restart()
    resumed_client = _client(server, tmp_path)
    resumed = ReflectionLoop(resumed_client, TASK, tmp_path / "run", **LOOP).run(_problems())
    assert _summary(resumed) == _summary(local_loop)
    # only what the crash left undone was asked: batch 2's two solves, its journal entry and the distillation
    assert resumed.teacher_calls == 4 and resumed_client.stats["requests"] == 4
