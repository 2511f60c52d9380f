"""HTTP backends end to end, against REAL servers started here on 127.0.0.1 (no mocks):

* llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, extra `[server]`),
* llama.cpp's `llama-server`, built by scripts/build_llama_server.sh (`make llama-server`, a dependency
  of `make test`; ~15 min on a fresh 2-core machine),

both with the default model. The completion and code-action checks of tests/e2e/test_completion.py run
through the real language server process for each backend; then the failure modes: a server that is
down at start and comes up later, a wrong API key, a wrong model name, cancellation closing the stream,
and managed mode (the language server starts llama-server itself).

The Ollama backend is NOT tested against a real Ollama (none is installable here: no pip/apt/npm
package ships the server). The one Ollama check below points it at a real non-Ollama server and checks
that the user gets a clear message; it does not show that the Ollama protocol code works.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types as lsp

from lsp_server.backends.managed import free_port, wait_healthy
from lsp_server.client import InfillClient
from lsp_server.config import cache_home

pytestmark = pytest.mark.asyncio(loop_scope="session")

API_KEY = "test-key-123"
ADD = "def add(a, b):\n    return \n"


def llama_server_binary() -> Path:
    env = os.environ.get("INFILL_LS_LLAMA_SERVER")
    return Path(env) if env else cache_home() / "bin" / "llama-server"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_llama_server(model_path: Path, port: int, *, slots: int = 4, ctx: int = 4096, api_key: str = "",
                       log_name: str = "llama-server") -> subprocess.Popen:
    binary = llama_server_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} missing: run `make llama-server` (scripts/build_llama_server.sh; `make test` does it)")
    cmd = [str(binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-c", str(ctx), "-t", "2", "--no-webui"]
    if api_key:
        cmd += ["--api-key", api_key]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"{log_name}-{port}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, 120)
    except Exception:
        _stop(proc)
        raise
    return proc


@pytest.fixture(scope="session")
def llama_server(model_path):
    """One llama-server with 4 parallel slots and an API key, for the whole session."""
    port = free_port()
    proc = start_llama_server(model_path, port, api_key=API_KEY)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="session")
def llama_cpp_python_server(model_path):
    """llama-cpp-python's OpenAI-compatible server, one model load for the whole session."""
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama_cpp_server-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                json.load(resp)
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"llama_cpp.server did not start (log {log.name})")
            time.sleep(0.3)
    yield url
    _stop(proc)


def options(backend: str, url: str, **model: object) -> dict:
    """Settings selecting one HTTP backend; `model: default` gives the local vocabulary and FIM template."""
    return {"model": "remote", "cache": {"disk": False},
            "models": {"remote": {"backend": backend, "url": url, "model": "default", "retries": 1, **model}},
            "actions": {"explain": {"max_tokens": 40}}}


BACKENDS = {
    "llama_server": lambda r: options("llama_server", r.getfixturevalue("llama_server"), api_key=API_KEY),
    "openai@llama_cpp.server": lambda r: options("openai", r.getfixturevalue("llama_cpp_python_server")),
    "openai@llama-server": lambda r: options("openai", r.getfixturevalue("llama_server"),
                                             api_key_env="INFILL_TEST_KEY"),
}


async def wait_messages(client: InfillClient, kind: lsp.MessageType, count: int, timeout: float = 15) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in client.messages if m.type == kind]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    return [m for m in client.messages if m.type == kind]


@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_completion_and_code_action(backend, request, tmp_path):
    opts = BACKENDS[backend](request)
    env = dict(os.environ, INFILL_TEST_KEY=API_KEY)
    async with InfillClient(opts, env=env) as client:
        uri = (tmp_path / "add.py").as_uri()
        client.open(uri, ADD, "python")
        text = await client.inline(uri, 1, 11)
        assert "a" in text and "b" in text, text
        assert "\n" not in text.strip(), f"single-line mode gave several lines: {text!r}"
        compile("def add(a, b):\n    return " + text + "\n", "add.py", "exec")
        status = await client.status()
        assert status["last"]["source"] == "model", status["last"]
        assert status["backend"]["backend"] == opts["models"]["remote"]["backend"]
        assert status["backend"]["verified"] is True

        uri2 = (tmp_path / "mul.py").as_uri()  # the textDocument/completion fallback
        client.open(uri2, "def multiply(x, y):\n    return \n", "python")
        result = await client.client.text_document_completion_async(lsp.CompletionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri2), position=lsp.Position(line=1, character=11)))
        assert len(result.items) == 1 and "x" in result.items[0].text_edit.new_text

        # a code action through the backend's chat endpoint
        client.open(uri2 + ".x.py", "def add(a, b):\n    return a + b\n", "python")
        reply = await client.run_action(uri2 + ".x.py", (0, 0), (1, 16), "explain")
        assert reply["action"] == "explain"
        assert reply.get("markdown", "").strip(), reply
        assert reply["stats"].get("generated_tokens", 0) > 0 or len(reply["markdown"]) > 20, reply
        assert not [m for m in client.messages if m.type == lsp.MessageType.Error], client.messages


async def test_server_down_at_start_then_recovers(model_path, tmp_path):
    port = free_port()  # nothing listens here yet
    async with InfillClient(options("llama_server", f"http://127.0.0.1:{port}")) as client:
        uri = (tmp_path / "a.py").as_uri()
        client.open(uri, ADD, "python")
        assert await client.inline(uri, 1, 11) == ""
        errors = await wait_messages(client, lsp.MessageType.Error, 1)
        assert len(errors) == 1 and "cannot reach" in errors[0].message and str(port) in errors[0].message
        assert await client.inline(uri, 1, 11) == ""  # next keystroke: empty again, no second message
        await asyncio.sleep(0.2)
        assert len([m for m in client.messages if m.type == lsp.MessageType.Error]) == 1
        proc = start_llama_server(model_path, port, slots=1, ctx=1024, log_name="llama-server-late")
        try:
            text = ""
            deadline = time.monotonic() + 60
            while not text and time.monotonic() < deadline:
                text = await client.inline(uri, 1, 11)
                if not text:
                    await asyncio.sleep(0.5)
            assert "a" in text and "b" in text, text
            infos = await wait_messages(client, lsp.MessageType.Info, 1)
            assert any("answers again" in m.message for m in infos), client.messages
            assert len([m for m in client.messages if m.type == lsp.MessageType.Error]) == 1
        finally:
            _stop(proc)


async def test_wrong_api_key_is_reported_once_then_fixed(llama_server, tmp_path):
    async with InfillClient(options("llama_server", llama_server, api_key="wrong")) as client:
        uri = (tmp_path / "k.py").as_uri()
        client.open(uri, ADD, "python")
        assert await client.inline(uri, 1, 11) == ""
        assert await client.inline(uri, 1, 11) == ""
        errors = await wait_messages(client, lsp.MessageType.Error, 1)
        await asyncio.sleep(0.2)
        errors = [m for m in client.messages if m.type == lsp.MessageType.Error]
        assert len(errors) == 1, client.messages
        assert "401" in errors[0].message and "api_key" in errors[0].message
        client.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
            settings=options("llama_server", llama_server, api_key=API_KEY)))
        text = await client.inline(uri, 1, 11)
        assert "a" in text and "b" in text, text


async def test_wrong_model_name_is_reported_once(llama_cpp_python_server, tmp_path):
    async with InfillClient(options("openai", llama_cpp_python_server, remote_model="no-such-model")) as client:
        uri = (tmp_path / "m.py").as_uri()
        client.open(uri, ADD, "python")
        assert await client.inline(uri, 1, 11) == ""
        assert await client.inline(uri, 1, 11) == ""
        await wait_messages(client, lsp.MessageType.Error, 1)
        await asyncio.sleep(0.2)
        errors = [m for m in client.messages if m.type == lsp.MessageType.Error]
        assert len(errors) == 1, client.messages
        assert "no-such-model" in errors[0].message and "does not serve" in errors[0].message


async def test_ollama_backend_against_a_server_that_is_not_ollama(llama_cpp_python_server, tmp_path):
    """NOT an Ollama protocol test (no real Ollama here): a real non-Ollama server gives one clear message."""
    async with InfillClient(options("ollama", llama_cpp_python_server, remote_model="qwen2.5-coder")) as client:
        uri = (tmp_path / "o.py").as_uri()
        client.open(uri, ADD, "python")
        assert await client.inline(uri, 1, 11) == ""
        assert await client.inline(uri, 1, 11) == ""
        await wait_messages(client, lsp.MessageType.Error, 1)
        await asyncio.sleep(0.2)
        errors = [m for m in client.messages if m.type == lsp.MessageType.Error]
        assert len(errors) == 1 and "/api/tags" in errors[0].message and "404" in errors[0].message, errors


async def test_cancel_closes_the_stream_and_frees_the_slot(llama_server):
    await asyncio.to_thread(_cancel_closes_the_stream, llama_server)


def _cancel_closes_the_stream(llama_server):
    """In-process: a cancelled streaming request returns at once and llama-server stops working on it."""
    from lsp_server.backends import GenerationRequest, create_backend
    from lsp_server.config import ModelSettings
    from lsp_server.errors import Cancelled

    backend, _ = create_backend(ModelSettings(model="default", backend="llama_server", url=llama_server,
                                              api_key=API_KEY))
    backend.load()
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    t0 = time.monotonic()
    prefix = "# A long essay about the history of computing, in many paragraphs.\n"
    with pytest.raises(Cancelled):
        backend.generate(GenerationRequest(prompt="", max_tokens=2000, prefix=prefix, suffix=""), cancel)
    assert time.monotonic() - t0 < 2.5
    # The server notices the closed connection and releases the slot, long before 2000 tokens (>70 s at the
    # ~27 tok/s of 2 idle cores). It checks between decode batches, so a busy machine delays it by seconds.
    req = urllib.request.Request(llama_server + "/slots", headers={"Authorization": f"Bearer {API_KEY}"})
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(req, timeout=5) as resp:
            slots = json.load(resp)
        if not any(s.get("is_processing") for s in slots):
            break
        assert time.monotonic() < deadline, slots
        time.sleep(0.2)
    backend.close()


async def test_managed_mode_starts_and_stops_llama_server(model_path, tmp_path):
    binary = llama_server_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} missing: run `make llama-server`")
    # server_binary and server_args start a program: the client must vouch for them (docs/SECURITY.md)
    opts = {"trusted": True, "model": "managed", "cache": {"disk": False},
            "models": {"managed": {"backend": "llama_server", "model": "default", "server_binary": str(binary),
                                   "server_args": "-np 1 -t 2 --no-webui", "n_ctx": 1024}}}
    async with InfillClient(opts) as client:
        uri = (tmp_path / "a.py").as_uri()
        client.open(uri, ADD, "python")
        text = await client.inline(uri, 1, 11)
        assert "a" in text and "b" in text, text
        managed = (await client.status())["backend"]["managed"]
        assert managed["alive"] and managed["url"].startswith("http://127.0.0.1:") and managed["starts"] == 1
        os.kill(managed["pid"], 9)  # the server crashes: the next request restarts it
        await asyncio.sleep(0.5)
        uri2 = (tmp_path / "b.py").as_uri()
        client.open(uri2, "def multiply(x, y):\n    return \n", "python")
        text = ""
        for _ in range(3):  # the request that finds it dead may come back empty while it restarts
            text = text or await client.inline(uri2, 1, 11)
        assert "x" in text and "y" in text, (text, client.messages)
        managed = (await client.status())["backend"]["managed"]
        assert managed["alive"] and managed["starts"] == 2
        pid = managed["pid"]
    for _ in range(100):  # shutdown stops the server the language server started
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"managed llama-server {pid} still running after shutdown")


@pytest.fixture(scope="session")
def tls_llama_server(model_path, tmp_path_factory):
    """llama-server over HTTPS with a self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    binary = llama_server_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} missing: run `make llama-server`")
    log = open(d / "llama-server.log", "wb")
    proc = subprocess.Popen([str(binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
                             "-np", "1", "-c", "1024", "-t", "2", "--no-webui", "--ssl-key-file", str(key),
                             "--ssl-cert-file", str(cert)], stdout=log, stderr=subprocess.STDOUT)
    from lsp_server.backends.http import HttpClient, RemoteError

    probe = HttpClient(f"https://127.0.0.1:{port}", kind="llama-server", ca_bundle=str(cert), retries=0)
    deadline = time.monotonic() + 120
    while True:
        try:
            probe.get_json("/health", timeout=2)
            break
        except RemoteError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"llama-server over TLS did not start (log {log.name})")
            time.sleep(0.3)
    yield f"https://127.0.0.1:{port}", str(cert)
    _stop(proc)


async def test_tls_verification_options(tls_llama_server):
    await asyncio.to_thread(_tls_verification_options, tls_llama_server)


def _tls_verification_options(tls_llama_server):
    """HTTPS: an untrusted certificate is a clear error; ca_bundle or verify_tls = false make it work."""
    from lsp_server.backends import GenerationRequest, create_backend
    from lsp_server.backends.http import Unreachable
    from lsp_server.config import ModelSettings

    url, cert = tls_llama_server
    req = GenerationRequest(prompt="", max_tokens=12, prefix="def add(a, b):\n    return ", suffix="\n",
                            stop_at_newline=True)
    untrusted, _ = create_backend(ModelSettings(model="default", backend="llama_server", url=url, retries=0))
    untrusted.load()  # not fatal: reported by the first completion
    with pytest.raises(Unreachable, match="TLS certificate not trusted"):
        untrusted.generate(req, threading.Event())
    for extra in ({"ca_bundle": cert}, {"verify_tls": False}):
        backend, _ = create_backend(ModelSettings(model="default", backend="llama_server", url=url, **extra))
        backend.load()
        text = backend.generate(req, threading.Event()).text
        assert "a" in text and "b" in text, (extra, text)
        backend.close()
    untrusted.close()
