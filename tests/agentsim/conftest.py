"""Shared fixtures: the local OpenAI-compatible fake server of the LRL tests, taught to answer logprob requests."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest


def _lrl_conftest():
    # pytest runs in importlib mode (tests/ is no package): load the LRL fixtures module by path to reuse its server
    path = Path(__file__).resolve().parents[1] / "lrl" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_weakstrong_tests_lrl_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LRL = _lrl_conftest()
FakeOpenAIServer = _LRL.FakeOpenAIServer


class LogprobServer(FakeOpenAIServer):
    """The LRL fake server; a request with ``logprobs`` gets one token and ``top_logprobs`` from ``self.top``:
    ``top(body) -> {token: probability}`` (the most likely first, as real servers order them)."""

    def __init__(self):
        super().__init__()
        self.top = lambda body: {"3": 0.5, "4": 0.3, "Hello": 0.2}
        self.omit_logprobs = False

    def reply(self, body: dict) -> dict:
        if not body.get("logprobs"):
            return super().reply(body)
        dist = sorted(self.top(body).items(), key=lambda kv: -kv[1])[: int(body.get("top_logprobs") or 1)]
        first = dist[0][0] if dist else ""
        choice = {"index": 0, "message": {"role": "assistant", "content": first}, "finish_reason": "length"}
        if not self.omit_logprobs:
            choice["logprobs"] = {"content": [{
                "token": first, "logprob": math.log(dist[0][1]) if dist else 0.0,
                "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in dist]}]}
        return {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": [choice]}


class SeedEchoServer(FakeOpenAIServer):
    """Replies with the request's seed (and its endpoint), holding each request ``delay`` s, counting how many
    are in flight at once."""

    def __init__(self, delay: float = 0.05):
        super().__init__()
        self.delay, self.in_flight, self.max_in_flight = delay, 0, 0

    def reply(self, body: dict) -> dict:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            import time as _time

            _time.sleep(self.delay)
            text = f"Post with seed {body.get('seed')} from port {self.server_address[1]}."
        finally:
            with self.lock:
                self.in_flight -= 1
        return {"id": "x", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.fixture
def seed_echo_servers():
    """Two replicas of one 'model' that echo each request's seed."""
    with _LRL.serving(SeedEchoServer()) as a, _LRL.serving(SeedEchoServer()) as b:
        yield a, b


@pytest.fixture
def logprob_server():
    with _LRL.serving(LogprobServer()) as server:
        yield server


# ---------------------------------------------------------------------------------------------- PostgreSQL
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

PG_BIN = Path(os.environ.get("WEAKSTRONG_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _pg_unavailable() -> str | None:
    """Why a private PostgreSQL cluster cannot be started here (None when it can)."""
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).is_file():
            return f"PostgreSQL binaries not found ({PG_BIN / tool}; set WEAKSTRONG_PG_BIN or apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -c constraints/cpu.txt 'weakstrong[postgres]')"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as (PostgreSQL refuses root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A throw-away cluster: trust auth on 127.0.0.1 only, unix socket in its own temp dir. ``durable=False`` (tests)
    turns fsync off; ``durable=True`` (benchmarks) keeps fsync and only defers commit flushes
    (``synchronous_commit=off``, like SQLite's WAL with ``synchronous=NORMAL``)."""

    def __init__(self, durable: bool = False):
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="weakstrong-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user = os.geteuid() == 0  # PostgreSQL will not run as root: run it as 'postgres'
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.startup_s = None

    def _run(self, *args, check=True):
        cmd = (["runuser", "-u", "postgres", "--"] if self.as_user else []) + [str(a) for a in args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self):
        t0 = time.perf_counter()
        self._run(PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync", "--no-instructions")
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        for attempt in range(3):  # another process may take the free port first: pick a new one
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c unix_socket_permissions=0700 "
                    "-c synchronous_commit=off -c max_connections=50")
            if not self.durable:
                opts += " -c fsync=off -c full_page_writes=off"
            try:
                self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log", "-w", "-t", "60", "-o",
                          opts, "start")
                break
            except subprocess.CalledProcessError as err:
                log = (self.dir / "server.log").read_text() if (self.dir / "server.log").is_file() else ""
                if attempt == 2 or "could not bind" not in log:
                    raise RuntimeError(f"pg_ctl start failed: {err.stderr}\n{log[-2000:]}") from None
                self.port = _free_port()
                self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.startup_s = time.perf_counter() - t0

    def stop(self):
        if (self.data / "postmaster.pid").is_file():
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def admin(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)


@pytest.fixture(scope="session")
def postgres_cluster():
    """A private PostgreSQL 15 cluster for the session (initdb + pg_ctl, ~1-2 s), stopped at the end even on failure.

    Missing binaries skip the PostgreSQL tests locally with the reason; under CI (``CI=true``) they fail instead.
    """
    reason = _pg_unavailable()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the PostgreSQL store tests: {reason}")
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster):
    """A URL to a fresh, empty schema of the session's cluster (dropped afterwards)."""
    schema = "t_" + uuid.uuid4().hex[:12]
    yield f"{postgres_cluster.url}?schema={schema}"
    with postgres_cluster.admin() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh simulation database on each backend: an SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "sim.db")
    return request.getfixturevalue("pg_url")
