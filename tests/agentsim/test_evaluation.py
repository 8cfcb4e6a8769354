"""evaluate_personality end to end with scripted models, a scripted judge and a fake embedder; telemetry plot."""

import hashlib
import json

import numpy as np
import pytest

from weakstrong.agentsim import (ScriptedBackend, Simulation, SimulationConfig, evaluate_personality,
                                 personality_markdown)
from weakstrong.agentsim.evaluation import judge_responses, load_prompts
from weakstrong.agentsim.telemetry import daily_telemetry, plot_divergence, telemetry_markdown


class FakeEmbedder:
    """Unit vectors from a hash of the text's first word (agents that differ in wording spread out)."""

    def encode(self, texts):
        out = []
        for t in texts:
            h = hashlib.sha256((t.split() or [""])[0].encode()).digest()
            v = np.frombuffer(h, dtype=np.uint8)[:16].astype(float) - 127.5
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def _agent_of(conv):
    return conv[0]["content"].split()[2].lstrip("@")


def bland(conv, opts):
    return "It depends on many things, honestly."


def persona(conv, opts):
    name = _agent_of(conv)
    n = 1 + int(hashlib.md5(name.encode()).hexdigest(), 16) % 5
    return f"{name.upper()} " + "definitely love coffee " * n


class FlakyJudge:
    """Returns garbage on its first call for every second item, JSON otherwise; scores follow word count."""

    name = "flaky-judge"

    def __init__(self):
        self.calls = 0

    def generate(self, convs, **opts):
        self.calls += 1
        out = []
        for i, c in enumerate(convs):
            if self.calls == 1 and i % 2:
                out.append("no idea")
                continue
            words = len(c[-1]["content"].split("RESPONSE:")[1].split("Answer with")[0].split())
            out.append(json.dumps({"skepticism": 3, "verbosity": min(9, words // 3), "valence": 4,
                                   "abstraction": 2, "assertiveness": 1 + words % 5}))
        return out


@pytest.fixture(scope="module")
def store():
    sim = Simulation(SimulationConfig(agents=6, days=2, ticks_per_day=3, episodic_every=2, seed=1), ScriptedBackend())
    sim.run()
    return sim.store


def test_evaluate_personality_structure_and_ratios(store):
    prompts = load_prompts(per_category=1)
    result = evaluate_personality({"base": ScriptedBackend(bland), "tuned": ScriptedBackend(persona)}, store,
                                  n_agents=5, prompts=prompts, judge=FlakyJudge(), embedder=FakeEmbedder(),
                                  n_boot=50, log=None)
    assert result["settings"]["n_agents"] == 5 and result["settings"]["n_prompts"] == 5
    assert len(set(result["archetypes"])) == 5
    base, tuned = result["models"]["base"], result["models"]["tuned"]
    assert np.asarray(base["judge"]["verbosity"]).shape == (5, 5)
    assert base["judge_stats"]["retried"] == 12 and base["judge_stats"]["failed"] == 0
    # the bland model says the same thing for everyone: zero cross-agent spread on every measure
    assert base["stats"]["lexical"]["verbosity"]["cross"] == 0
    assert base["stats"]["embedding"]["cross"] == pytest.approx(0, abs=1e-9)
    assert tuned["stats"]["lexical"]["verbosity"]["cross"] > 0
    assert tuned["stats"]["embedding"]["cross"] > 0
    comp = result["comparisons"]["tuned"]
    assert set(comp) == {"lexical", "judge", "embedding"}
    assert "ratio_of_averages" in comp["judge"]["cross"] and "mean_of_ratios" in comp["judge"]["cross"]
    md = personality_markdown(result)
    assert "cross-agent ratio of averages" in md and "Embedding divergence" in md
    json.dumps(result)  # JSON-serializable


def test_judge_gives_up_after_retries():
    class Never:
        def generate(self, convs, **opts):
            return ["nope"] * len(convs)

    scores, stats = judge_responses(Never(), [("p", "r")] * 3, retries=2)
    assert scores == [None] * 3 and stats == {"calls": 9, "retried": 6, "failed": 3}


def test_evaluate_bad_input(store):
    with pytest.raises(ValueError, match="n_agents must be >= 2"):
        evaluate_personality({"m": ScriptedBackend()}, store, n_agents=1, embedder=None, log=None)
    with pytest.raises(ValueError, match="store has 6"):
        evaluate_personality({"m": ScriptedBackend()}, store, n_agents=7, embedder=None, log=None)
    with pytest.raises(ValueError, match="baseline"):
        evaluate_personality({"m": ScriptedBackend()}, store, n_agents=2, baseline="x", embedder=None, log=None)


def test_daily_telemetry_and_plot(store, tmp_path):
    rows = daily_telemetry(store, embedder=FakeEmbedder())
    assert [r["day"] for r in rows] == [1, 2]  # numbered from 1, like the progress lines
    assert sum(r["posts"] for r in rows) == store.counts()["posts"]
    assert all(r["complete"] for r in rows)
    assert all(np.isfinite(r["divergence"]) for r in rows if r["posting_agents"] >= 2)
    path = plot_divergence(rows, tmp_path / "div.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| day |" in telemetry_markdown(rows)


def test_models_evaluated_in_separate_calls_share_a_cache(store, tmp_path):
    prompts = load_prompts(per_category=1)
    kw = dict(n_agents=3, prompts=prompts, judge=None, embedder=FakeEmbedder(), n_boot=20, log=None,
              cache_dir=tmp_path)
    first = evaluate_personality({"base": ScriptedBackend(bland)}, store, **kw)
    assert (tmp_path / "model-base.json").is_file() and first["comparisons"] == {}
    never = ScriptedBackend(fail_on_call=1)  # would raise if base were regenerated
    both = evaluate_personality({"base": never, "tuned": ScriptedBackend(persona)}, store, **kw)
    assert both["models"]["base"]["responses"] == first["models"]["base"]["responses"]
    assert "embedding" in both["comparisons"]["tuned"]
    with pytest.raises(ValueError, match="no matching cache entry"):
        evaluate_personality({"other": None}, store, **kw)
