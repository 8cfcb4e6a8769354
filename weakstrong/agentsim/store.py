"""Persistence for a simulation: one database holds the whole run and is its resume point.

:class:`Store` is the interface the simulation, the export and the evaluation use (meta, agents, posts,
comments, reactions, follows, memory versions, belief events, ticks, run log). It is implemented twice, with the
same tables and the same semantics:

* :class:`SQLiteStore` — the embedded default: one file (WAL journaling, so readers never block the writer) or
  ``":memory:"``. An existing file is checked with ``PRAGMA quick_check`` when opened.
* :class:`PostgresStore` — a ``postgresql://user@host:port/db`` URL (psycopg 3: ``pip install
  'weakstrong[postgres]'``); ``?schema=NAME`` keeps one run per schema in a shared database.

:func:`open_store` picks one from a path or URL. SQL is written once with ``?`` placeholders in the subset both
databases speak; the PostgreSQL store translates the placeholders.

Transactions and resume: every tick is written in ONE transaction, including the row in ``ticks`` that marks it
complete, so a crash (or a dropped connection) at any point leaves the database at the end of the last completed
tick. Row ids are assigned by the simulation (``next_id``), not by sequences, so a rolled-back tick leaves no gap
and a resumed run writes exactly the ids an uninterrupted one does. One process at a time writes a run:
:meth:`Store.writer_lock` (a lock file beside an SQLite file; a PostgreSQL advisory lock) refuses a second
writer with a message naming the holder; readers need no lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import sqlite3
import time
import urllib.parse
from pathlib import Path

from ..cli import UserError

SCHEMA_VERSION = 1

# {ID}: a row id assigned by the writer; {AUTO}: an id the database assigns (run_log only); {REAL}: a float.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id {ID}, username TEXT UNIQUE NOT NULL, archetype TEXT NOT NULL, sub_personality TEXT,
    mbti TEXT, bio TEXT, age INTEGER, region TEXT, big5 TEXT NOT NULL, interests TEXT NOT NULL,
    activity TEXT NOT NULL, activity_curve TEXT NOT NULL, voice TEXT NOT NULL,
    episodic_memory TEXT NOT NULL DEFAULT '', semantic_memory TEXT NOT NULL DEFAULT '',
    beliefs TEXT NOT NULL DEFAULT '[]', posts_count INTEGER NOT NULL DEFAULT 0,
    episodic_version INTEGER NOT NULL DEFAULT 0, semantic_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS posts (
    id {ID}, agent_id INTEGER NOT NULL REFERENCES agents(id), tick INTEGER NOT NULL,
    day INTEGER NOT NULL, content TEXT NOT NULL, context TEXT NOT NULL, system_prompt TEXT NOT NULL,
    n_reactions INTEGER NOT NULL DEFAULT 0, n_comments INTEGER NOT NULL DEFAULT 0,
    engagement INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS posts_tick ON posts(tick);
CREATE INDEX IF NOT EXISTS posts_agent ON posts(agent_id);
CREATE INDEX IF NOT EXISTS posts_day_agent ON posts(day, agent_id);
CREATE INDEX IF NOT EXISTS posts_agent_id ON posts(agent_id, id);
CREATE TABLE IF NOT EXISTS comments (
    id {ID}, post_id INTEGER NOT NULL REFERENCES posts(id), agent_id INTEGER NOT NULL,
    tick INTEGER NOT NULL, day INTEGER NOT NULL, content TEXT NOT NULL, context TEXT NOT NULL,
    system_prompt TEXT NOT NULL, n_reactions INTEGER NOT NULL DEFAULT 0, engagement INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS comments_post ON comments(post_id);
CREATE TABLE IF NOT EXISTS reactions (
    id {ID}, agent_id INTEGER NOT NULL, target_type TEXT NOT NULL CHECK (target_type IN
    ('post', 'comment')), target_id INTEGER NOT NULL, kind TEXT NOT NULL, tick INTEGER NOT NULL,
    UNIQUE (agent_id, target_type, target_id));
CREATE INDEX IF NOT EXISTS reactions_target ON reactions(target_type, target_id);
CREATE TABLE IF NOT EXISTS follows (
    follower_id INTEGER NOT NULL, followee_id INTEGER NOT NULL, tick INTEGER NOT NULL,
    PRIMARY KEY (follower_id, followee_id));
CREATE TABLE IF NOT EXISTS memory_versions (
    id {ID}, agent_id INTEGER NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('episodic', 'semantic')),
    version INTEGER NOT NULL, posts_count INTEGER NOT NULL, tick INTEGER NOT NULL, day INTEGER NOT NULL,
    content TEXT NOT NULL, beliefs TEXT, input_chars INTEGER NOT NULL, output_chars INTEGER NOT NULL,
    compression_ratio {REAL}, budget INTEGER NOT NULL, budget_unit TEXT NOT NULL, truncated INTEGER NOT NULL,
    UNIQUE (agent_id, kind, version));
CREATE INDEX IF NOT EXISTS memory_versions_day ON memory_versions(day);
CREATE TABLE IF NOT EXISTS belief_events (
    id {ID}, agent_id INTEGER NOT NULL, tick INTEGER NOT NULL, day INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('added', 'dropped')), belief TEXT NOT NULL,
    from_version INTEGER NOT NULL, to_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ticks (
    tick INTEGER PRIMARY KEY, day INTEGER NOT NULL, tick_of_day INTEGER NOT NULL, active_agents INTEGER NOT NULL,
    posts INTEGER NOT NULL, comments INTEGER NOT NULL, reactions INTEGER NOT NULL, follows INTEGER NOT NULL,
    episodic_rewrites INTEGER NOT NULL, semantic_rewrites INTEGER NOT NULL, belief_events INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS run_log (
    id {AUTO}, started_at {REAL} NOT NULL, first_tick INTEGER NOT NULL, backend TEXT,
    note TEXT);
"""
SCHEMA = _SCHEMA.format(ID="INTEGER PRIMARY KEY", AUTO="INTEGER PRIMARY KEY", REAL="REAL")
PG_SCHEMA = _SCHEMA.format(ID="BIGINT PRIMARY KEY", AUTO="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                           REAL="DOUBLE PRECISION")

# Tables whose contents are the simulation's result (run_log holds wall-clock times and is excluded).
RESULT_TABLES = ("agents", "posts", "comments", "reactions", "follows", "memory_versions", "belief_events", "ticks")
# Tables whose ids the writer assigns (see next_id).
ID_TABLES = ("agents", "posts", "comments", "reactions", "memory_versions", "belief_events")

_AGENT_COLUMNS = ("id", "username", "archetype", "sub_personality", "mbti", "bio", "age", "region", "big5",
                  "interests", "activity", "activity_curve", "voice")
_JSON_AGENT_FIELDS = ("big5", "interests", "activity_curve", "beliefs")


class StoreError(UserError, RuntimeError):
    """The database cannot be used for this run; the message says why and what to do (the ``weakstrong`` command
    prints it without a traceback)."""


class StoreConnectionError(StoreError):
    """The connection to the database was lost; the open transaction (if any) was not committed."""


class Store:
    """What a simulation, its export and its evaluation need from a database (see the module docstring).

    Subclasses provide the connection-level methods (``transaction``, ``execute``, ``executemany``, ``rows``,
    ``scalar``, ``close``, ``writer_lock``); the table-level methods below are written once in the SQL both speak.
    ``path`` describes the database in messages (a file path, or a URL without its password).
    """

    dialect = "?"
    path = "?"

    # ------------------------------------------------------------------ connection-level (per backend)
    def transaction(self):  # pragma: no cover - interface
        raise NotImplementedError

    def execute(self, sql: str, params=()):  # pragma: no cover - interface
        raise NotImplementedError

    def executemany(self, sql: str, rows) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def rows(self, sql: str, params=()) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def scalar(self, sql: str, params=()):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _acquire_writer(self, wait: float):  # pragma: no cover - interface
        """Take the run's writer lock (waiting up to ``wait`` s, then StoreError); returns the function releasing it."""
        raise NotImplementedError

    @contextlib.contextmanager
    def writer_lock(self, wait: float = 10.0):
        """Exclusive right to write this run, re-entrant within this object: waits up to ``wait`` seconds for
        another writer, then raises :class:`StoreError` naming it."""
        depth = getattr(self, "_lock_depth", 0)
        release = None if depth else self._acquire_writer(wait)
        self._lock_depth = depth + 1
        try:
            yield
        finally:
            self._lock_depth = depth
            if release is not None:
                release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    # ------------------------------------------------------------------ schema
    def _check_schema_version(self) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, this code writes {SCHEMA_VERSION}; "
                             "start a new database")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default=None):
        rows = self.rows("SELECT value FROM meta WHERE key = ?", (key,))
        return default if not rows else json.loads(rows[0]["value"])

    def set_meta(self, key: str, value) -> None:
        self.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                     "excluded.value", (key, json.dumps(value, sort_keys=True)))

    def last_completed_tick(self) -> int:
        """Index of the last tick fully written, or -1 for a fresh database."""
        value = self.scalar("SELECT MAX(tick) FROM ticks")
        return -1 if value is None else int(value)

    def log_run(self, first_tick: int, backend: str, note: str = "") -> None:
        self.execute("INSERT INTO run_log(started_at, first_tick, backend, note) VALUES (?, ?, ?, ?)",
                     (time.time(), first_tick, backend, note))

    def next_id(self, table: str) -> int:
        """The id the next row of ``table`` gets (ids are dense and assigned by the writer)."""
        if table not in ID_TABLES:
            raise ValueError(f"{table!r} has no writer-assigned id; tables: {ID_TABLES}")
        return int(self.scalar(f"SELECT COALESCE(MAX(id), 0) FROM {table}")) + 1

    # ------------------------------------------------------------------ agents
    def insert_agents(self, agents: list[dict]) -> None:
        first = self.next_id("agents")
        rows = []
        for i, a in enumerate(agents):
            rows.append((a.get("id", first + i), a["username"], a["archetype"], a["sub_personality"], a["mbti"],
                         a["bio"], a["age"], a["region"], json.dumps(a["big5"]), json.dumps(a["interests"]),
                         a["activity"], json.dumps(a["activity_curve"]), a["voice"]))
        self.executemany(f"INSERT INTO agents({', '.join(_AGENT_COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(_AGENT_COLUMNS))})", rows)

    def agents(self) -> list[dict]:
        out = self.rows("SELECT * FROM agents ORDER BY id")
        for r in out:
            for key in _JSON_AGENT_FIELDS:
                r[key] = json.loads(r[key])
        return out

    # ------------------------------------------------------------------ bulk writes of one tick
    def insert(self, table: str, rows: list[dict]) -> None:
        """Insert ``rows`` (dicts with the same keys) into ``table`` in one batch."""
        if not rows:
            return
        cols = list(rows[0])
        self.executemany(f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         [tuple(r[c] for c in cols) for r in rows])

    # ------------------------------------------------------------------ dumps (tests, exports)
    def table(self, name: str) -> list[tuple]:
        """Every row of a result table in primary-key order (for comparisons)."""
        if name not in RESULT_TABLES:
            raise ValueError(f"unknown table {name!r}; tables: {RESULT_TABLES}")
        order = {"follows": "follower_id, followee_id", "ticks": "tick"}.get(name, "id")
        return [tuple(r.values()) for r in self.rows(f"SELECT * FROM {name} ORDER BY {order}")]

    def counts(self) -> dict:
        return {t: int(self.scalar(f"SELECT COUNT(*) FROM {t}")) for t in RESULT_TABLES}


# ================================================================================================== SQLite
class SQLiteStore(Store):
    """A simulation's database in one SQLite file (WAL mode) or ``":memory:"``.

    Opening an existing file runs ``PRAGMA quick_check`` (``check="integrity"`` runs the slower, complete
    ``integrity_check``; ``check=None`` skips it); a damaged file raises :class:`StoreError` naming it.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path = ":memory:", timeout: float = 30.0, check: str | None = "quick"):
        self.path = str(path)
        existing = self.path != ":memory:" and Path(self.path).is_file() and Path(self.path).stat().st_size > 0
        if self.path != ":memory:" and Path(self.path).is_file() and not existing:
            # Opening a database writes its header (WAL mode) before anything else, so a run of weakstrong never
            # leaves an empty file: something else made or truncated it. Refused rather than taken as a new run.
            wal = Path(self.path + "-wal")
            beside = (f"; {wal.name} beside it holds {wal.stat().st_size} bytes" if wal.is_file() else "")
            raise StoreError(f"{self.path} is an empty file (0 bytes{beside}): it holds no simulation. weakstrong "
                             "writes a database header before anything else, so an interrupted run never leaves an "
                             "empty file; this one was created or truncated by something else (touch, a failed "
                             "copy, a full disk). If a run should be there, restore it from a backup; to start a "
                             "new run at this path, delete the file first.")
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot create the database {self.path!r}: folder {parent} does not exist")
        if check not in (None, "quick", "integrity"):
            raise ValueError(f"check must be 'quick', 'integrity' or None, got {check!r}")
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if existing and check:
                self._check_integrity(check)
            if self.path != ":memory:":
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: could not enable WAL journaling (got {mode!r})")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a usable SQLite database ({err}); it may be damaged or not a "
                             "database at all: pass a new path (or restore a backup)") from err
        self._check_schema_version()

    def _check_integrity(self, check: str) -> None:
        pragma = "quick_check" if check == "quick" else "integrity_check"
        try:
            problems = [r[0] for r in self.conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        except sqlite3.DatabaseError as err:
            if "not a database" in str(err) or "encrypted" in str(err):
                raise
            problems = [f"the check itself failed: {err}"]
        if problems != ["ok"]:
            raise StoreError(f"{self.path} is damaged: PRAGMA {pragma} reports {len(problems)} problem(s), first: "
                             f"{problems[0]!r}. Its results cannot be trusted: restore a backup or start a new "
                             "database path.")

    def close(self) -> None:
        self.conn.close()

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

    def executemany(self, sql: str, rows) -> None:
        self.conn.executemany(sql, rows)

    def rows(self, sql: str, params=()) -> list[dict]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params=()):
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _acquire_writer(self, wait: float):
        """An exclusive ``flock`` on ``<file>-writer.lock``; nothing for ``:memory:`` or without ``fcntl``."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): rely on the in-transaction tick check alone
            fcntl = None
        if self.path == ":memory:" or fcntl is None:
            return lambda: None
        lock_path = self.path + "-writer.lock"
        f = open(lock_path, "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    f.close()
                    raise StoreError(
                        f"{self.path} is being written by {holder} (lock {lock_path}); one process at a time runs a "
                        "simulation: wait for it to finish or stop it, then rerun this command to resume. Readers "
                        "(export, telemetry, report) need no lock.") from None
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()

        def release():
            f.truncate(0)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

        return release


# ================================================================================================== PostgreSQL
@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc[0].split(":")[0] + ":***@" + netloc[1]))


def is_postgres_url(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


class PostgresStore(Store):
    """A simulation's database in PostgreSQL (psycopg 3).

    Args:
        url: ``postgresql://user[:password]@host:port/dbname`` (any libpq URL). A ``schema=NAME`` query
            parameter (or the ``schema`` argument) puts the run's tables in that schema, created if missing, so
            one database can hold many runs.
        connect_timeout: seconds to wait for the server.

    Same tables, ids and per-tick transactions as :class:`SQLiteStore`; bulk writes go through psycopg's
    pipelined ``executemany``. The writer lock is a session advisory lock keyed by the schema, so it is released
    by the server when the writing process dies.
    """

    dialect = "postgresql"
    _LOCK_CLASS = 0x5753  # first key of the advisory lock ("WS")

    def __init__(self, url: str, schema: str | None = None, connect_timeout: float = 10.0):
        try:
            import psycopg
            from psycopg.types.numeric import FloatLoader
        except ImportError as err:
            raise StoreError("a postgresql:// store needs psycopg 3: pip install 'weakstrong[postgres]' "
                             "(or pip install 'psycopg[binary]')") from err
        self._psycopg = psycopg
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        schema = schema or next((v for k, v in query if k == "schema"), None) or "public"
        if not schema.replace("_", "").isalnum():
            raise StoreError(f"schema {schema!r} must be letters, digits and '_' only")
        conninfo = urllib.parse.urlunsplit(parts._replace(
            query=urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])))
        self.schema = schema
        self.path = _redact(url) if "schema=" in url or schema == "public" else f"{_redact(url)} (schema {schema})"
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=int(max(1, connect_timeout)),
                                        application_name=f"weakstrong-agentsim pid {os.getpid()}")
        except psycopg.Error as err:
            raise StoreError(f"cannot connect to PostgreSQL at {self.path}: {str(err).strip()}. Check that the "
                             "server runs and the URL (host, port, user, database) is right.") from None
        self.conn.adapters.register_loader("numeric", FloatLoader)  # AVG/SUM give floats, as in SQLite
        try:
            with self.conn.transaction():
                # two processes creating the same schema at once would race on the catalogs: serialize them
                self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self._LOCK_CLASS, 0))
                self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                self.conn.execute(f'SET search_path TO "{schema}"')
                for stmt in PG_SCHEMA.split(";"):
                    if stmt.strip():
                        self.conn.execute(stmt)
            self.conn.execute(f'SET search_path TO "{schema}"')  # SET inside the transaction ended with it
        except psycopg.Error as err:
            raise StoreError(f"cannot create the simulation tables in {self.path}: {str(err).strip()}") from None
        self._check_schema_version()

    def close(self) -> None:
        self.conn.close()

    def _lost(self, err) -> StoreConnectionError:
        return StoreConnectionError(
            f"lost the connection to PostgreSQL at {self.path} ({' '.join(str(err).split()) or type(err).__name__}). The "
            "open transaction, if any, was rolled back by the server: nothing of it is written. Rerun the same "
            "command to resume after the last completed tick.")

    def _call(self, fn, *args):
        psycopg = self._psycopg
        try:
            return fn(*args)
        except psycopg.OperationalError as err:
            if self.conn.closed or self.conn.broken:
                raise self._lost(err) from None
            raise

    @contextlib.contextmanager
    def transaction(self):
        try:
            tx = self.conn.transaction()
            tx.__enter__()
        except self._psycopg.OperationalError as err:
            raise self._lost(err) from None
        try:
            yield self.conn
        except BaseException as exc:
            try:
                tx.__exit__(type(exc), exc, exc.__traceback__)
            except self._psycopg.Error:
                pass  # the connection is gone: the server rolled the transaction back
            raise
        try:
            tx.__exit__(None, None, None)
        except self._psycopg.OperationalError as err:
            raise self._lost(err) from None

    def execute(self, sql: str, params=()):
        return self._call(self.conn.execute, _pg_sql(sql), tuple(params))

    def executemany(self, sql: str, rows) -> None:
        rows = list(rows)
        if rows:
            with self.conn.cursor() as cur:
                self._call(cur.executemany, _pg_sql(sql), rows)

    def rows(self, sql: str, params=()) -> list[dict]:
        cur = self.execute(sql, params)
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def scalar(self, sql: str, params=()):
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _lock_key(self) -> int:
        digest = hashlib.sha256(f"weakstrong-agentsim:{self.schema}".encode()).digest()
        return int.from_bytes(digest[:4], "big", signed=True)

    def _acquire_writer(self, wait: float):
        key = self._lock_key()
        deadline = time.monotonic() + wait
        while not self.scalar("SELECT pg_try_advisory_lock(?, ?)", (self._LOCK_CLASS, key)):
            if time.monotonic() >= deadline:
                holder = self.rows(
                    "SELECT a.pid, a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON "
                    "a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = ? AND l.objid = ? AND l.granted",
                    (self._LOCK_CLASS, key & 0xFFFFFFFF))
                who = (f"server backend {holder[0]['pid']} ({holder[0]['application_name']}, client "
                       f"{holder[0]['client_addr']})" if holder else "another session")
                raise StoreError(
                    f"{self.path} is being written by {who}; one process at a time runs a simulation: wait for it "
                    "to finish or stop it, then rerun this command to resume. Readers (export, telemetry, report) "
                    "need no lock.")
            time.sleep(0.05)

        def release():
            if not (self.conn.closed or self.conn.broken):
                try:
                    self.execute("SELECT pg_advisory_unlock(?, ?)", (self._LOCK_CLASS, key))
                except StoreError:
                    pass  # connection lost: the server released the lock with the session

        return release


def open_store(spec=None, **kwargs) -> Store:
    """A store from a spec: a :class:`Store` (returned as is), ``None``/``":memory:"`` (SQLite in memory), a
    ``postgresql://`` URL, or a path to an SQLite file (created, or opened to resume)."""
    if isinstance(spec, Store):
        return spec
    if spec is None:
        return SQLiteStore(":memory:", **kwargs)
    if is_postgres_url(spec):
        return PostgresStore(spec, **kwargs)
    if isinstance(spec, (str, os.PathLike)):
        return SQLiteStore(spec, **kwargs)
    raise TypeError(f"store must be a Store, a path, a postgresql:// URL or None, got {type(spec).__name__}")
