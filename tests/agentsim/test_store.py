"""The store interface on both backends (SQLite file, private PostgreSQL cluster): same tables, SIGKILL mid-tick
then resume, two writers at once, a dropped connection, a damaged SQLite file; seeds per request; bounded ticks."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from weakstrong.agentsim import (ScriptedBackend, Simulation, SimulationConfig, SQLiteStore, StoreConnectionError,
                                 StoreError, open_store)
from weakstrong.agentsim.backends import default_script, generate_seeded
from weakstrong.agentsim.store import RESULT_TABLES

SMALL = dict(agents=8, days=2, ticks_per_day=4, episodic_every=2, semantic_every=4, memory_budget=240,
             feed_size=3, seed=3)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
HISTORY_TABLES = ("posts", "comments", "reactions", "memory_versions", "belief_events")


def dump(store):
    return {t: store.table(t) for t in RESULT_TABLES}


@pytest.fixture(scope="module")
def reference():
    sim = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), None)  # SQLite in memory
    sim.run()
    return dump(sim.store)


def _child(body: str, url: str, *args) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import os, sys, time
        from weakstrong.agentsim import ScriptedBackend, Simulation, SimulationConfig, StoreError
        from weakstrong.agentsim.backends import default_script
        CFG = SimulationConfig(**{SMALL!r})
        URL = {url!r}
    """) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode} early: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "child never reached the marker"
        time.sleep(0.02)


def test_both_stores_write_identical_tables(store_url, reference):
    sim = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), store_url)
    counts = sim.run()
    assert counts["ticks"] == 8 and counts["posts"] > 0 and counts["belief_events"] >= 0
    assert dump(sim.store) == reference
    # a reader (export path) sees the same through open_store
    assert dump(open_store(store_url)) == reference


def test_sigkill_inside_the_write_transaction_then_resume(store_url, reference, tmp_path):
    """A real process is SIGKILLed while tick 4's rows are inserted but not committed."""
    marker = tmp_path / "in-transaction"
    proc = _child(f"""
        sim = Simulation(CFG, ScriptedBackend(), URL)
        insert = sim.store.insert
        def slow_insert(table, rows):
            insert(table, rows)
            if table == "ticks" and rows[0]["tick"] == 4:   # every other row of tick 4 is already inserted
                open({str(marker)!r}, "w").close()
                time.sleep(120)
        sim.store.insert = slow_insert
        sim.run()
    """, store_url)
    try:
        _wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
    store = open_store(store_url)
    assert store.last_completed_tick() == 3
    for table in HISTORY_TABLES + ("ticks",):  # nothing of the killed tick is visible
        assert store.scalar(f"SELECT COUNT(*) FROM {table} WHERE tick >= 4") == 0, table
    resumed = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), store)
    resumed.run()
    assert dump(resumed.store) == reference


def test_two_writers_at_once_one_is_refused_the_run_is_intact(store_url, reference, tmp_path):
    holding, release = tmp_path / "holding", tmp_path / "release"
    first = _child(f"""
        def fn(conv, opts):
            if os.path.exists({str(holding)!r}) is False and sim.ticks_done == 2:
                open({str(holding)!r}, "w").close()       # tick 2 is being generated, the lock is held
                while not os.path.exists({str(release)!r}):
                    time.sleep(0.02)
            return default_script(conv, opts)
        sim = Simulation(CFG, ScriptedBackend(fn), URL)
        sim.run()
    """, store_url)
    try:
        _wait_for(holding, first)
        second = _child("""
            try:
                Simulation(CFG, ScriptedBackend(), URL, lock_wait=0.5).run()
            except StoreError as err:
                print(err, file=sys.stderr)
                sys.exit(3)
        """, store_url)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 3, err
        assert "is being written by" in err and "rerun this command to resume" in err
        release.touch()
        _, err1 = first.communicate(timeout=60)
        assert first.returncode == 0, err1
    finally:
        release.touch()
        first.kill()
    assert dump(open_store(store_url)) == reference


def test_two_runs_in_one_postgres_database_at_once(pg_url, tmp_path, reference):
    """Two processes create and write two runs (two schemas of one database) at the same time."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    other = pg_url.replace("?schema=t_", "?schema=u_")
    child = _child(f"""
        sim = Simulation(CFG, ScriptedBackend(), URL)
        open({str(ready)!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        sim.run()
    """, other)
    try:
        mine = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), pg_url)
        _wait_for(ready, child)
        go.touch()
        mine.run()
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    finally:
        go.touch()
        child.kill()
    assert dump(mine.store) == reference and dump(open_store(other)) == reference


def _terminate_backend_of(sim, cluster):
    with cluster.admin() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (sim.store.conn.info.backend_pid,))


@pytest.mark.parametrize("where", ["generation", "write"])
def test_dropped_postgres_connection_mid_tick(pg_url, postgres_cluster, reference, where):
    state = {"sim": None}

    def fn(conv, opts):  # during tick 3's generation (no transaction open)
        sim = state["sim"]
        if where == "generation" and not state.get("done") and sim.ticks_done == 3:
            state["done"] = True
            _terminate_backend_of(sim, postgres_cluster)
        return default_script(conv, opts)

    sim = state["sim"] = Simulation(SimulationConfig(**SMALL), ScriptedBackend(fn), pg_url)
    if where == "write":  # inside tick 3's write transaction, after its posts are inserted
        insert = sim.store.insert

        def insert_then_drop(table, rows):
            insert(table, rows)
            if table == "posts" and rows[0]["tick"] == 3:
                _terminate_backend_of(sim, postgres_cluster)

        sim.store.insert = insert_then_drop
    with pytest.raises(StoreConnectionError, match=r"tick 4 of the run was not written \(ticks 1-3 kept\): lost the connection to PostgreSQL.*"
                                                   r"nothing of it is written.*Rerun"):
        sim.run()
    store = open_store(pg_url)
    assert store.last_completed_tick() == 2
    for table in HISTORY_TABLES:
        assert store.scalar(f"SELECT COUNT(*) FROM {table} WHERE tick >= 3") == 0, table
    resumed = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), store)
    resumed.run()
    assert dump(resumed.store) == reference


@pytest.mark.parametrize("page", ["root", "last"])
def test_damaged_sqlite_file_is_refused_on_open(tmp_path, page):
    path = tmp_path / "sim.db"
    sim = Simulation(SimulationConfig(**{**SMALL, "days": 4}), ScriptedBackend(), path)
    sim.run()
    size = sim.store.scalar("PRAGMA page_size")
    # the posts table's root page, or the file's last page (a leaf of whichever table grew last)
    number = (sim.store.scalar("SELECT rootpage FROM sqlite_master WHERE name = 'posts'") if page == "root"
              else sim.store.scalar("PRAGMA page_count"))
    sim.store.close()  # checkpoints the WAL into the file
    with open(path, "r+b") as f:  # the schema page (1) stays readable: the file still opens
        f.seek((number - 1) * size)
        f.write(bytes((i * 37 + 11) % 256 for i in range(size)))
    with pytest.raises(StoreError, match=r"is damaged: PRAGMA quick_check reports .*restore a backup or start a new"):
        SQLiteStore(path)
    if page != "root":
        return
    # the CLI step exits non-zero with the message instead of printing normal output
    (tmp_path / "r.yaml").write_text(f"run_dir: {tmp_path}\nstore: {path}\n")
    # (as the `weakstrong` console script runs it; `python -m weakstrong.cli` would load the module twice)
    proc = subprocess.run([sys.executable, "-c", "import sys; from weakstrong.cli import main; sys.exit(main())",
                           "agentsim", "telemetry", "--config", str(tmp_path / "r.yaml")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2  # a user error: the message alone, no traceback
    assert "is damaged" in proc.stderr and "Traceback" not in proc.stderr and "| day |" not in proc.stdout


def test_garbage_file_and_missing_folder(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        SQLiteStore(bad)
    with pytest.raises(StoreError, match="folder .* does not exist"):
        SQLiteStore(tmp_path / "nope" / "x.db")


def test_unreachable_postgres_names_the_url():
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at postgresql://u:\*\*\*@127.0.0.1:1/db"):
        open_store("postgresql://u:secret@127.0.0.1:1/db", connect_timeout=2)


# ---------------------------------------------------------------------------------------------- seeds, batching
def test_every_request_has_its_own_seed_and_one_call_per_phase():
    seen = []

    def fn(conv, opts):
        seen.append((repr(conv), opts["seed"]))
        return f"post number {opts['seed']}"  # the reply depends on the seed alone

    cfg = SimulationConfig(agents=4, days=1, ticks_per_day=4, actions_per_tick=3, action_weights={"post": 1.0},
                           feed_window_ticks=1, episodic_every=50, seed=7, archetypes=["Poet"])
    backend = ScriptedBackend(fn)
    sim = Simulation(cfg, backend)
    sim.run()
    seeds = [s for _, s in seen]
    assert len(set(seeds)) == len(seeds)  # no two requests of the run share a seed
    convs = [c for c, _ in seen]
    assert len(set(convs)) < len(convs)  # some requests are the very same conversation (same agent, tick, topic)...
    posts = [r[4] for r in sim.store.table("posts")]
    assert len(set(posts)) == len(posts)  # ...and still got different posts
    ticks_with_posts = sum(1 for t in sim.store.rows("SELECT posts FROM ticks") if t["posts"])
    assert backend.calls == ticks_with_posts  # posts only: one batched call per tick that has any
    assert backend.conversations == len(seen) > backend.calls


def test_generate_seeded_falls_back_to_concurrent_single_calls_when_told():
    import threading

    class OneSeedBackend:  # takes only one seed per call, and says so
        concurrency = 4
        per_conversation_seeds = False

        def __init__(self):
            self.calls, self.threads = [], set()

        def generate(self, conversations, seed=None, **_):
            self.calls.append((len(conversations), seed))
            self.threads.add(threading.current_thread().name)
            time.sleep(0.01)
            return [f"{conversations[0][0]['content']}:{seed}"]

    b = OneSeedBackend()
    convs = [[{"role": "user", "content": f"c{i}"}] for i in range(8)]
    out = generate_seeded(b, convs, list(range(100, 108)), temperature=0.5)
    assert out == [f"c{i}:{100 + i}" for i in range(8)]
    assert sorted(b.calls) == [(1, 100 + i) for i in range(8)] and len(b.threads) > 1
    with pytest.raises(ValueError, match="2 seeds for 8 conversations"):
        generate_seeded(b, convs, [1, 2])


# ---------------------------------------------------------------------------------------------- resume identity
def test_resume_with_another_backend_is_refused(tmp_path):
    from weakstrong.agentsim import OpenAICompatibleBackend

    path = tmp_path / "b.db"
    a = OpenAICompatibleBackend(["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"], "model-a", cache_dir=None)
    Simulation(SimulationConfig(**SMALL), a, path)
    same = OpenAICompatibleBackend(["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"], "model-a", concurrency=16,
                                   cache_dir=None)
    Simulation(SimulationConfig(**SMALL), same, path)  # concurrency, timeouts, cache: not part of the identity
    other = OpenAICompatibleBackend("http://127.0.0.1:11/v1", "model-b", cache_dir=None)
    with pytest.raises(StoreError, match=r"another backend: \['base_url', 'model'\] differ.*'model-a'.*'model-b'.*"
                                         r"start fresh with a new database.*allow_backend_change=True"):
        Simulation(SimulationConfig(**SMALL), other, path)
    with pytest.raises(StoreError, match=r"\['base_url', 'extra_body', 'model', 'type'\] differ"):
        Simulation(SimulationConfig(**SMALL), ScriptedBackend(), path)
    Simulation(SimulationConfig(**SMALL), other, path, allow_backend_change=True)  # explicit override, recorded
    Simulation(SimulationConfig(**SMALL), other, path)


# ---------------------------------------------------------------------------------------------- bounded ticks
def test_a_tick_reads_no_table_in_full(tmp_path):
    """After the state is loaded, every SELECT of a tick uses an index over the feed window / one agent: none scans
    a history table, so a tick's cost does not grow with the run's length."""
    sim = Simulation(SimulationConfig(**{**SMALL, "days": 3}), ScriptedBackend(), tmp_path / "q.db")
    sim.run(max_ticks=6)
    statements = []
    sim.store.conn.set_trace_callback(statements.append)
    with sim.store.writer_lock():
        for _ in range(6):
            sim.step(sim.ticks_done)
    sim.store.conn.set_trace_callback(None)
    selects = sorted({s for s in statements if s.lstrip().upper().startswith("SELECT")})
    assert len(selects) >= 5
    for sql in selects:
        plan = " | ".join(r[3] for r in sim.store.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
        for table in HISTORY_TABLES + ("follows", "agents"):
            assert f"SCAN {table}" not in plan, (sql, plan)
        if "FROM reactions" in sql:  # an index on the target type alone would read every reaction of that type
            assert "target_id>?" in plan, (sql, plan)


def test_recipe_steps_on_a_store_url(store_url, tmp_path, reference):
    """simulate → telemetry → export → report through the recipe's ``store`` (SQLite path or postgresql:// URL)."""
    from weakstrong.agentsim.cli import run_export, run_report, run_simulate
    from weakstrong.agentsim.export import export_pairs

    recipe = {"run_dir": str(tmp_path / "run"), "store": store_url, "backend": {"type": "scripted"},
              "simulation": SMALL, "export": {"split": "agent", "held_out_fraction": 0.2, "min_engagement": 0}}
    run_simulate(recipe, max_ticks=3, telemetry=False)
    run_simulate(recipe, telemetry=False)  # resumes at tick 3
    assert dump(open_store(store_url)) == reference
    dd = run_export(recipe)
    assert (tmp_path / "run" / "pairs" / "dataset_dict.json").is_file()
    assert dd.counts["split"]["held_out"] and dd.counts["train_pairs"] > 0
    # the same export from the in-memory reference run: the store does not change the pairs
    ref = Simulation(SimulationConfig(**SMALL), ScriptedBackend(), None)
    ref.run()
    assert dd.counts == export_pairs(ref.store, recipe["export"], verbose=False).counts
    assert "Rows: agents 8" in run_report(recipe, report_dir=tmp_path / "report").read_text()


def test_a_phase_goes_out_concurrently_over_replicas_each_request_with_its_seed(seed_echo_servers, tmp_path):
    from weakstrong.agentsim import OpenAICompatibleBackend

    a, b = seed_echo_servers
    backend = OpenAICompatibleBackend([a.base_url, b.base_url], "m", concurrency=4, cache_dir=None)
    cfg = SimulationConfig(agents=6, days=1, ticks_per_day=2, actions_per_tick=2, action_weights={"post": 1.0},
                           episodic_every=50, seed=2, archetypes=["Poet"])
    sim = Simulation(cfg, backend, tmp_path / "http.db")
    sim.run()
    requests = a.requests + b.requests
    assert len(a.requests) > 0 and len(b.requests) > 0  # round-robin over both replicas
    assert max(a.max_in_flight, b.max_in_flight) > 1 or a.max_in_flight + b.max_in_flight > 2  # concurrent
    seeds = [r["body"]["seed"] for r in requests]
    assert len(set(seeds)) == len(seeds) == sim.store.counts()["posts"]  # one seed per request, never shared
    assert {p[4].split()[3] for p in sim.store.table("posts")} == {str(s) for s in seeds}


def test_a_database_without_a_recorded_backend_records_the_first_one_resumed(tmp_path, caplog):
    """Databases written before backends were recorded resume once, with a warning, and are then checked."""
    from weakstrong.agentsim import OpenAICompatibleBackend

    path = tmp_path / "old.db"
    Simulation(SimulationConfig(**SMALL), ScriptedBackend(), path).run(max_ticks=2)
    store = SQLiteStore(path)
    store.execute("DELETE FROM meta WHERE key = 'backend'")
    store.close()
    other = OpenAICompatibleBackend("http://127.0.0.1:11/v1", "model-b", cache_dir=None)
    with caplog.at_level("WARNING"):
        Simulation(SimulationConfig(**SMALL), other, path)
    assert "does not record which backend started it" in caplog.text
    with pytest.raises(StoreError, match="another backend"):
        Simulation(SimulationConfig(**SMALL), ScriptedBackend(), path)


def test_no_transaction_is_open_while_generating(store_url):
    state = {"calls": 0}

    def fn(conv, opts):
        store = state["sim"].store
        if store.dialect == "sqlite":
            assert not store.conn.in_transaction
        else:
            from psycopg.pq import TransactionStatus

            assert store.conn.info.transaction_status == TransactionStatus.IDLE
        state["calls"] += 1
        return default_script(conv, opts)

    state["sim"] = Simulation(SimulationConfig(**SMALL), ScriptedBackend(fn), store_url)
    state["sim"].run()
    assert state["calls"] > 40  # every request of the run was checked
