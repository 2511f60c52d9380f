"""Incremental DocumentTree updates must equal a fresh parse (lsp_server.context.tree)."""

import random

import pytest

from lsp_server.context.languages import get_parser
from lsp_server.context.tree import DocumentTree

SAMPLES = {
    "python": 'import os\n\ndef f(a, b):\n    """dóc 😀"""\n    return a + b\n\nclass C:\n    x = "ñ"\n',
    "javascript": "const s = 'é';\nfunction f(a) {\n  return a * 2; // 😀\n}\n",
    "rust": "fn main() {\n    let s = \"中文\";\n    println!(\"{}\", s);\n}\n",
    "c": "#include <stdio.h>\nint main(void) {\n  puts(\"ü\");\n  return 0;\n}\n",
    "lua": "local t = {}\nfunction t.f(x)\n  return x .. 'ß'\nend\n",
}
INSERTS = ["x", "é", "😀", "中文", "\n", "\r\n", "(", ")", "{", "}", '"', "  ", "return 1\n", "def g():\n    pass\n"]


def _nodes(tree):
    out = []
    stack = [tree.root_node]
    while stack:
        n = stack.pop()
        out.append((n.type, n.start_byte, n.end_byte, tuple(n.start_point), tuple(n.end_point), n.is_missing))
        stack.extend(reversed(n.children))
    return out


@pytest.mark.parametrize("grammar", sorted(SAMPLES))
def test_random_edits_match_fresh_parse(grammar):
    rng = random.Random(hash(grammar) & 0xFFFF)
    doc = DocumentTree(SAMPLES[grammar], grammar)
    assert doc.tree is not None
    for step in range(120):
        text = doc.text
        a = rng.randint(0, len(text))
        b = min(len(text), a + rng.choice([0, 0, 1, 2, 5]))
        doc.apply_change(a, b, rng.choice(INSERTS + [""]))
        if step % 3 == 0:  # also exercise several edits before one reparse
            continue
        fresh = get_parser(grammar).parse(doc.text.encode("utf-8"))
        assert str(doc.tree.root_node) == str(fresh.root_node)
        assert _nodes(doc.tree) == _nodes(fresh)


def test_replace_all_and_no_grammar():
    doc = DocumentTree("x = 1\n", "python")
    doc.replace_all("def f():\n    pass\n")
    assert "function_definition" in str(doc.tree.root_node)
    plain = DocumentTree("hello", None)
    plain.apply_change(5, 5, " world")
    assert plain.text == "hello world" and plain.tree is None


def test_change_offsets_are_clamped():
    doc = DocumentTree("abc", "python")
    doc.apply_change(10, 2, "Z")
    assert doc.text == "abcZ"
    doc.apply_change(-3, 1, "")
    assert doc.text == "bcZ"
    assert str(doc.tree.root_node) == str(get_parser("python").parse(b"bcZ").root_node)
