"""export_pairs on a hand-built store: filters, oversampling, splits and memory variants, counted exactly."""

import pytest

from weakstrong.agentsim import ConfigError, SimulationConfig, SQLiteStore, export_pairs, make_agents

# (id, agent, tick, day, engagement)
POSTS = [(1, 1, 0, 0, 0), (2, 1, 1, 0, 1), (3, 2, 1, 0, 5), (4, 3, 2, 1, 3), (5, 4, 3, 1, 7)]
# (id, post, agent, tick, day, engagement)
COMMENTS = [(1, 3, 1, 2, 1, 1), (2, 2, 3, 2, 1, 2), (3, 5, 2, 3, 1, 0), (4, 4, 4, 3, 1, 6)]


@pytest.fixture()
def store():
    s = SQLiteStore(":memory:")
    cfg = SimulationConfig(agents=4, days=2, ticks_per_day=2, archetypes=["Poet", "Doomer"])
    with s.transaction():
        s.set_meta("config", cfg.to_dict())
        s.insert_agents(make_agents(4, ["Poet", "Doomer"]))
        for pid, agent, tick, day, eng in POSTS:
            s.execute("INSERT INTO posts(id, agent_id, tick, day, content, context, system_prompt, engagement) "
                      "VALUES (?, ?, ?, ?, ?, ?, '', ?)", (pid, agent, tick, day, f"post {pid}", f"ctx-p{pid}", eng))
        for cid, post, agent, tick, day, eng in COMMENTS:
            s.execute("INSERT INTO comments(id, post_id, agent_id, tick, day, content, context, system_prompt, "
                      "engagement) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?)",
                      (cid, post, agent, tick, day, f"comment {cid}", f"ctx-c{cid}", eng))
        for kind, tick, text in (("episodic", 0, "MEM-A1-v1"), ("semantic", 1, "SEM-A1-v1")):
            s.execute("INSERT INTO memory_versions(agent_id, kind, version, posts_count, tick, day, content, "
                      "input_chars, output_chars, budget, budget_unit, truncated) VALUES (1, ?, 1, 1, ?, 0, ?, 10, 9, "
                      "1500, 'chars', 0)", (kind, tick, text))
        for tick in range(4):
            s.execute("INSERT INTO ticks VALUES (?, ?, ?, 0, 0, 0, 0, 0, 0, 0, 0)", (tick, tick // 2, tick % 2))
    return s


def test_time_split_filters_and_oversampling_counted_exactly(store, capsys):
    dd = export_pairs(store, split="time", held_out_days=1)
    c = dd.counts
    assert (c["posts"], c["comments"]) == (5, 4)
    assert c["dropped_low_engagement_posts"] == 1          # post 1
    assert c["dropped_low_engagement_comments"] == 1       # comment 3
    assert c["dropped_comment_low_parent"] == 1            # comment 2 (parent engagement 1 < 3)
    assert (c["train_items"], c["test_items"]) == (2, 4)   # day 0: posts 2, 3 | day 1: posts 4, 5, comments 1, 4
    assert c["oversampled_items"] == 1                     # post 3 (engagement 5), train only
    assert c["train_pairs"] == (1 + 3) * 3 and c["test_pairs"] == 4 * 3
    assert len(dd["train"]) == 12 and len(dd["test"]) == 12
    assert sorted(set(dd["train"]["item_id"])) == [2, 3]
    assert sum(1 for r in dd["train"] if r["item_id"] == 3) == 9
    assert "export counts: posts=5" in capsys.readouterr().out
    assert sum(v["train"] for v in c["per_archetype"].values() if "train" in v) == 12


def test_messages_and_memory_variants_use_memory_at_the_time(store):
    dd = export_pairs(store, split="time", held_out_days=1, verbose=False)
    rows = {(r["kind"], r["item_id"], r["variant"]): r["messages"] for r in list(dd["train"]) + list(dd["test"])}
    full = rows[("post", 2, "full")]
    assert [m["role"] for m in full] == ["system", "user", "assistant"]
    assert full[1]["content"] == "ctx-p2" and full[2]["content"] == "post 2"
    # post 2 (tick 1) sees the narrative written at tick 0, not the self-model written at tick 1
    assert "MEM-A1-v1" in full[0]["content"] and "SEM-A1-v1" not in full[0]["content"]
    c1 = {v: rows[("comment", 1, v)][0]["content"] for v in ("full", "reflection", "none")}
    assert "MEM-A1-v1" in c1["full"] and "SEM-A1-v1" in c1["full"]
    assert "MEM-A1-v1" in c1["reflection"] and "SEM-A1-v1" not in c1["reflection"]
    assert "MEM-A1-v1" not in c1["none"] and c1["none"].startswith("You are @poet_000")


def test_agent_split_is_stratified_and_disjoint(store):
    dd = export_pairs(store, split="agent", held_out_fraction=0.5, verbose=False, variants=["full"])
    train_agents, test_agents = set(dd["train"]["agent_id"]), set(dd["test"]["agent_id"])
    assert not train_agents & test_agents
    agents = {a["id"]: a["archetype"] for a in store.agents()}
    # one of the two agents of each archetype is held out (those with kept items show up in test)
    assert len({agents[a] for a in test_agents}) == len(test_agents)
    kept = {("post", 2), ("post", 3), ("post", 4), ("post", 5), ("comment", 1), ("comment", 4)}
    seen = {(r["kind"], r["item_id"]) for r in list(dd["train"]) + list(dd["test"])}
    assert seen == kept
    assert all(r["engagement"] >= 5 for r in dd["train"] if sum(
        1 for q in dd["train"] if (q["kind"], q["item_id"]) == (r["kind"], r["item_id"])) == 3)
    assert dd.counts["test_pairs"] == dd.counts["test_items"]  # never oversampled


def test_archetype_cap_and_options(store):
    dd = export_pairs(store, split="agent", held_out_fraction=0.0, max_per_archetype=1, variants="full", verbose=False)
    assert dd.counts["dropped_archetype_cap"] == 4
    assert sorted(dd["train"]["item_id"]) == [4, 5, 5, 5]  # highest engagement per archetype; post 5 ×3
    dd = export_pairs(store, split="time", include_comments=False, oversample_factor=1, min_engagement=0,
                      variants=["none"], verbose=False)
    assert dd.counts["dropped_comments_excluded"] == 4 and dd.counts["train_pairs"] == 3  # posts 1, 2, 3


@pytest.mark.parametrize("bad, match", [
    (dict(split="random"), "split must be 'agent'"),
    (dict(variants=["everything"]), "variants must be"),
    (dict(oversample_factor=0), "oversample_factor must be >= 1"),
    (dict(held_out_days=2, split="time"), "lower held_out_days"),
    (dict(colour="red"), r"export: unknown key 'colour'"),
])
def test_bad_export_settings(store, bad, match):
    with pytest.raises(ConfigError, match=match):
        export_pairs(store, verbose=False, **bad)


def test_empty_store_names_the_fix():
    with pytest.raises(ConfigError, match="run Simulation"):
        export_pairs(SQLiteStore(":memory:"), verbose=False)


def test_saved_pairs_reload_even_with_an_empty_held_out_split(tmp_path):
    from datasets import load_from_disk

    from weakstrong.agentsim import ScriptedBackend, Simulation
    from weakstrong.agentsim.cli import run_export

    recipe = {"run_dir": str(tmp_path), "export": {"split": "agent", "held_out_fraction": 0.0, "min_engagement": 0}}
    Simulation(SimulationConfig(agents=3, days=1, ticks_per_day=2, seed=1), ScriptedBackend(), tmp_path / "sim.db").run()
    dd = run_export(recipe)
    assert len(dd["test"]) == 0 and len(dd["train"]) > 0
    assert len(load_from_disk(str(tmp_path / "pairs"))["train"]) == len(dd["train"])


def _agents(spec):  # [(archetype, n), ...] -> agent dicts with ids
    out, i = [], 0
    for arch, n in spec:
        for k in range(n):
            i += 1
            out.append({"id": i, "archetype": arch, "username": f"{arch.lower()}_{k:03d}"})
    return out


@pytest.mark.parametrize("fraction, expected", [
    (0.1, {"A": 1, "B": 1, "C": 0, "D": 1}),   # every archetype that can spare an agent holds one out
    (0.5, {"A": 2, "B": 1, "C": 0, "D": 6}),   # round(0.5·n), at most n - 1, never the only agent of an archetype
])
def test_held_out_agents_are_stratified_by_archetype(fraction, expected):
    from weakstrong.agentsim.export import held_out_agents

    agents = _agents([("A", 5), ("B", 2), ("C", 1), ("D", 13)])
    held, summary = held_out_agents(agents, fraction, seed=0)
    arch = {a["id"]: a["archetype"] for a in agents}
    got = {k: sum(1 for i in held if arch[i] == k) for k in "ABCD"}
    assert got == expected
    assert {k: v["held_out"] for k, v in summary["per_archetype"].items()} == expected
    assert summary["rule"].startswith("per archetype") and len(summary["held_out"]) == len(held)
    assert held == held_out_agents(agents, fraction, seed=0)[0] != held_out_agents(agents, fraction, seed=1)[0]


def test_held_out_falls_back_to_agents_overall_and_says_so():
    from weakstrong.agentsim.export import held_out_agents

    agents = _agents([(f"X{i}", 1) for i in range(12)])  # 12 agents, 12 archetypes (like small.yaml)
    held, summary = held_out_agents(agents, 0.1, seed=0)
    assert len(held) == 1 and "unseen in training" in summary["rule"]
    assert held_out_agents(agents, 0.0, seed=0)[0] == set()


def test_export_summary_states_the_split(store, capsys):
    dd = export_pairs(store, split="agent", held_out_fraction=0.1, variants=["full"])
    split = dd.counts["split"]
    assert split["kind"] == "agent" and len(split["held_out"]) == 2  # one of the two agents of each archetype
    assert "held-out split (agent): per archetype" in capsys.readouterr().out
    dd = export_pairs(store, split="time", held_out_days=1, verbose=False)
    assert dd.counts["split"]["rule"].startswith("days 2..2 held out")  # the last of 2 days, numbered from 1
