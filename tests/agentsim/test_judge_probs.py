"""The next-token-probability judge (judge_mode="probs"): expected-value math, the transformers path on a tiny
model, the OpenAI-compatible path against the local fake server, and the errors that point to judge_mode="json"."""

import json
import math

import numpy as np
import pytest

from weakstrong.agentsim import (OpenAICompatibleBackend, ScriptedBackend, Simulation, SimulationConfig,
                                 TransformersBackend, evaluate_personality, personality_markdown)
from weakstrong.agentsim.evaluation import DIGITS, JUDGE_ANCHORS, judge_probs, load_prompts
from weakstrong.agentsim.metrics import DIMENSIONS
from weakstrong.backends import ChatBackendError, ChoiceProbs, ChoiceScorer

# known next-token distributions over "1".."5" per dimension, and their expected values
KNOWN = {
    "skepticism": ([1, 0, 0, 0, 0], 1.0),
    "verbosity": ([0.2] * 5, 3.0),
    "valence": ([0, 0, 0.5, 0.5, 0], 3.5),
    "abstraction": ([0.1, 0.2, 0.3, 0.2, 0.2], 3.2),
    "assertiveness": ([0, 0, 0, 0.25, 0.75], 4.75),
}


def _dimension_of(conv):
    return conv[-1]["content"].split("Rate the ")[1].split(" of the RESPONSE")[0]


class ScriptedProbsJudge:
    """choice_probs from KNOWN by the dimension asked about; the digits hold ``mass`` of the vocabulary."""

    name = "scripted-probs"

    def __init__(self, mass=0.8, nan_for=None):
        self.mass, self.nan_for, self.calls, self.seen = mass, nan_for, 0, []

    def choice_probs(self, conversations, choices):
        assert list(choices) == list(DIGITS)
        self.calls += 1
        self.seen += conversations
        probs = np.array([KNOWN[_dimension_of(c)][0] for c in conversations], dtype=float)
        mass = np.full(len(conversations), self.mass)
        for i, c in enumerate(conversations):
            if _dimension_of(c) == self.nan_for:
                probs[i], mass[i] = np.nan, 0.0
        return ChoiceProbs(probs, mass)


def test_expected_value_math_and_stats():
    judge = ScriptedProbsJudge()
    pairs = [("What do you think of rain?", "I love it."), ("And markets?", "They go up.")]
    scores, details, stats = judge_probs(judge, pairs)
    assert judge.calls == 1 and len(judge.seen) == 2 * len(DIMENSIONS)  # one batched call for every question
    for sc, det in zip(scores, details):
        for d, (p, ev) in KNOWN.items():
            assert sc[d] == pytest.approx(ev)
            assert det[d]["probs"] == pytest.approx(p) and det[d]["mass"] == pytest.approx(0.8)
        assert det["skepticism"]["argmax"] == 1 and det["assertiveness"]["argmax"] == 5
    assert stats["calls"] == 10 and stats["failed"] == 0
    assert stats["mean_digit_mass"] == pytest.approx(0.8) and stats["min_digit_mass"] == pytest.approx(0.8)
    assert stats["argmax_counts"]["valence"] == [0, 0, 2, 0, 0]  # a tie goes to the lower digit
    # each question carries the response, the dimension and its 1..5 anchors, and asks for one digit
    q = judge.seen[3]
    assert "I love it." in q[-1]["content"] and JUDGE_ANCHORS["abstraction"] in q[-1]["content"]
    assert "one digit" in q[-1]["content"]


def test_unreadable_digits_are_nan_and_counted():
    scores, details, stats = judge_probs(ScriptedProbsJudge(nan_for="valence"), [("p", "r")] * 3)
    assert all(math.isnan(s["valence"]) for s in scores)
    assert all(s["skepticism"] == 1.0 for s in scores)
    assert stats["failed"] == 3 and details[0]["valence"]["argmax"] is None
    assert stats["mean_digit_mass"] == pytest.approx(0.8 * 4 / 5)


@pytest.fixture(scope="module")
def store():
    sim = Simulation(SimulationConfig(agents=4, days=1, ticks_per_day=2, episodic_every=2, seed=3), ScriptedBackend())
    sim.run()
    return sim.store


def _talker(conv, opts):
    name = conv[0]["content"].split()[2]
    return f"{name} says: " + "quite " * (len(name) % 4) + "sure."


def test_evaluate_personality_probs_mode_and_judge_only_rerun(store, tmp_path):
    class JsonJudge:
        name = "json-judge"

        def generate(self, convs, **opts):
            return [json.dumps({d: 2 for d in DIMENSIONS})] * len(convs)

    prompts = load_prompts(per_category=1)
    kw = dict(n_agents=3, prompts=prompts, embedder=None, n_boot=20, log=None, cache_dir=tmp_path)
    first = evaluate_personality({"base": ScriptedBackend(_talker)}, store, judge=JsonJudge(), **kw)
    assert first["settings"]["judge_mode"] == "json"
    assert first["models"]["base"]["judge_stats"]["mode"] == "json"
    # only the judge changes: the cached responses are reused (this backend would raise if asked to generate)
    judge = ScriptedProbsJudge(mass=0.5)
    result = evaluate_personality({"base": ScriptedBackend(fail_on_call=1)}, store, judge=judge,
                                  judge_mode="probs", **kw)
    entry = result["models"]["base"]
    assert entry["responses"] == first["models"]["base"]["responses"]
    assert result["settings"]["judge_mode"] == "probs" and result["settings"]["judge"] == "scripted-probs"
    assert np.asarray(entry["judge"]["valence"]) == pytest.approx(np.full((3, 5), 3.5))
    assert np.asarray(entry["judge_argmax"]["assertiveness"]).tolist() == [[5] * 5] * 3
    assert np.asarray(entry["judge_probs"]["verbosity"]).shape == (3, 5, 5)
    assert entry["judge_stats"]["mode"] == "probs" and entry["judge_stats"]["mean_digit_mass"] == pytest.approx(0.5)
    assert entry["stats"]["judge"]["valence"]["cross"] == 0  # a constant judge has no spread
    saved = json.loads((tmp_path / "model-base.json").read_text())
    assert saved["fingerprint"]["judge_mode"] == "probs"
    # the same settings again: everything comes from the cache, the judge is not called
    again = evaluate_personality({"base": None}, store, judge=judge, judge_mode="probs", **kw)
    assert judge.calls == 1 and again["models"]["base"]["judge"] == entry["judge"]
    md = personality_markdown(result)
    assert "judge_mode=probs" in md and "mean digit mass 0.500" in md and "Mean digit mass" in md


def test_probs_mode_needs_choice_probs_and_says_use_json(store):
    class GenerateOnly:
        name = "generate-only"

        def generate(self, convs, **opts):
            return ["{}"] * len(convs)

    never = ScriptedBackend(fail_on_call=1)  # the error must come before any generation
    with pytest.raises(TypeError, match="judge_mode='json'") as err:
        evaluate_personality({"base": never}, store, n_agents=2, judge=GenerateOnly(), judge_mode="probs",
                             embedder=None, log=None)
    assert "generate-only" in str(err.value) and "choice_probs" in str(err.value)
    with pytest.raises(TypeError, match="judge_mode='json'"):
        judge_probs(GenerateOnly(), [("p", "r")])
    with pytest.raises(ValueError, match="judge_mode must be one of"):
        evaluate_personality({"base": never}, store, n_agents=2, judge=GenerateOnly(), judge_mode="logits",
                             embedder=None, log=None)


def test_transformers_path_on_tiny_model():
    import torch

    from weakstrong.models import tiny_model

    torch.set_num_threads(1)
    model, tok = tiny_model("llama")
    judge = TransformersBackend(model, tok, batch_size=3)
    assert isinstance(judge, ChoiceScorer)
    pairs = [("Is coffee good?", "Yes " * k + "it is.") for k in range(1, 5)]
    scores, details, stats = judge_probs(judge, pairs)
    for sc, det in zip(scores, details):
        for d in DIMENSIONS:
            assert np.isfinite(sc[d]) and 1 <= sc[d] <= 5
            assert sum(det[d]["probs"]) == pytest.approx(1, abs=1e-6)
            assert 0 < det[d]["mass"] <= 1 and det[d]["argmax"] in (1, 2, 3, 4, 5)
    assert stats["failed"] == 0 and stats["calls"] == 4 * len(DIMENSIONS)
    # left padding: batching does not change the numbers
    convs = [[{"role": "user", "content": "x " * k}] for k in range(1, 6)]
    batched = judge.choice_probs(convs, list(DIGITS))
    one = TransformersBackend(model, tok, batch_size=1).choice_probs(convs, list(DIGITS))
    assert batched.probs == pytest.approx(one.probs, abs=1e-5) and batched.mass == pytest.approx(one.mass, rel=1e-4)
    model.train()
    judge.choice_probs(convs[:1], list(DIGITS))
    assert model.training  # the train/eval mode is restored
    with pytest.raises(ValueError, match="not a single token"):
        judge.choice_probs(convs[:1], ["12345678 not one token"])


def _client(server, tmp_path):
    return OpenAICompatibleBackend(server.base_url, "judge-model", cache_dir=tmp_path / "cache", max_retries=0)


def test_openai_path_reads_top_logprobs(logprob_server, tmp_path):
    client = _client(logprob_server, tmp_path)
    conv = [[{"role": "user", "content": "Rate it."}]]
    probs, mass = client.choice_probs(conv, list(DIGITS))
    assert probs[0] == pytest.approx([0, 0, 0.625, 0.375, 0]) and mass[0] == pytest.approx(0.8)
    body = logprob_server.requests[0]["body"]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["temperature"] == 0 and body["model"] == "judge-model"
    client.choice_probs(conv, list(DIGITS))  # cached: no new request
    assert len(logprob_server.requests) == 1 and client.stats["cache_hits"] == 1
    # spellings with a space add up; a reply with no digit in the top list is NaN with mass 0
    logprob_server.top = lambda body: ({"2": 0.3, " 2": 0.1, "5": 0.1, "x": 0.5} if body["messages"][-1]["content"] == "A"
                                       else {"Sure": 0.9, "x": 0.1})
    probs, mass = client.choice_probs([[{"role": "user", "content": "A"}], [{"role": "user", "content": "B"}]],
                                      list(DIGITS))
    assert probs[0] == pytest.approx([0, 0.8, 0, 0, 0.2]) and mass[0] == pytest.approx(0.5)
    assert np.isnan(probs[1]).all() and mass[1] == 0
    scores, _, stats = judge_probs(client, [("p", "r")])
    assert stats["failed"] == len(DIMENSIONS) and all(math.isnan(v) for v in scores[0].values())


def test_openai_server_without_logprobs_says_use_json(logprob_server, tmp_path):
    logprob_server.omit_logprobs = True
    with pytest.raises(ChatBackendError, match="judge_mode='json'"):
        _client(logprob_server, tmp_path).choice_probs([[{"role": "user", "content": "q"}]], list(DIGITS))
