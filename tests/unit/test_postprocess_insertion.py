"""Holes where an editor inserts whole lines or a block body (HumanEval infilling's shape): the mode
decision and the post-processing together must produce insertable text, never a skip or a glued line."""

import pytest

from lsp_server.context import DocumentTree, Mode, decide_mode
from lsp_server.postprocess import postprocess


def _decide(src, grammar="python", with_tree=True):
    offset = src.index("|")
    text = src.replace("|", "", 1)
    tree = DocumentTree(text, grammar) if with_tree and grammar else None
    return decide_mode(text, offset, grammar, tree)


MODES = [
    # In the indentation before a line of code: lines go above it (it used to be a skip); how many is
    # unknown, so multi, and post-processing stops where the model rejoins the code below.
    ("python", "def f(s):\n    out = ''\n|        if c in s:\n            out += c\n    return out\n", Mode.MULTI),
    ("python", "def f(s):\n    out = ''\n    |return out\n", Mode.MULTI),
    # ... and after a block header whose body is still empty, the body is wanted.
    ("python", "def f(g):\n    for x in g:\n        if x > 1:\n|        elif x > 0:\n            pass\n", Mode.MULTI),
    ("javascript", "function f(a) {\n  if (a) {\n|  }\n}\n", Mode.SINGLE),  # only a closer to the right
    # At the end of a header line with an empty body.
    ("python", "def f(l):\n    m = l[0]\n    for e in l:|\n    return m\n", Mode.MULTI),
    ("javascript", "function f(a) {|\n}\n", Mode.MULTI),
    # ... and in Python also when a body is already there (what follows the colon is new lines);
    # other languages keep single there.
    ("python", "def f(l):\n    for e in l:|\n        print(e)\n", Mode.MULTI),
    ("javascript", "function f(a) {|\n  return a;\n}\n", Mode.SINGLE),
    ("python", "def f(x):\n    y = x[1:|\n    return y\n", Mode.SINGLE),  # a slice, not a header
    # Inside a docstring before its text: still prose, no suggestion.
    ("python", 'def f():\n    """Sum.\n|    More text here.\n    """\n', Mode.SKIP),
    # Mid-identifier after code is still a skip.
    ("python", "x = foo|bar\n", Mode.SKIP),
]


@pytest.mark.parametrize("grammar,src,expected", MODES)
def test_mode_at_insertion_points(grammar, src, expected):
    assert _decide(src, grammar) == expected


@pytest.mark.parametrize("grammar,src,expected", [m for m in MODES if m[2] != Mode.SKIP or "foo" in m[1]])
def test_mode_without_tree(grammar, src, expected):
    assert _decide(src, grammar, with_tree=False) == expected


def test_whole_line_above_code_is_complete_python():
    prefix = "def encrypt(s):\n    d = 'abc'\n    out = ''\n"
    suffix = "        if c in d:\n            out += c\n    return out\n"
    out = postprocess("    for c in s:", prefix=prefix, suffix=suffix, mode="single", grammar="python")
    compile(prefix + out + suffix, "<t>", "exec")
