"""End to end over stdio with the real default model: real completions and clear handling of bad input."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types as lsp

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_add_completes_with_both_arguments(real_server, doc_uri):
    uri = doc_uri("add.py")
    real_server.open(uri, "def add(a, b):\n    return \n", "python")
    text = await real_server.inline(uri, 1, 11)
    assert "a" in text and "b" in text, text
    assert "\n" not in text.strip(), f"single-line mode gave several lines: {text!r}"
    compile("def add(a, b):\n    return " + text + "\n", "add.py", "exec")


async def test_completion_fallback_returns_one_item(real_server, doc_uri):
    uri = doc_uri("mul.py")
    real_server.open(uri, "def multiply(x, y):\n    return \n", "python")
    result = await real_server.client.text_document_completion_async(lsp.CompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri), position=lsp.Position(line=1, character=11)))
    assert isinstance(result, lsp.CompletionList) and len(result.items) == 1
    item = result.items[0]
    assert item.text_edit.range.start == lsp.Position(line=1, character=11)
    assert "x" in item.text_edit.new_text and "y" in item.text_edit.new_text


async def test_repeat_request_is_a_cache_hit(real_server, doc_uri):
    uri = doc_uri("sub.py")
    real_server.open(uri, "def subtract(a, b):\n    return \n", "python")
    first = await real_server.inline(uri, 1, 11)
    status = await real_server.status()
    assert status["state"] == "ready" and status["last"]["source"] == "model"
    assert status["last"]["prompt_tokens"] > 0
    uri2 = doc_uri("sub.py")
    real_server.open(uri2, "def subtract(a, b):\n    return \n", "python")
    assert await real_server.inline(uri2, 1, 11) == first
    status = await real_server.status()
    assert status["last"]["source"] == "cache"


async def test_unknown_document_gets_empty_result(real_server):
    assert await real_server.inline("file:///nowhere/never-opened.py", 0, 0) == ""


async def test_position_outside_document_is_harmless(real_server, doc_uri):
    uri = doc_uri("short.py")
    real_server.open(uri, "x = 1\n", "python")
    await real_server.inline(uri, 500, 9000)  # any answer but a crash or a hang
    uri2 = doc_uri("again.py")
    real_server.open(uri2, "def square(n):\n    return \n", "python")
    assert "n" in await real_server.inline(uri2, 1, 11)


async def test_mid_identifier_is_skipped_without_calling_the_model(real_server, doc_uri):
    uri = doc_uri("mid.py")
    real_server.open(uri, "value = compute_total(items)\n", "python")
    assert await real_server.inline(uri, 0, 12) == ""
    assert (await real_server.status())["last"]["source"] == "skip"


async def test_invalid_setting_is_reported_and_server_keeps_working(real_server, doc_uri, session_cache):
    before = len(real_server.messages)
    real_server.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
        settings={"infill": {"load": "whenever", "completion": {"max_tokens_single": -3},
                             "cache": {"dir": str(session_cache)}}}))
    for _ in range(50):
        if len(real_server.messages) > before:
            break
        await asyncio.sleep(0.05)
    message = real_server.messages[-1]
    assert message.type == lsp.MessageType.Warning
    assert "load" in message.message and "max_tokens_single" in message.message
    uri = doc_uri("after.py")
    real_server.open(uri, "def double(n):\n    return \n", "python")
    assert "n" in await real_server.inline(uri, 1, 11)


async def test_incremental_edits_are_applied(real_server, doc_uri):
    uri = doc_uri("edit.py")
    real_server.open(uri, "def add(a, b):\n    \n", "python")
    real_server.change(uri, (1, 4), (1, 4), "ret")
    real_server.change(uri, (1, 7), (1, 7), "urn ")
    text = await real_server.inline(uri, 1, 11)
    assert "a" in text and "b" in text
