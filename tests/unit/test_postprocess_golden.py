"""Golden table: realistic raw FIM outputs of a small instruct model and the text to insert."""

import json
from pathlib import Path

import pytest

from lsp_server.postprocess import block_finished, postprocess

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


MULTI = [c for c in CASES if c["mode"] == "multi"]


def _stopped_early(case) -> str:
    """The raw text as the engine's stop_check would have cut it: at the first line end where
    block_finished says post-processing keeps nothing after it."""
    raw = case["raw"]
    for i, ch in enumerate(raw):
        if ch == "\n" and block_finished(raw[:i + 1], prefix=case["prefix"], suffix=case["suffix"],
                                         stop=case.get("stop", ())):
            return raw[:i + 1]
    return raw


@pytest.mark.parametrize("case", MULTI, ids=[c["name"] for c in MULTI])
def test_stopping_at_block_finished_keeps_the_suggestion(case):
    cut = _stopped_early(case)
    out = postprocess(cut, prefix=case["prefix"], suffix=case["suffix"], mode="multi",
                      grammar=case["language"], stop=case.get("stop", ()))
    assert out == case["expected"], (cut, out)


def test_block_finished_stops_some_golden_generations():
    stopped = [c["name"] for c in MULTI if _stopped_early(c) != c["raw"]]
    assert len(stopped) >= 3, stopped
