"""The prompt layout with a pre-filled middle (Engine._render_prompt / _prefill_head).

Token counts come from a character-based counter: the layout does not depend on the tokenizer, and no
model is needed to check which text lands where. The latency effect is measured on the real model by
tests/e2e/test_warmup.py and bench/replay.py."""

from __future__ import annotations

import dataclasses

from lsp_server.config import Settings
from lsp_server.context import Mode
from lsp_server.documents import Snapshot
from lsp_server.engine import Engine
from lsp_server.prompts import get_template

QWEN = get_template("qwen2.5-coder")
MID = "<|fim_middle|>"
SUF = "<|fim_suffix|>"

DOC = '''import os


def first(path):
    """Read the first line."""
    with open(path) as fh:
        return fh.readline()


def second(path):
    return os.path.basename(path)
'''


class CharTokens:
    """Counts one token per four characters (budgets only)."""

    @staticmethod
    def count_tokens(text: str) -> int:
        return (len(text) + 3) // 4


def engine(prefill_lines: int = 8) -> Engine:
    s = Settings()
    s = dataclasses.replace(s, completion=dataclasses.replace(s.completion, prefill_lines=prefill_lines,
                                                                extra_files=False))
    return Engine(s)


def snap(text: str, version: int = 1) -> Snapshot:
    return Snapshot("file:///t/mod.py", version, text, "python", "python", None)


def prompt_at(eng: Engine, text: str, offset: int, template=QWEN, stable_only: bool = False) -> str:
    prompt, _ctx, _extra, _healed = eng._render_prompt(snap(text), offset, Mode.SINGLE, CharTokens(), template,
                                                       stable_only=stable_only)
    return prompt


def type_at(text: str, offset: int, keys: str) -> tuple[str, int]:
    return text[:offset] + keys + text[offset:], offset + len(keys)


def head(prompt: str) -> str:
    return prompt[: prompt.index(MID) + len(MID)]


def test_typed_text_of_the_cursor_line_follows_the_middle_marker():
    eng = engine()
    cursor = DOC.index("os.path.basename")
    prompt = prompt_at(eng, DOC, cursor)
    assert prompt.endswith(MID + "    return")  # the space typed last stays out (the model writes it)
    prefix = prompt[prompt.index("<|fim_prefix|>") + len("<|fim_prefix|>"): prompt.index(SUF)]
    suffix = prompt[prompt.index(SUF) + len(SUF): prompt.index(MID)]
    assert prefix.endswith("def second(path):\n")
    assert suffix.startswith("os.path.basename(path)")
    # the same document, in order: prefix + pre-filled middle + (generated) + suffix
    assert prefix + "    return " + suffix == DOC[DOC.index(prefix):cursor] + DOC[cursor:cursor + len(suffix)]
    assert eng._render_prompt(snap(DOC), cursor, Mode.SINGLE, CharTokens(), QWEN)[3] == " "


def test_prefix_and_suffix_stay_the_same_while_typing_across_lines():
    eng = engine(prefill_lines=8)
    text = DOC.replace("    return os.path.basename(path)\n", "")
    cursor = len(text)
    text, cursor = type_at(text, cursor, "    ")
    first = head(prompt_at(eng, text, cursor))
    for key in "name = os.path.basename(path)\n    return name.upper()":
        text, cursor = type_at(text, cursor, key)
        prompt = prompt_at(eng, text, cursor)
        assert head(prompt) == first, key
        typed = text[text.index("def second(path):\n") + len("def second(path):\n"):cursor]
        assert prompt.endswith(MID + typed.rstrip(" "))


def test_the_anchor_moves_after_prefill_lines_and_on_edits_above_it():
    eng = engine(prefill_lines=2)
    text = DOC.replace("    return os.path.basename(path)\n", "")
    cursor = len(text)
    heads = []
    for key in "    a = 1\n    b = 2\n    c = 3":
        text, cursor = type_at(text, cursor, key)
        heads.append(head(prompt_at(eng, text, cursor)))
    # one anchor for the first two lines, a new one (the third line's start) after them
    assert len(set(heads)) == 2, set(heads)
    assert prompt_at(eng, text, cursor).endswith(MID + "    c = 3")
    # an edit above the anchor: the text before the cursor line becomes the prefix again
    text = text.replace('"""Read the first line."""', '"""Read the first line of a file."""')
    cursor = len(text)
    prompt = prompt_at(eng, text, cursor)
    assert prompt.endswith(MID + "    c = 3")
    assert "first line of a file" in head(prompt)


def test_cursor_moving_above_the_anchor_re_anchors():
    eng = engine()
    end = DOC.index("os.path.basename")
    prompt_at(eng, DOC, end)
    up = DOC.index("fh.readline()")
    prompt = prompt_at(eng, DOC, up)
    assert prompt.endswith(MID + "        return")


def test_off_and_non_psm_templates_keep_the_plain_layout():
    cursor = DOC.index("os.path.basename")
    plain = prompt_at(engine(prefill_lines=0), DOC, cursor)
    assert plain.endswith(MID) and "    return " + SUF in plain
    spm = prompt_at(engine(), DOC, cursor, template=get_template("codestral"))
    assert spm.endswith("    return ")  # SPM: the prefix already comes last
    only = prompt_at(engine(), DOC, cursor, template=get_template("prefix-only"))
    assert only.endswith("def second(path):\n    return ")


def test_warm_up_prompt_is_the_start_of_the_next_request():
    eng = engine()
    text = DOC.replace("    return os.path.basename(path)\n", "")
    cursor = len(text)
    text, cursor = type_at(text, cursor, "    ret")
    stable = prompt_at(eng, text, cursor, stable_only=True)
    assert stable.endswith(MID)
    text, cursor = type_at(text, cursor, "urn")
    assert prompt_at(eng, text, cursor).startswith(stable)
    # without the pre-filled middle the stable part ends at the start of the cursor line
    eng0 = engine(prefill_lines=0)
    stable0 = prompt_at(eng0, text, cursor, stable_only=True)
    assert stable0.endswith("def second(path):\n") and SUF not in stable0


def test_jumping_to_another_place_re_anchors_even_below_the_anchor():
    eng = engine()
    two = "def a():\n    return \n\n\ndef b():\n    return \n"
    prompt_at(eng, two, two.index("return \n") + len("return "))
    prompt = prompt_at(eng, two, len(two) - 1)  # the second function's return line, 4 lines below
    assert prompt.endswith(MID + "    return")
    assert "def b():\n" + SUF in prompt


def test_retyping_a_real_function_keeps_the_prompt_start_while_the_anchor_holds():
    """diskcache's Cache.__contains__ (a project dependency) retyped key by key, as bench/replay.py does: the
    context engine's suffix and header flap while the code is half typed (scope ends move with syntax
    errors); the head is kept, so each prompt differs from the one before only in the last few characters."""
    import diskcache.core

    from lsp_server.context import DocumentTree

    source = open(diskcache.core.__file__, encoding="utf-8").read()
    body_start = source.index("        sql = self._sql", source.index("def __contains__"))
    body_end = source.index("\n\n", body_start)
    target = source[body_start:body_end]
    text = source[:body_start] + source[body_end:]
    eng = engine()
    cursor, prev, moved = body_start, None, 0
    for i, key in enumerate(target[:120]):
        text = text[:cursor] + key + text[cursor:]
        cursor += 1
        s = Snapshot("file:///t/core.py", i + 2, text, "python", "python", DocumentTree(text, "python").tree)
        prompt, _ctx, _extra, _healed = eng._render_prompt(s, cursor, Mode.SINGLE, CharTokens(), QWEN)
        if prev is not None:
            common = next((k for k, (a, b) in enumerate(zip(prev, prompt)) if a != b), min(len(prev), len(prompt)))
            if len(prev) - common > 8:  # more than the last few characters of the evaluated prompt redone
                moved += 1
        prev = prompt
    assert moved == 0
