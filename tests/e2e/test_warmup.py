"""Idle warm-up and prefetch on the real model over stdio: after a pause the stable start of the next prompt
is already in llama.cpp's KV cache, so the request evaluates only the cursor line and the suffix."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = '''import math


class Shape{n}:
    """A shape with an area and a perimeter."""

    def __init__(self, width: float, height: float) -> None:
        self.width = width
        self.height = height

    def area(self) -> float:
        return self.width * self.height

    def perimeter(self) -> float:
        return 2 * (self.width + self.height)

    def diagonal(self) -> float:
        return math.hypot(self.width, self.height)

'''


async def _wait_for(predicate, timeout: float = 60.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    return None


async def test_pause_warms_the_stable_prompt_start(real_server, doc_uri):
    async def ready():
        return (await real_server.status())["state"] == "ready"

    assert await _wait_for(ready, timeout=300), "the model did not load"
    uri = doc_uri("shapes.py")
    text = BODY.format(n=int(time.time() * 1000) % 100000)  # a prompt no earlier test evaluated
    real_server.open(uri, text, "python")
    lines = text.count("\n")
    before = (await real_server.status())["warmups"]
    real_server.change(uri, (lines, 0), (lines, 0), "    def scaled(self, factor: float) -> ")
    warmed = await _wait_for(lambda: _warmups_after(real_server, before, uri))
    assert warmed, "no warm-up after a pause in typing"
    assert warmed["evaluated_tokens"] > 50, warmed  # the class above the cursor line was evaluated
    column = len("    def scaled(self, factor: float) -> ")
    await real_server.inline(uri, lines, column)
    last = (await real_server.status())["last"]
    assert last["source"] == "model", last
    assert last["evaluated_tokens"] < last["prompt_tokens"] / 2, last


async def _warmups_after(client, before: int, uri: str):
    status = await client.status()
    last = status["last_warmup"]
    return last if status["warmups"] > before and last and last["uri"] == uri else None


async def test_typing_on_a_line_evaluates_only_the_new_keys(real_server, doc_uri):
    """With the cursor line's typed text after the middle marker (completion.prefill_lines), a key typed at
    the end of the line leaves prefix and suffix alone: llama.cpp reuses the KV cache up to the new key, and
    the suffix below is not evaluated again (in plain PSM order it was, on every key)."""
    async def ready():
        return (await real_server.status())["state"] == "ready"

    assert await _wait_for(ready, timeout=300), "the model did not load"
    uri = doc_uri("typing.py")
    text = BODY.format(n=int(time.time() * 1000) % 100000)
    anchor = "    def diagonal(self) -> float:\n"
    row = text[: text.index(anchor)].count("\n")
    method = ("    def describe(self) -> str:\n"
              "        w = \n"
              "        h = self.height\n"
              "        ratio = w / h if h else 0.0\n"
              "        kind = 'square' if w == h else 'rectangle'\n"
              "        return f'{kind} {w}x{h} ratio {ratio:.2f}'\n\n")
    text = text.replace(anchor, method + anchor)
    real_server.open(uri, text, "python")
    row += 1
    column = len("        w = ")
    await real_server.inline(uri, row, column)
    first = (await real_server.status())["last"]
    assert first["source"] == "model", first
    evaluated = []
    for key in "xyz":  # keys no suggestion starts with: no type-through
        real_server.change(uri, (row, column), (row, column), key)
        column += 1
        await real_server.inline(uri, row, column)
        last = (await real_server.status())["last"]
        assert last["source"] in ("model", "empty"), last  # the model ran (an odd key may leave nothing to show)
        evaluated.append(last["evaluated_tokens"])
    # the rest of the method below the cursor (the suffix: ~50 tokens) is not evaluated again
    assert max(evaluated) <= 6, (evaluated, first)


async def test_a_cold_file_is_answered_from_a_short_prompt_then_warmed(real_server, doc_uri):
    """completion.cold_prompt_ms: the first key in a file whose context is not in the KV cache would evaluate
    the whole prompt (~850 tokens: 4.5 s on 2 cores). It is answered from a short prompt beside it instead,
    the full prompt is evaluated in the background, and the next key uses the full prompt with nothing left
    to evaluate but itself."""
    import diskcache.core

    async def ready():
        return (await real_server.status())["state"] == "ready"

    assert await _wait_for(ready, timeout=300), "the model did not load"
    text = Path(diskcache.core.__file__).read_text(encoding="utf-8")  # real code from an installed package
    line = "        sql = self._sql\n        db_key, raw = self._disk.put(key)\n        select = (\n"
    at = text.index("    def __contains__(self, key):")
    at = text.index(line, at)
    text = text[:at] + "        sql = \n" + text[at + len("        sql = self._sql\n"):]
    row, column = text[:at].count("\n"), len("        sql = ")
    uri = doc_uri("core.py")
    before = (await real_server.status())["warmups"]
    real_server.open(uri, text, "python")
    await real_server.inline(uri, row, column)
    first = (await real_server.status())["last"]
    rate = ((await real_server.status()).get("backend") or {}).get("prompt_rate") or 200
    if first.get("cold_tokens") is None and 850 / rate < 1.5:
        pytest.skip(f"this machine evaluates {rate:.0f} prompt tokens/s: the file is not cold here")
    assert first["source"] in ("model", "empty") and first.get("cold_tokens", 0) > 600, first
    assert first["prompt_tokens"] < 250, first  # the short prompt: ~128 tokens of context and the markers

    async def warmed():
        status = await real_server.status()
        last = status["last_warmup"]
        return last if status["warmups"] > before and last and last["uri"] == uri else None

    warm = await _wait_for(warmed, timeout=120)
    assert warm and warm["evaluated_tokens"] > 600, warm
    real_server.change(uri, (row, column), (row, column), "s")
    await real_server.inline(uri, row, column + 1)
    last = (await real_server.status())["last"]
    assert "cold_tokens" not in last, last
    assert last["prompt_tokens"] > 700 and last["evaluated_tokens"] <= 8, last  # the cursor line's text
