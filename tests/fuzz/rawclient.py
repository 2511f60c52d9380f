"""TEST TOOL: a JSON-RPC client over the real server's stdio that can send anything, well-formed or not.

pygls' LanguageClient only sends what lsprotocol can serialise; fuzzing needs raw bytes in bodies, broken
headers, wrong ids and requests before `initialize`. This client frames (or mis-frames) bytes itself,
reads every message the server writes on a thread, answers the server's own requests (progress,
applyEdit, showDocument) with an empty result, and keeps every response by id so that a test can check
that each request was answered exactly once.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def server_command() -> list[str]:
    return [sys.executable, "-m", "lsp_server", "serve"]


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class ServerGone(AssertionError):
    pass


class RawClient:
    def __init__(self, *, env: dict[str, str] | None = None, stderr_path: Path | None = None,
                 command: list[str] | None = None):
        self._stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        self.trace_path = stderr_path.with_suffix(".sent") if stderr_path else None
        self.trace: collections.deque[bytes] = collections.deque(maxlen=200)  # the last messages sent
        self.proc = subprocess.Popen(command or server_command(), cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=dict(os.environ if env is None else env))
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._write_lock = threading.Lock()
        self.sent: dict[Any, str] = {}  # request id -> method
        self.responses: dict[Any, list[dict]] = {}
        self.sent_at: dict[Any, float] = {}  # request id -> time.monotonic() when sent / answered (latency)
        self.answered_at: dict[Any, float] = {}
        self.null_id: list[dict] = []  # error responses that could not name a request (parse errors)
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.garbage: list[bytes] = []  # anything from the server that is not a framed JSON message
        self._reader = threading.Thread(target=self._read, name="rawclient-reader", daemon=True)
        self._reader.start()

    # -- reading ------------------------------------------------------------------------------------------
    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    with self._lock:
                        self._lock.notify_all()
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value.strip())
                elif not name.lower().startswith(b"content-type"):
                    self.garbage.append(line)
            if length is None:
                self.garbage.append(b"<blank line without Content-Length>")
                continue
            body = out.read(length)
            try:
                msg = json.loads(body)
            except ValueError:
                self.garbage.append(body[:200])
                continue
            self._route(msg)

    def _route(self, msg: dict) -> None:
        if "method" in msg and "id" in msg:  # the server asks us something: say yes with nothing
            self.server_requests.append(msg)
            self._write(frame(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": None}).encode()))
            return
        with self._lock:
            if "method" in msg:
                self.notifications.append(msg)
            elif msg.get("id") is None:
                self.null_id.append(msg)
            else:
                self.responses.setdefault(msg["id"], []).append(msg)
                self.answered_at.setdefault(msg["id"], time.monotonic())
            self._lock.notify_all()

    # -- writing ------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._write_lock:
            self.trace.append(data[:300_000])
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                self.dump_trace()
                raise ServerGone(f"the server closed its input ({exc}); exit code {self.proc.poll()}") from exc

    def dump_trace(self) -> None:
        """Write the last messages sent next to the server log: what a crash report needs."""
        if self.trace_path is not None:
            self.trace_path.write_bytes(b"\n".join(self.trace))

    def send_raw(self, data: bytes) -> None:
        self._write(data)

    def send(self, message: dict, raw: dict[str, bytes] | None = None) -> None:
        """Frame one message; `raw` maps placeholder strings in it to raw bytes spliced into the body."""
        body = json.dumps(message).encode("utf-8")
        for placeholder, data in (raw or {}).items():
            body = body.replace(json.dumps(placeholder)[1:-1].encode(), data)
        self._write(frame(body))

    def notify(self, method: str, params: Any = None, raw: dict[str, bytes] | None = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params}, raw)

    def request(self, method: str, params: Any = None, raw: dict[str, bytes] | None = None,
                msg_id: Any = None) -> Any:
        msg_id = next(self._ids) if msg_id is None else msg_id
        self.sent[msg_id] = method
        self.sent_at[msg_id] = time.monotonic()
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}, raw)
        return msg_id

    def cancel(self, msg_id: Any) -> None:
        self.notify("$/cancelRequest", {"id": msg_id})

    def wait(self, msg_id: Any, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while msg_id not in self.responses:
                left = deadline - time.monotonic()
                if self.proc.poll() is not None and msg_id not in self.responses:
                    self.dump_trace()
                    raise ServerGone(f"server exited ({self.proc.returncode}) before answering {msg_id}")
                if left <= 0:
                    raise AssertionError(f"no answer to request {msg_id} ({self.sent.get(msg_id)}) "
                                         f"within {timeout}s: the server hangs")
                self._lock.wait(min(left, 0.5))
            return self.responses[msg_id][0]

    def call(self, method: str, params: Any = None, timeout: float = 30, **kw: Any) -> dict:
        return self.wait(self.request(method, params, **kw), timeout)

    def wait_null_ids(self, count: int, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.null_id) < count and time.monotonic() < deadline:
                self._lock.wait(0.2)
            return list(self.null_id)

    def check_answered_once(self, timeout: float = 30) -> None:
        """Every request sent so far has exactly one response; no response names an unknown id."""
        for msg_id in list(self.sent):
            self.wait(msg_id, timeout)
        time.sleep(0.05)  # a duplicate would follow its original closely
        with self._lock:
            twice = {k: v for k, v in self.responses.items() if len(v) != 1}
            unknown = set(self.responses) - set(self.sent)
        assert not twice, f"answered more than once: {twice}"
        assert not unknown, f"responses to ids never sent: {unknown}"
        assert not self.garbage, f"non-protocol output on stdout: {self.garbage[:3]}"

    # -- lifecycle ----------------------------------------------------------------------------------------
    def initialize(self, options: dict | None = None, root: Path | None = None) -> dict:
        reply = self.call("initialize", {
            "processId": os.getpid(), "rootUri": (root or ROOT).as_uri(), "initializationOptions": options or {},
            "capabilities": {"textDocument": {"inlineCompletion": {}, "codeAction": {
                "codeActionLiteralSupport": {"codeActionKind": {"valueSet": [""]}}, "dataSupport": True,
                "resolveSupport": {"properties": ["edit"]}}},
                "workspace": {"applyEdit": True}, "window": {"workDoneProgress": True}}}, timeout=60)
        self.notify("initialized", {})
        return reply

    def alive(self) -> bool:
        return self.proc.poll() is None

    def shutdown_and_exit(self, timeout: float = 10) -> int:
        reply = self.call("shutdown", None, timeout=timeout)
        assert "error" not in reply, reply
        self.notify("exit")
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
