"""SQLite persistence for a simulation: one file holds the whole run and is the resume point.

Every tick is written in ONE transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), including the row in ``ticks``
that marks it complete, so a crash at any point leaves the database at the end of the last completed tick.
File databases use WAL journaling (readers never block the writer; a crash mid-transaction is rolled back on
the next open).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id INTEGER PRIMARY KEY, username TEXT UNIQUE NOT NULL, archetype TEXT NOT NULL, sub_personality TEXT,
    mbti TEXT, bio TEXT, age INTEGER, region TEXT, big5 TEXT NOT NULL, interests TEXT NOT NULL,
    activity TEXT NOT NULL, activity_curve TEXT NOT NULL, voice TEXT NOT NULL,
    episodic_memory TEXT NOT NULL DEFAULT '', semantic_memory TEXT NOT NULL DEFAULT '',
    beliefs TEXT NOT NULL DEFAULT '[]', posts_count INTEGER NOT NULL DEFAULT 0,
    episodic_version INTEGER NOT NULL DEFAULT 0, semantic_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY, agent_id INTEGER NOT NULL REFERENCES agents(id), tick INTEGER NOT NULL,
    day INTEGER NOT NULL, content TEXT NOT NULL, context TEXT NOT NULL, system_prompt TEXT NOT NULL,
    n_reactions INTEGER NOT NULL DEFAULT 0, n_comments INTEGER NOT NULL DEFAULT 0,
    engagement INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS posts_tick ON posts(tick);
CREATE INDEX IF NOT EXISTS posts_agent ON posts(agent_id);
CREATE TABLE IF NOT EXISTS comments (
    id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL REFERENCES posts(id), agent_id INTEGER NOT NULL,
    tick INTEGER NOT NULL, day INTEGER NOT NULL, content TEXT NOT NULL, context TEXT NOT NULL,
    system_prompt TEXT NOT NULL, n_reactions INTEGER NOT NULL DEFAULT 0, engagement INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS comments_post ON comments(post_id);
CREATE TABLE IF NOT EXISTS reactions (
    id INTEGER PRIMARY KEY, agent_id INTEGER NOT NULL, target_type TEXT NOT NULL CHECK (target_type IN
    ('post', 'comment')), target_id INTEGER NOT NULL, kind TEXT NOT NULL, tick INTEGER NOT NULL,
    UNIQUE (agent_id, target_type, target_id));
CREATE TABLE IF NOT EXISTS follows (
    follower_id INTEGER NOT NULL, followee_id INTEGER NOT NULL, tick INTEGER NOT NULL,
    PRIMARY KEY (follower_id, followee_id));
CREATE TABLE IF NOT EXISTS memory_versions (
    id INTEGER PRIMARY KEY, agent_id INTEGER NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('episodic', 'semantic')),
    version INTEGER NOT NULL, posts_count INTEGER NOT NULL, tick INTEGER NOT NULL, day INTEGER NOT NULL,
    content TEXT NOT NULL, beliefs TEXT, input_chars INTEGER NOT NULL, output_chars INTEGER NOT NULL,
    compression_ratio REAL, budget INTEGER NOT NULL, budget_unit TEXT NOT NULL, truncated INTEGER NOT NULL,
    UNIQUE (agent_id, kind, version));
CREATE TABLE IF NOT EXISTS belief_events (
    id INTEGER PRIMARY KEY, agent_id INTEGER NOT NULL, tick INTEGER NOT NULL, day INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('added', 'dropped')), belief TEXT NOT NULL,
    from_version INTEGER NOT NULL, to_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ticks (
    tick INTEGER PRIMARY KEY, day INTEGER NOT NULL, tick_of_day INTEGER NOT NULL, active_agents INTEGER NOT NULL,
    posts INTEGER NOT NULL, comments INTEGER NOT NULL, reactions INTEGER NOT NULL, follows INTEGER NOT NULL,
    episodic_rewrites INTEGER NOT NULL, semantic_rewrites INTEGER NOT NULL, belief_events INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS run_log (
    id INTEGER PRIMARY KEY, started_at REAL NOT NULL, first_tick INTEGER NOT NULL, backend TEXT,
    note TEXT);
"""

# Tables whose contents are the simulation's result (run_log holds wall-clock times and is excluded).
RESULT_TABLES = ("agents", "posts", "comments", "reactions", "follows", "memory_versions", "belief_events", "ticks")


class StoreError(RuntimeError):
    """The database cannot be used for this run; the message says why and what to do."""


class SQLiteStore:
    """A simulation's database. ``path``: a file (WAL mode) or ``":memory:"``."""

    def __init__(self, path: str | Path = ":memory:", timeout: float = 30.0):
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot create the database {self.path!r}: folder {parent} does not exist")
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if self.path != ":memory:":
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: could not enable WAL journaling (got {mode!r})")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a usable SQLite database ({err}); pass a new path") from err
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, this code writes {SCHEMA_VERSION}; "
                             "start a new database file")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def transaction(self):
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls the whole block back."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def execute(self, sql: str, params=()):
        return self.conn.execute(sql, params)

    def rows(self, sql: str, params=()) -> list[dict]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params=()):
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                          "excluded.value", (key, json.dumps(value, sort_keys=True)))

    def last_completed_tick(self) -> int:
        """Index of the last tick fully written, or -1 for a fresh database."""
        value = self.scalar("SELECT MAX(tick) FROM ticks")
        return -1 if value is None else int(value)

    def log_run(self, first_tick: int, backend: str, note: str = "") -> None:
        self.conn.execute("INSERT INTO run_log(started_at, first_tick, backend, note) VALUES (?, ?, ?, ?)",
                          (time.time(), first_tick, backend, note))

    # ------------------------------------------------------------------ agents
    def insert_agents(self, agents: list[dict]) -> None:
        for a in agents:
            self.conn.execute(
                "INSERT INTO agents(username, archetype, sub_personality, mbti, bio, age, region, big5, interests, "
                "activity, activity_curve, voice) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (a["username"], a["archetype"], a["sub_personality"], a["mbti"], a["bio"], a["age"], a["region"],
                 json.dumps(a["big5"]), json.dumps(a["interests"]), a["activity"], json.dumps(a["activity_curve"]),
                 a["voice"]))

    def agents(self) -> list[dict]:
        out = []
        for r in self.rows("SELECT * FROM agents ORDER BY id"):
            for key in ("big5", "interests", "activity_curve", "beliefs"):
                r[key] = json.loads(r[key])
            out.append(r)
        return out

    # ------------------------------------------------------------------ dumps (tests, exports)
    def table(self, name: str) -> list[tuple]:
        """Every row of a result table in primary-key order (for comparisons)."""
        if name not in RESULT_TABLES:
            raise ValueError(f"unknown table {name!r}; tables: {RESULT_TABLES}")
        order = {"follows": "follower_id, followee_id", "ticks": "tick"}.get(name, "id")
        return [tuple(r) for r in self.conn.execute(f"SELECT * FROM {name} ORDER BY {order}").fetchall()]

    def counts(self) -> dict:
        return {t: int(self.scalar(f"SELECT COUNT(*) FROM {t}")) for t in RESULT_TABLES}
