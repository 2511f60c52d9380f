"""Other-file context on the real model over stdio: a function defined only in an imported workspace module
is completed by name, because chunks of that module enter the prompt; without the setting it is not seen."""

from __future__ import annotations

import pytest

from lsp_server.client import InfillClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

GEOMETRY = '''"""Shapes used by the report."""

import math


def trapezoid_surface_qz(base_a: float, base_b: float, height: float) -> float:
    """Area of a trapezoid with parallel sides base_a and base_b."""
    return (base_a + base_b) * height / 2


def ring_surface_qz(outer: float, inner: float) -> float:
    return math.pi * (outer * outer - inner * inner)
'''

MAIN = '''import geometry


def report(a: float, b: float, h: float) -> str:
    surface = geometry.
'''


async def _complete(workspace, extra_files: bool) -> tuple[str, dict]:
    options = {"load": "startup", "cache": {"disk": False}, "completion": {"extra_files": extra_files}}
    async with InfillClient(options, root=str(workspace)) as client:
        uri = (workspace / "main.py").as_uri()
        client.open(uri, MAIN, "python")
        text = await client.inline(uri, 4, len("    surface = geometry."))
        return text, (await client.status())["last"]


async def test_imported_module_is_in_the_prompt(tmp_path):
    (tmp_path / "geometry.py").write_text(GEOMETRY, encoding="utf-8")
    (tmp_path / "main.py").write_text(MAIN, encoding="utf-8")
    text, last = await _complete(tmp_path, extra_files=True)
    assert last.get("extra_chunks", 0) >= 1, last
    assert text.startswith("trapezoid_surface_qz(") or text.startswith("ring_surface_qz("), text
    plain, last_plain = await _complete(tmp_path, extra_files=False)
    assert "extra_chunks" not in last_plain and "_surface_qz" not in plain, plain
