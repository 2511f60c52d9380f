"""Faults that must leave the server alive: missing or corrupt model, unknown model, editor gone."""

from __future__ import annotations

import asyncio
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
@pytest.mark.parametrize("kind", ["missing", "not-gguf", "unknown-name"])
async def test_bad_model_disables_completion_then_recovers(kind, tmp_path, model_path):
    if kind == "missing":
        model = str(tmp_path / "missing.gguf")
    elif kind == "not-gguf":
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"this is not a model\n" * 100)
        model = str(bad)
    else:
        model = "no-such-model"
    async with InfillClient({"model": model, "cache": {"disk": False}}) as client:
        uri = (tmp_path / "a.py").as_uri()
        client.open(uri, "def add(a, b):\n    return \n", "python")
        assert await client.inline(uri, 1, 11) == ""
        await _wait_for_message(client, 1)
        errors = [m for m in client.messages if m.type == lsp.MessageType.Error]
        assert errors, client.messages
        assert {"missing": "not found", "not-gguf": "not a GGUF", "unknown-name": "unknown model"}[kind] in errors[0].message
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
