"""Divergence metrics on hand-made score tables and embeddings; judge parsing; lexical measures."""

import math

import numpy as np
import pytest

from weakstrong.agentsim.evaluation import load_prompts, parse_judge
from weakstrong.agentsim.metrics import (compare_embeddings, compare_tables, cross_agent_std, embedding_divergence,
                                         lexical_scores, ratios, table_stats, verbosity_band, within_agent_std)

TABLE = [[1, 1, 1, 1],
         [2, 4, 2, 4],
         [5, 5, 5, 5]]


def test_cross_and_within_std_by_hand():
    assert cross_agent_std(TABLE) == pytest.approx(math.sqrt(8 / 3))  # std of means 1, 3, 5
    assert within_agent_std(TABLE) == pytest.approx(1 / 3)             # (0 + 1 + 0) / 3


def test_nan_cells_are_ignored():
    t = [[1, np.nan, 1], [3, 3, np.nan], [np.nan, np.nan, np.nan]]
    assert cross_agent_std(t) == pytest.approx(1.0)  # means 1 and 3; the all-missing agent is skipped
    assert within_agent_std(t) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2-D"):
        cross_agent_std([1, 2, 3])


def test_ratios_both_ways():
    tuned = {"a": [[0, 0], [4, 4]], "b": [[0, 0], [2, 2]]}   # cross 2, 1
    base = {"a": [[0, 0], [2, 2]], "b": [[0, 0], [0.5, 0.5]]}  # cross 1, 0.25
    r = ratios(table_stats(tuned), table_stats(base))
    assert r["per_dimension"] == {"a": pytest.approx(2.0), "b": pytest.approx(4.0)}
    assert r["ratio_of_averages"] == pytest.approx(1.5 / 0.625)  # 2.4
    assert r["mean_of_ratios"] == pytest.approx(3.0)


def test_bootstrap_ci_exact_when_every_resample_agrees():
    rng = np.random.default_rng(0)
    base = {d: rng.normal(size=(10, 6)) for d in ("x", "y")}
    tuned = {d: 3 * t for d, t in base.items()}  # every statistic scales by 3 on any resample
    c = compare_tables(tuned, base, n_boot=200, seed=1)
    assert c["cross"]["ratio_of_averages"] == pytest.approx(3.0)
    assert c["cross"]["mean_of_ratios"] == pytest.approx(3.0)
    for key in ("cross_ratio_of_averages", "cross_mean_of_ratios", "within_ratio_of_averages"):
        assert c["ci95"][key] == [pytest.approx(3.0), pytest.approx(3.0)]
    assert c["paired"] is True


def test_bootstrap_ci_brackets_the_point_and_excludes_one_when_clear():
    rng = np.random.default_rng(2)
    agent_means_b = rng.normal(0, 0.2, size=(12, 1))
    agent_means_t = rng.normal(0, 1.0, size=(12, 1))
    base = {"d": agent_means_b + rng.normal(0, 0.5, size=(12, 20))}
    tuned = {"d": agent_means_t + rng.normal(0, 0.5, size=(12, 20))}
    c = compare_tables(tuned, base, n_boot=300, seed=0)
    lo, hi = c["ci95"]["cross_ratio_of_averages"]
    assert lo <= c["cross"]["ratio_of_averages"] <= hi
    assert lo > 1
    same = compare_tables(base, base, n_boot=100)
    assert same["ci95"]["cross_ratio_of_averages"] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_embedding_divergence_by_hand():
    prompts = np.eye(4)[:3]  # 3 prompts, dim 4
    offsets = np.array([[0, 0, 0, 1.0], [0, 0, 0, -1.0]])
    e = prompts[None, :, :] + offsets[:, None, :]
    d = embedding_divergence(e)
    assert d["cross"] == pytest.approx(1.0)   # residual centroids ±(0,0,0,1)
    assert d["within"] == pytest.approx(0.0)
    assert embedding_divergence(np.repeat(prompts[None], 3, axis=0))["cross"] == pytest.approx(0.0)
    c = compare_embeddings(e * 1.0 + 0, np.concatenate([prompts[None] + offsets[:, None] / 4]), n_boot=50)
    assert c["ratio"]["cross"] == pytest.approx(4.0)
    assert c["ci95"]["cross"] == [pytest.approx(4.0), pytest.approx(4.0)]
    with pytest.raises(ValueError, match="agents >= 2"):
        embedding_divergence(e[:1])


def test_lexical_measures():
    s = lexical_scores("I definitely love coffee and freedom, maybe.")
    assert s["verbosity"] == 7
    assert s["valence"] == pytest.approx(100 / 7)            # love
    assert s["abstraction"] == pytest.approx(0.0)            # freedom (abstract) - coffee (concrete)
    assert s["skepticism"] == pytest.approx(100 / 7)         # maybe
    assert s["assertiveness"] == pytest.approx(0.0)          # definitely - maybe
    assert lexical_scores("")["verbosity"] == 0
    assert [verbosity_band(n) for n in (0, 29, 30, 80, 149, 150, 250, 900)] == [1, 1, 2, 3, 3, 4, 5, 5]


def test_parse_judge():
    good = 'Sure! {"skepticism": 4, "verbosity": 2, "valence": 9, "abstraction": 0, "assertiveness": 3.5} done'
    assert parse_judge(good) == {"skepticism": 4, "verbosity": 2, "valence": 5, "abstraction": 1, "assertiveness": 3.5}
    loose = "skepticism: 2\nverbosity: 1\nvalence = 3\nabstraction: 4\nassertiveness: 5"
    assert parse_judge(loose)["abstraction"] == 4
    assert parse_judge('{"skepticism": 4}') is None
    assert parse_judge("I cannot rate this.") is None
    assert parse_judge('{"skepticism": "high", "verbosity": 2, "valence": 3, "abstraction": 1, '
                       '"assertiveness": 3}') is None


def test_prompt_set():
    prompts = load_prompts()
    assert len(prompts) == 50 and len({p["prompt"] for p in prompts}) == 50
    assert {p["category"] for p in prompts} == {"technology", "hypothetical", "advice", "observation", "personal"}
    assert len(load_prompts(per_category=2)) == 10
    with pytest.raises(ValueError, match="per_category"):
        load_prompts(per_category=11)
