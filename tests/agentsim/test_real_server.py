"""A short agent simulation through a REAL OpenAI-compatible server (``transformers serve`` on the embedded model,
the ``real_server`` fixture of tests/conftest.py), using only the public ``weakstrong.agentsim`` API: greedy, it
equals the local backend's run table for table; the server killed mid-tick and restarted, the run resumes and
loses nothing (replies received before the crash come back from the client's cache)."""

from __future__ import annotations

import pytest

from weakstrong.agentsim import OpenAICompatibleBackend, Simulation, SimulationConfig, TransformersBackend
from weakstrong.agentsim.store import RESULT_TABLES
from weakstrong.backends import EndpointUnavailableError

pytestmark = [pytest.mark.embedded, pytest.mark.slow]
CONFIG = dict(agents=4, days=1, ticks_per_day=2, feed_size=2, post_max_new_tokens=20, comment_max_new_tokens=16,
              memory_max_new_tokens=48, temperature=0.0, memory_temperature=0.0, seed=5)


def _tables(sim):
    return {t: sim.store.table(t) for t in RESULT_TABLES}


class _Counting:
    """Forwards to a backend, counting generate calls and conversations; with ``server``, kills that real server
    after the first call (fault injection)."""

    def __init__(self, backend, server=None):
        self.backend, self.server, self.calls, self.conversations = backend, server, 0, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, conversations, **sampling):
        out = self.backend.generate(conversations, **sampling)
        self.calls += 1
        self.conversations.append(len(conversations))
        if self.server is not None and self.calls == 1:
            self.server.kill()
        return out


def test_simulation_through_the_real_server_resumes_and_equals_the_local_backend(real_server_alive, tmp_path):
    server = real_server_alive
    local_backend = _Counting(TransformersBackend("default", batch_size=1))
    local = Simulation(SimulationConfig(**CONFIG), local_backend, tmp_path / "local.db")
    counts = local.run()
    assert counts["posts"] > 0 and counts["ticks"] == 2 and local_backend.calls >= 2

    def served():
        return OpenAICompatibleBackend(server.base_url, server.model, cache_dir=tmp_path / "cache", concurrency=4,
                                       connect_timeout=2, max_retries=2, backoff_base=0.1)

    crashing = _Counting(served(), server)
    with pytest.raises(EndpointUnavailableError):
        Simulation(SimulationConfig(**CONFIG), crashing, tmp_path / "served.db").run()
    assert crashing.calls == 1 and crashing.conversations == local_backend.conversations[:1]
    server.restart()
    backend = served()
    sim = Simulation(SimulationConfig(**CONFIG), backend, tmp_path / "served.db")
    assert sim.run() == counts
    assert _tables(sim) == _tables(local)
    # what the server answered before the crash is not asked again (a rolled-back tick's replies come from the cache)
    assert backend.stats["requests"] == sum(local_backend.conversations) - crashing.conversations[0]
