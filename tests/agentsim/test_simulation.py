"""Simulation loop, store, resume after crashes, memory budget, belief events — scripted or tiny backends."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from weakstrong.agentsim import ConfigError, ScriptedBackend, Simulation, SimulationConfig, SQLiteStore, StoreError
from weakstrong.agentsim.backends import default_script
from weakstrong.agentsim.store import RESULT_TABLES

SMALL = dict(agents=8, days=2, ticks_per_day=4, episodic_every=2, semantic_every=4, memory_budget=240,
             feed_size=3, seed=3)


def dump(store):
    return {t: store.table(t) for t in RESULT_TABLES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.db"
    sim = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), path)
    counts = sim.run()
    return dump(sim.store), counts


def test_uninterrupted_run_is_complete_and_deterministic(reference, tmp_path):
    tables, counts = reference
    assert counts["ticks"] == 8 and counts["agents"] == 8
    assert counts["posts"] > 0 and counts["comments"] > 0 and counts["reactions"] > 0 and counts["follows"] > 0
    assert counts["memory_versions"] > 0
    again = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), tmp_path / "again.db")
    again.run()
    assert dump(again.store) == tables


def test_engagement_equals_reactions_plus_comments(reference):
    tables, _ = reference
    posts = {r[0]: r for r in tables["posts"]}
    n_comments = {}
    for c in tables["comments"]:
        n_comments[c[1]] = n_comments.get(c[1], 0) + 1
    n_react = {}
    for r in tables["reactions"]:
        if r[2] == "post":
            n_react[r[3]] = n_react.get(r[3], 0) + 1
    for pid, row in posts.items():
        assert row[-1] == n_react.get(pid, 0) + n_comments.get(pid, 0)


@pytest.mark.parametrize("fail_on_call", [1, 5, 9])
def test_resume_after_exception_mid_tick_equals_uninterrupted(reference, tmp_path, fail_on_call):
    path = tmp_path / "crash.db"
    sim = Simulation(SimulationConfig(**SMALL), ScriptedBackend(fail_on_call=fail_on_call), path)
    with pytest.raises(RuntimeError, match="scripted failure"):
        sim.run()
    done = sim.ticks_done
    assert done < 8
    sim.store.close()
    resumed = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), path)
    assert resumed.ticks_done == done
    resumed.run()
    assert dump(resumed.store) == reference[0]


def test_resume_after_hard_kill_mid_tick(reference, tmp_path):
    """The process dies (os._exit, no cleanup) inside a tick whose posts are already inserted."""
    path = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os
        from weakstrong.agentsim import ScriptedBackend, Simulation, SimulationConfig
        from weakstrong.agentsim.backends import default_script
        calls = []
        def fn(conv, opts):
            if "Rewrite your memory" in conv[-1]["content"] and len(calls) == 0:
                calls.append(1)
            elif "Rewrite your memory" in conv[-1]["content"]:
                os._exit(17)   # second memory batch: posts of this tick are already written, uncommitted
            return default_script(conv, opts)
        Simulation(SimulationConfig(**{SMALL!r}), ScriptedBackend(fn), {str(path)!r}).run()
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    store = SQLiteStore(path)
    partial = store.last_completed_tick()
    assert 0 <= partial < 7
    # nothing from the killed tick is visible
    assert store.scalar("SELECT COUNT(*) FROM posts WHERE tick > ?", (partial,)) == 0
    resumed = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), store)
    resumed.run()
    assert dump(resumed.store) == reference[0]


def test_run_can_be_extended_and_bounded(tmp_path):
    cfg = SimulationConfig(**{**SMALL, "days": 1})
    sim = Simulation(cfg, ScriptedBackend(), tmp_path / "x.db")
    sim.run(max_ticks=2)
    assert sim.ticks_done == 2
    sim.run()
    assert sim.ticks_done == 4
    sim.run(days=2)
    assert sim.ticks_done == 8
    with pytest.raises(StoreError, match="not the next tick"):
        sim.step(3)


def test_memory_budget_never_exceeded_chars(tmp_path):
    def long_memory(conv, opts):  # always far over budget
        if "Rewrite your memory" in conv[-1]["content"]:
            return "I remember everything in great detail. " * 200
        if conv[-1]["content"].startswith(("What", "Which", "How", "List")):
            return "A very long answer that goes on and on. " * 50
        return default_script(conv, opts)

    cfg = SimulationConfig(**{**SMALL, "memory_budget": 200, "episodic_every": 1, "semantic_every": 2})
    sim = Simulation(cfg, ScriptedBackend(long_memory), tmp_path / "m.db")
    sim.run()
    versions = sim.store.rows("SELECT * FROM memory_versions")
    assert len(versions) > 10
    assert all(v["output_chars"] <= 200 and len(v["content"]) <= 200 for v in versions)
    assert all(v["truncated"] == 1 for v in versions if v["kind"] == "episodic")
    assert all(len(a["episodic_memory"]) <= 200 and len(a["semantic_memory"]) <= 200 for a in sim.store.agents())
    ratios = [v["compression_ratio"] for v in versions if v["kind"] == "episodic"]
    assert all(r and r > 0 for r in ratios)
    v = versions[0]
    assert v["compression_ratio"] == pytest.approx(v["input_chars"] / v["output_chars"])


def test_memory_budget_in_tokens_with_tiny_model(tmp_path):
    from weakstrong.agentsim import TransformersBackend
    from weakstrong.models import tiny_model

    model, tok = tiny_model("llama")
    backend = TransformersBackend(model, tok, batch_size=16)
    cfg = SimulationConfig(agents=4, days=1, ticks_per_day=2, episodic_every=1, semantic_every=1, memory_budget=12,
                           memory_budget_unit="tokens", post_max_new_tokens=6, comment_max_new_tokens=6,
                           memory_max_new_tokens=30, action_weights={"post": 1.0}, seed=1)
    sim = Simulation(cfg, backend, tmp_path / "tok.db")
    sim.run()
    versions = sim.store.rows("SELECT * FROM memory_versions")
    assert versions and all(v["budget_unit"] == "tokens" for v in versions)
    assert all(len(tok(v["content"], add_special_tokens=False)["input_ids"]) <= 12 for v in versions)
    assert sim.store.counts()["posts"] > 0


def test_token_budget_without_tokenizer_names_the_fix():
    cfg = SimulationConfig(agents=2, days=1, ticks_per_day=1, memory_budget=50, memory_budget_unit="tokens")
    with pytest.raises(ValueError, match="memory_budget_unit='chars'"):
        Simulation(cfg, ScriptedBackend())


def test_belief_events_on_scripted_change():
    state = {"semantic_rounds": 0}

    def fn(conv, opts):
        user = conv[-1]["content"]
        if "non-negotiable beliefs" in user:
            state["semantic_rounds"] += 1
            if conv[0]["content"].startswith("You are @policy_wonk_000"):
                first = state.get("first_round_done", False)
                return ("- Truth matters more than comfort.\n- Markets need rules.\n" if not first else
                        "1. Truth matters more than comfort!\n2) Everyone deserves free healthcare.\n")
            return "- Kindness is strength.\n- Work hard every day."
        if "Rewrite your memory" in user:
            return "I keep posting about what I believe."
        return default_script(conv, opts)

    cfg = SimulationConfig(agents=3, days=1, ticks_per_day=12, episodic_every=1, semantic_every=1, seed=5,
                           action_weights={"post": 1.0}, archetypes=["Policy Wonk", "Scientist", "Engineer"])
    sim = Simulation(cfg, ScriptedBackend(fn))
    while not sim.store.rows("SELECT 1 FROM memory_versions m JOIN agents a ON a.id = m.agent_id "
                             "WHERE m.kind = 'semantic' AND a.username = 'policy_wonk_000'"):
        assert sim.ticks_done < 6, "the wonk must have a first self-model early"
        sim.step(sim.ticks_done)
    state["first_round_done"] = True
    sim.run()
    events = sim.store.rows("SELECT a.username, e.kind, e.belief, e.from_version, e.to_version FROM belief_events e "
                            "JOIN agents a ON a.id = e.agent_id ORDER BY e.id")
    # only the wonk changed: "Markets need rules" dropped, "Everyone deserves free healthcare" added, once
    assert [(e["username"], e["kind"], e["belief"]) for e in events] == [
        ("policy_wonk_000", "dropped", "Markets need rules"),
        ("policy_wonk_000", "added", "Everyone deserves free healthcare")]
    assert events[0]["to_version"] == events[0]["from_version"] + 1
    phil = next(a for a in sim.store.agents() if a["username"] == "policy_wonk_000")
    assert phil["beliefs"] == ["Truth matters more than comfort!", "Everyone deserves free healthcare"]


def test_resume_with_different_config_is_refused(tmp_path):
    path = tmp_path / "r.db"
    Simulation(SimulationConfig(**SMALL), ScriptedBackend(), path).run(max_ticks=1)
    with pytest.raises(StoreError, match=r"different settings \['agents', 'seed'\].*new database path"):
        Simulation(SimulationConfig(**{**SMALL, "agents": 9, "seed": 4}), ScriptedBackend(), path)
    # days may grow
    Simulation(SimulationConfig(**{**SMALL, "days": 5}), ScriptedBackend(), path)


@pytest.mark.parametrize("bad, match", [
    (dict(agents=0), "agents must be a positive integer"),
    (dict(memory_budget_unit="words"), "memory_budget_unit must be one of"),
    (dict(action_weights={"post": 1, "dance": 1}), "unknown actions"),
    (dict(archetypes=["Philosopher", "Wizard"]), "unknown archetypes"),
    (dict(feed_weights={"recency": -1}), "feed_weights.recency"),
])
def test_bad_config_errors_name_the_fix(bad, match):
    with pytest.raises(ConfigError, match=match):
        cfg = SimulationConfig(**{**SMALL, **bad})
        Simulation(cfg, ScriptedBackend())


def test_unknown_setting_in_dict():
    with pytest.raises(ConfigError, match=r"unknown key .agentz."):
        SimulationConfig.from_dict({"agentz": 3})


def test_archetype_seeds_cover_35_and_posts_cap(tmp_path):
    from weakstrong.agentsim import load_archetypes, make_agents

    data = load_archetypes()
    assert len(data["archetypes"]) == 35
    agents = make_agents(40)
    assert len({a["archetype"] for a in agents}) == 35
    assert all(0 <= v <= 1 for a in agents for v in a["big5"].values())
    cfg = SimulationConfig(agents=3, days=1, ticks_per_day=8, posts_per_day_cap=2, action_weights={"post": 1.0},
                           activity=1.0, archetypes=["Policy Wonk", "Engineer", "Minimalist"])  # steady/steady/early
    sim = Simulation(cfg, ScriptedBackend())
    sim.run()
    per_agent = sim.store.rows("SELECT agent_id, COUNT(*) AS n FROM posts GROUP BY agent_id")
    assert per_agent and all(r["n"] <= 2 for r in per_agent)


def test_store_is_wal_and_rejects_garbage(tmp_path):
    store = SQLiteStore(tmp_path / "w.db")
    assert store.scalar("PRAGMA journal_mode") == "wal"
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="pass a new path"):
        SQLiteStore(bad)
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "nope" / "x.db")
    assert json.loads(json.dumps(store.get_meta("schema_version"))) == 1


def test_feed_ranking_equals_the_plain_formula():
    """The numpy-preselected ranking equals sorting the whole pool by the documented score (ties: newest first)."""
    import math

    import numpy as np

    rng = np.random.default_rng(0)
    cfg = SimulationConfig(agents=2, days=1, ticks_per_day=1, feed_size=4, seed=0)
    sim = Simulation(cfg, ScriptedBackend())
    w, tick = cfg.feed_weights, 50
    for trial in range(40):
        n = int(rng.integers(1, 120))
        cands = [{"id": i + 1, "agent_id": int(rng.integers(1, 8)), "tick": int(rng.integers(34, 50)),
                  "engagement": int(rng.integers(0, 4)) * int(rng.integers(0, 2)), "content": "", "username": ""}
                 for i in range(n)]
        agent, followed = {"id": int(rng.integers(1, 8))}, set(int(x) for x in rng.integers(1, 8, size=2))
        pool = [c for c in cands if c["agent_id"] != agent["id"]]
        max_e = max((c["engagement"] for c in pool), default=0)
        norm = math.log1p(max_e) if max_e > 0 else 1.0
        expected = sorted(pool, key=lambda c: (-round(w.recency * 0.5 ** ((tick - c["tick"]) / w.half_life_ticks)
                                                      + w.engagement * math.log1p(c["engagement"]) / norm
                                                      + w.follow * (c["agent_id"] in followed), 12), -c["id"]))[:4]
        assert sim._rank_feed(agent, cands, followed, tick) == expected, trial
