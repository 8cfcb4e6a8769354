"""Fixtures for the Linguistic RL tests: a scripted teacher and a local OpenAI-compatible server (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import threading
import time

import pytest


class ScriptedTeacher:
    """A deterministic fake teacher: its reply depends only on the conversation, never on call order.

    Solve prompts get a sweep-line-free heuristic ("YES iff rooms >= 2"), so some answers are right and some
    wrong; ``unparseable_batches`` lists problem texts answered with no final answer; ``fail_after`` raises after
    that many conversations (a simulated crash).
    """

    name = "scripted"

    def __init__(self, fail_after: int | None = None, garbage: bool = False, empty_distill: bool = False,
                 copy_strategy: bool = False):
        self.fail_after = fail_after
        self.garbage = garbage
        self.empty_distill = empty_distill
        self.copy_strategy = copy_strategy  # solve replies = the prompt's strategy cut off mid-line (48-token run)
        self.calls: list[str] = []

    def reply(self, content: str) -> str:
        if "journal entry" in content:
            acc = re.search(r"Batch (\d+): (\d+)/(\d+)", content)
            return (f"1. Worked: batch {acc.group(1)} had {acc.group(2)} right.\n2. Wrong: I ignored overlaps.\n"
                    "3. Edge: a meeting ending at T and one starting at T.\n4. Improve: count the peak.")
        if "improved strategy" in content:
            if self.empty_distill:
                return "   "
            n = content.count("=== BATCH")
            return f"New strategy:\n1. Sort meetings (seen {n} journal entries).\n2. Count the peak overlap.\n3. Compare."
        if self.garbage:
            return "I am not sure about this one."
        if self.copy_strategy:
            strategy = content.split("Strategy:\n", 1)[1].split("\n\n", 1)[0]
            return strategy[: strategy.find("4. Answer YES if it is") + len("4. Answer YES if it is")]
        rooms = int(re.search(r"Rooms available: (\d+)", content).group(1))
        return f"Rooms {rooms}, so probably.\nAnswer: {'YES' if rooms >= 2 else 'NO'}"

    def generate(self, conversations, **sampling):
        out = []
        for conv in conversations:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("simulated crash")
            content = conv[-1]["content"]
            self.calls.append(content)
            out.append(self.reply(content))
        return out


@pytest.fixture
def scripted_teacher():
    return ScriptedTeacher


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_POST(self):  # noqa: N802 - http.server API
        server = self.server
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            fault = server.faults.pop(0) if server.faults else None
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "no such route"}})
        if fault == "timeout":
            time.sleep(server.hang_seconds)
            return self._send(200, server.reply(body))
        if fault == "malformed":
            return self._send_raw(200, b'{"choices": [ {"message": ')
        if fault == "null":
            return self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                                 "finish_reason": "tool_calls"}]})
        if fault == "pinned":  # what transformers serve answers for another model name
            return self._send(400, {"detail": "Server is pinned to '/srv/models/m'; requested 'm'."})
        if isinstance(fault, int):
            extra = {"Retry-After": "0"} if fault == 429 else {}
            return self._send(fault, {"error": {"message": f"scripted {fault}"}}, extra)
        return self._send(200, server.reply(body))

    def _send(self, status, payload, headers=None):
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status, data, headers=None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FakeOpenAIServer(http.server.ThreadingHTTPServer):
    """Serves /v1/chat/completions on 127.0.0.1 with scripted faults: 429, 500, 401, 404, 'timeout', 'malformed',
    'null' (a null message content), 'pinned' (transformers serve's HTTP 400 for another model name). Like
    transformers serve, it ignores ``stop`` (the stop string stays in the reply)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.faults: list = []
        self.hang_seconds = 0.5
        self.teacher = ScriptedTeacher()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply(self, body: dict) -> dict:
        text = self.teacher.reply(body["messages"][-1]["content"])
        return {"id": "x", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@contextlib.contextmanager
def serving(server):
    """Run an HTTP server in a daemon thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def openai_server():
    with serving(FakeOpenAIServer()) as server:
        yield server


@pytest.fixture
def openai_servers():
    """Two independent fake servers (replicas of one model)."""
    with serving(FakeOpenAIServer()) as a, serving(FakeOpenAIServer()) as b:
        yield a, b


@pytest.fixture
def silent_server():
    """A real TCP server on 127.0.0.1 that accepts every connection, reads nothing and never answers (a hung
    server, or a port that is not an HTTP server). Bounded: its sockets close when the block ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # timeout (poll stop) or closed
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", held  # the API root, the accepted sockets
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
