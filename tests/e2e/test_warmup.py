"""Idle warm-up and prefetch on the real model over stdio: after a pause the stable start of the next prompt
is already in llama.cpp's KV cache, so the request evaluates only the cursor line and the suffix."""

from __future__ import annotations

import asyncio
import time

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
