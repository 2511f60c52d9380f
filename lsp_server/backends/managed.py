"""Managed mode: the language server starts and supervises a local `llama-server` itself.

Selected by a model with `"backend": "llama_server"`, `"server_binary": "/path/to/llama-server"` and no
`url`. The server listens on 127.0.0.1 on a free port, loads the configured GGUF, and its log goes to
<cache>/logs/llama-server-<port>.log. If it dies, the next request restarts it (at most once per
RESTART_BACKOFF_S, doubling while it keeps dying); closing the backend stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lsp_server.config import cache_home
from lsp_server.errors import ModelError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # model load on a slow disk; the health endpoint answers 503 meanwhile
RESTART_BACKOFF_S = 2.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _health(url: str, api_key: str, timeout: float) -> tuple[int, str]:
    """GET <url>/health with http.client: no redirects followed and no proxy from the environment, so that
    nothing but the server itself is contacted."""
    parts = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + "/health",
                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        resp = conn.getresponse()
        resp.read(4096)
        return resp.status, resp.reason
    finally:
        conn.close()


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float, api_key: str = "") -> None:
    """Until GET /health answers 200 (llama-server answers 503 while loading)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ModelError(f"llama-server exited with code {proc.returncode} while starting")
        try:
            status, reason = _health(url, api_key, 2)
            if status == 200:
                return
            last = f"{status} {reason}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ModelError(f"llama-server did not become healthy at {url} within {timeout:.0f} s ({last})")


class ManagedLlamaServer:
    def __init__(self, binary: str, model_path: str, *, n_ctx: int = 4096, n_gpu_layers: int = -1,
                 n_threads: int = 0, extra_args: str = "", api_key: str = ""):
        self.binary = os.path.expanduser(binary)
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads
        self.extra_args = shlex.split(extra_args)
        # Always a key: other local users can reach 127.0.0.1 too, and llama-server's endpoints (/slots among
        # them) would show them the prompts, i.e. the user's code. Only /health answers without it.
        self.api_key = api_key or secrets.token_urlsafe(32)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.url = ""
        self.starts = 0
        self.log_path: Path | None = None
        self._next_restart = 0.0
        self._backoff = RESTART_BACKOFF_S

    def command(self) -> list[str]:
        cmd = [self.binary, "-m", self.model_path, "--host", "127.0.0.1", "--port", str(self.port),
               "-c", str(self.n_ctx)]
        if self.n_gpu_layers >= 0:
            cmd += ["-ngl", str(self.n_gpu_layers)]
        if self.n_threads:
            cmd += ["-t", str(self.n_threads)]
        return cmd + self.extra_args  # the API key goes in the environment: a command line is public (ps)

    def start(self) -> str:
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise ModelError(f"managed llama-server: {self.binary} is not an executable "
                             "(build one with scripts/build_llama_server.sh)")
        if not os.path.isfile(self.model_path):
            raise ModelError(f"managed llama-server: model file not found: {self.model_path}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        logs = cache_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(logs, 0o700)  # llama-server's log may quote prompts, i.e. the user's code
        self.log_path = logs / f"llama-server-{self.port}.log"
        cmd = self.command()
        log.info("starting managed llama-server: %s", shlex.join(cmd))
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "LLAMA_API_KEY": self.api_key})
        self.starts += 1
        try:
            wait_healthy(self.url, self.proc, START_TIMEOUT_S)
        except ModelError as exc:
            tail = self._log_tail()
            self.stop()
            raise ModelError(f"{exc}; log {self.log_path}: {tail}") from exc
        log.info("managed llama-server ready at %s (pid %d)", self.url, self.proc.pid)
        return self.url

    def _log_tail(self, n: int = 400) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip() if self.log_path else ""
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> str:
        """The server's URL; restarts it if it died (not more often than the backoff allows)."""
        if self.alive():
            return self.url
        now = time.monotonic()
        if now < self._next_restart:
            from lsp_server.backends.http import Unreachable

            raise Unreachable(f"the managed llama-server died (exit code {self.proc.returncode if self.proc else '?'}); "
                              f"restarting in {self._next_restart - now:.0f} s. Log: {self.log_path}")
        log.warning("managed llama-server exited (code %s): restarting", self.proc.returncode if self.proc else "?")
        self._next_restart = now + self._backoff
        self._backoff = min(self._backoff * 2, 60.0)
        url = self.start()
        self._backoff = RESTART_BACKOFF_S
        return url

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: nothing else is in that group
        except OSError:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait(timeout=5)

    def info(self) -> dict[str, Any]:
        return {"binary": self.binary, "url": self.url, "pid": self.proc.pid if self.proc else None,
                "alive": self.alive(), "starts": self.starts, "log": str(self.log_path) if self.log_path else None}

    def __repr__(self) -> str:
        return json.dumps(self.info())
