"""Golden table: realistic raw FIM outputs of a small instruct model and the text to insert."""

import json
from pathlib import Path

import pytest

from lsp_server.postprocess import postprocess

CASES = json.loads((Path(__file__).resolve().parents[1] / "golden" / "postprocess_cases.json").read_text("utf-8"))


def test_table_is_broad():
    langs = {c["language"] for c in CASES}
    assert len(CASES) >= 40
    assert {"python", "javascript", "typescript", "go", "rust", "java", "c", "cpp", "ruby", "lua", "bash", None} <= langs


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden(case):
    out = postprocess(case["raw"], prefix=case["prefix"], suffix=case["suffix"], mode=case["mode"],
                      grammar=case["language"], stop=case.get("stop", ()))
    assert out == case["expected"]
