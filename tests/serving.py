"""A real OpenAI-compatible server for the tests: ``transformers serve`` on a free 127.0.0.1 port.

:class:`TransformersServer` starts ``transformers serve <model folder> --host 127.0.0.1 --port P --device cpu`` in
its own process group, waits (with a deadline) until a chat completion answers, and stops the whole group by its
PID. ``kill()`` / ``restart()`` are for fault tests: an abrupt SIGKILL, then a new server on the same port (the
clients' ``base_url`` stays valid).

Quirks of this server (the server's, not the protocol's; the client handles the first two):
* the request's ``model`` must equal the served path exactly, else HTTP 400 "Server is pinned to '<path>'";
* ``stop`` strings stay in the reply (``OpenAICompatibleChat`` trims them);
* ``logprobs`` / ``top_logprobs`` are ignored (``choice_probs`` then raises a clear error);
* ``GET /v1/models`` answers HTTP 500 offline (it scans the hub cache), so readiness is ``GET /health`` plus one
  chat completion;
* ``temperature > 0`` samples only when the model's generation config sets ``do_sample`` (the embedded model's
  does not: its replies are greedy whatever the temperature); ``seed`` is a global ``torch.manual_seed``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model_path: str | os.PathLike, port: int, extra_args=()) -> list[str]:
    """The ``transformers serve`` command line (the console script beside this Python)."""
    exe = Path(sys.executable).with_name("transformers")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "transformers.cli.transformers"]
    return head + ["serve", str(model_path), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                   *extra_args]


class TransformersServer:
    """``transformers serve`` as a child process group (see the module docstring).

    Args:
        model_path: the model folder to serve (the request's ``model`` must be this exact string).
        log_path: where the server's stdout/stderr go (shown in startup errors).
        threads: ``OMP_NUM_THREADS`` of the server (1 keeps it from competing with the test process).
        startup_timeout: seconds to wait for the first chat completion.
        extra_args: more ``transformers serve`` options (e.g. ``["--continuous-batching"]``).
    """

    def __init__(self, model_path, log_path, threads: int = 1, startup_timeout: float = 180.0, extra_args=()):
        self.model = str(model_path)
        self.log_path = Path(log_path)
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: list[float] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int | None = None) -> "TransformersServer":
        """Start the server (on ``port``, or a free one) and wait until it answers a chat completion."""
        if self.alive():
            raise RuntimeError(f"the server is already running (pid {self.pid})")
        for attempt in range(3):  # a free port can be taken by someone else before the server binds it
            self.port = port or free_port()
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "OMP_NUM_THREADS": str(self.threads), "TRANSFORMERS_VERBOSITY": "error"}
            started = time.monotonic()
            with open(self.log_path, "ab") as log:
                log.write(f"\n=== start on port {self.port} ===\n".encode())
                log.flush()
                self.process = subprocess.Popen(serve_command(self.model, self.port, self.extra_args), env=env,
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            try:
                self._wait_ready(started)
            except _PortTaken:
                self.stop()
                if port is not None or attempt == 2:
                    raise RuntimeError(f"port {self.port} is in use; see {self.log_path}") from None
                continue
            self.startup_seconds.append(time.monotonic() - started)
            return self
        raise AssertionError("unreachable")

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken()
                raise RuntimeError(f"transformers serve exited with code {self.process.returncode} while starting; "
                                   f"log {self.log_path}:\n{tail}")
            if self._health() and self._chat_ok():
                return
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"transformers serve did not answer within {self.startup_timeout:.0f} s; "
                           f"log {self.log_path}:\n{tail}")

    def _health(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _chat_ok(self) -> bool:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                           "temperature": 0}).encode()
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's process group, SIGKILL if it is still there after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        self._signal(signal.SIGKILL)  # any child left in the group
        self.process = None

    def kill(self) -> None:
        """An abrupt crash: SIGKILL to the whole group, no shutdown."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def restart(self) -> "TransformersServer":
        """Kill (if running) and start again on the same port."""
        port = self.port
        self.kill()
        return self.start(port=port)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.process.pid, sig)  # start_new_session: the group id is the server's pid
        except (ProcessLookupError, PermissionError):
            pass

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (Linux), for the CI budget check."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, TypeError):
            return None
        return None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _PortTaken(Exception):
    pass
