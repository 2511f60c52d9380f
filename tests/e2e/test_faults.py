"""Faults that must leave the server alive: missing or corrupt model, unknown model, editor gone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from lsprotocol import types as lsp

from lsp_server.client import InfillClient

async def _wait_for_message(client: InfillClient, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(client.messages) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("kind", ["missing", "not-gguf", "unknown-name", "truncated", "wrong-hash"])
async def test_bad_model_disables_completion_then_recovers(kind, tmp_path, model_path):
    env = None
    if kind == "missing":
        model = str(tmp_path / "missing.gguf")
    elif kind == "not-gguf":
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"this is not a model\n" * 100)
        model = str(bad)
    elif kind == "truncated":  # an interrupted copy: a GGUF header, then nothing
        bad = tmp_path / "truncated.gguf"
        with open(model_path, "rb") as src:
            bad.write_bytes(src.read(2 << 20))
        model = str(bad)
    elif kind == "wrong-hash":  # the catalog's file name and size, other bytes (a sparse file: cheap)
        models = tmp_path / "cache" / "models"
        models.mkdir(parents=True)
        with open(models / model_path.name, "wb") as fake:
            fake.write(b"GGUF")
            fake.truncate(model_path.stat().st_size)
        env = dict(os.environ, INFILL_LS_CACHE=str(tmp_path / "cache"))
        model = "default"
    else:
        model = "no-such-model"
    async with InfillClient({"model": model, "cache": {"disk": False}}, env=env) as client:
        uri = (tmp_path / "a.py").as_uri()
        client.open(uri, "def add(a, b):\n    return \n", "python")
        assert await client.inline(uri, 1, 11) == ""
        await _wait_for_message(client, 1)
        errors = [m for m in client.messages if m.type == lsp.MessageType.Error]
        assert errors, client.messages
        assert {"missing": "not found", "not-gguf": "not a GGUF", "unknown-name": "unknown model",
                "truncated": "could not load", "wrong-hash": "sha256"}[kind] in errors[0].message
        # a second request does not repeat the message (no per-keystroke storm)
        assert await client.inline(uri, 1, 11) == ""
        await asyncio.sleep(0.2)
        assert len([m for m in client.messages if m.type == lsp.MessageType.Error]) == 1
        # the user fixes the configuration: completions come back without a restart
        client.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
            settings={"model": str(model_path), "cache": {"disk": False}}))
        text = await client.inline(uri, 1, 11)
        assert "a" in text and "b" in text


def test_server_exits_when_the_editor_dies():
    proc = subprocess.Popen([sys.executable, "-m", "lsp_server", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    proc.stdin.close()
    try:
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


# -- faults behind a working model ------------------------------------------------------------------------
def _fake(tmp_path, outputs: list[dict], **cache) -> dict:
    """Settings for the FAKE backend (test-only: replays recorded outputs, see lsp_server/backends/fake.py)."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return {"model": "fake", "models": {"fake": {"backend": "fake", "fake_outputs": str(path)}},
            "cache": cache or {"disk": False}, "completion": {"extra_files": False}}  # each prompt: its own file


def _errors(client: InfillClient, text: str, kind=lsp.MessageType.Error) -> list[str]:
    return [m.message for m in client.messages if m.type == kind and text in m.message]


@pytest.mark.asyncio(loop_scope="session")
async def test_context_overflow_is_said_once_then_fixed_by_configuration(tmp_path, model_path):
    """A prompt larger than the model's context: an empty answer, one clear message, the server alive; a
    larger n_ctx sent with didChangeConfiguration brings completions back without a restart."""
    def options(n_ctx: int) -> dict:
        return {"model": "small", "models": {"small": {"model": str(model_path), "n_ctx": n_ctx}},
                "cache": {"disk": False},
                "completion": {"max_tokens_single": 8, "max_tokens_multi": 16, "extra_files": False,
                               "prefix_tokens": 96, "suffix_tokens": 16}}  # > 64 tokens, a quick prefill at 2048

    async with InfillClient(options(64)) as client:
        uri = (tmp_path / "long.py").as_uri()
        body = "".join(f"def helper_{i}(x):\n    return x * {i}\n\n" for i in range(40))
        client.open(uri, body + "def add(a, b):\n    return ", "python")
        line = body.count("\n") + 1
        assert await client.inline(uri, line, 11) == ""
        assert await client.inline(uri, line, 11) == ""
        await _wait_for_message(client, 1)
        overflow = _errors(client, "does not fit")
        assert len(overflow) == 1 and "n_ctx" in overflow[0], client.messages
        assert (await client.status())["state"] == "ready"  # the model is fine: only this prompt is too big
        client.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(settings=options(2048)))
        assert await client.inline(uri, line, 11) != ""
        assert len(_errors(client, "does not fit")) == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_model_worker_raising_mid_generation(tmp_path):
    """The model worker raises in the middle of a generation (a simulated native crash, fake backend):
    that request gets an empty answer, the worker goes on serving the next ones."""
    options = _fake(tmp_path, [{"prompt_contains": "", "output": "a + b\n"},
                               {"prompt_contains": "CRASH", "output": "never", "delay_ms": 500, "raise_after_ms": 40}])
    async with InfillClient(options) as client:
        good, bad = (tmp_path / "good.py").as_uri(), (tmp_path / "bad.py").as_uri()
        client.open(good, "def add(a, b):\n    return ", "python")
        client.open(bad, "CRASH = 1\ndef add(a, b):\n    return ", "python")
        for _ in range(3):
            assert await client.inline(bad, 2, 11) == ""
            assert await client.inline(good, 1, 11) == "a + b"
        status = await client.status()
        assert status["state"] == "ready" and status["backend"]["calls"] >= 4


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("damage", ["unwritable", "corrupt"])
async def test_disk_cache_failure_falls_back_to_memory_and_says_so_once(damage, tmp_path):
    if damage == "unwritable":  # a file where the directory should be: mkdir fails even for root
        (tmp_path / "blocked").write_text("x")
        cache_dir = tmp_path / "blocked" / "completions"
    else:  # a cache database that is not one
        cache_dir = tmp_path / "corrupt"
        cache_dir.mkdir()
        (cache_dir / "cache.db").write_bytes(b"\x00garbage, not sqlite\xff" * 512)
    options = _fake(tmp_path, [{"prompt_contains": "", "output": "a + b\n"}], disk=True, dir=str(cache_dir))
    async with InfillClient(options) as client:
        uri = (tmp_path / "a.py").as_uri()
        client.open(uri, "def add(a, b):\n    return ", "python")
        assert await client.inline(uri, 1, 11) == "a + b"
        assert await client.inline(uri, 1, 11) == "a + b"
        await _wait_for_message(client, 1)
        warned = _errors(client, "disk cache off", lsp.MessageType.Warning)
        assert len(warned) == 1 and "memory" in warned[0], client.messages
        status = await client.status()
        assert status["cache"]["disk"] is None and status["cache"]["disk_error"]


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


@pytest.mark.parametrize("busy", ["idle", "generating", "generating-real-model"])
def test_editor_dying_without_shutdown_exits_promptly(busy, tmp_path, model_path):
    """stdin closes (the editor crashed) with no shutdown/exit, even in the middle of a generation: the
    server exits within 5 s and leaves no process behind."""
    import sys as _sys

    _sys.path.insert(0, str(os.path.dirname(os.path.dirname(__file__))))
    from fuzz.rawclient import RawClient

    options = _fake(tmp_path, [{"prompt_contains": "", "output": "x", "delay_ms": 60_000}])
    if busy == "generating-real-model":  # a long generation: the server must not wait for it
        options = {"model": str(model_path), "cache": {"disk": False},
                   "completion": {"max_tokens_multi": 160, "time_budget_ms": 60_000}}
    with RawClient(stderr_path=tmp_path / "server.log") as c:
        c.initialize(options)
        if busy != "idle":
            c.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///t/a.py", "languageId": "python",
                                                               "version": 1, "text": "def f(a):\n    return "}})
            c.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///t/a.py"},
                                                        "position": {"line": 1, "character": 11},
                                                        "context": {"triggerKind": 2}})
            deadline = time.monotonic() + 60
            while c.call("infill/status", {})["result"]["state"] != "ready" and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # the generation is running on the model worker
        children = _children(c.proc.pid)
        started = time.monotonic()
        c.proc.stdin.close()
        assert c.proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
        assert not [p for p in children if os.path.exists(f"/proc/{p}")], "child processes left behind"


def test_requests_during_model_load_are_all_answered(tmp_path, model_path):
    """llama-cpp-python with verbose=False points fds 1 and 2 at /dev/null while a model loads; on a stdio
    server that swallowed replies written meanwhile. Requests sent all through the load get every reply,
    and nothing but protocol reaches stdout."""
    import sys as _sys

    _sys.path.insert(0, str(os.path.dirname(os.path.dirname(__file__))))
    from fuzz.rawclient import RawClient

    with RawClient(stderr_path=tmp_path / "server.log") as c:
        c.initialize({"model": str(model_path), "load": "startup", "cache": {"disk": False}})
        c.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///t/a.py", "languageId": "python",
                                                           "version": 1, "text": "def add(a, b):\n    return "}})
        states, sent = set(), 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = [c.request("infill/status", {}) for _ in range(5)]
            sent += 5
            state = c.wait(ids[-1])["result"]["state"]
            states.add(state)
            if state in ("ready", "error"):  # "idle" until the initialized notification starts the load
                break
            time.sleep(0.005)
        assert "loading" in states and "ready" in states, states
        c.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///t/a.py"},
                                                    "position": {"line": 1, "character": 11},
                                                    "context": {"triggerKind": 2}})
        c.check_answered_once(timeout=60)  # also: no stray output on stdout
        assert sent >= 10
        assert c.shutdown_and_exit() == 0
