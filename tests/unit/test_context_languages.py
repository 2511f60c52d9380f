"""Per-language syntax boundaries: enclosing headers kept, suffix stops at scope end."""

import pytest

from lsp_server.context import Budgets, DocumentTree, build_context, get_parser, grammar_for

COUNT = lambda s: len(s) // 4 + 1  # noqa: E731

# grammar: (prelude, header lines, statement template, closing lines, following definition)
CASES = {
    "python": ("import os\n", ["class Holder:", "    def target_fn(self, a, b):"],
               "        x{i} = a + {i}", ["        return x1"], ["    def after_marker(self):", "        pass"]),
    "javascript": ("import x from './x';\n", ["function targetFn(a, b) {"], "  let x{i} = a + {i};",
                   ["  return x1;", "}"], ["function afterMarker() {}"]),
    "typescript": ("import { x } from './x';\n", ["export class Holder {", "  targetFn(a: number): number {"],
                   "    const x{i}: number = a + {i};", ["    return x1;", "  }"], ["  afterMarker(): void {}", "}"]),
    "tsx": ("import React from 'react';\n", ["const TargetFn = (a: number) => {"], "  const x{i} = a + {i};",
            ["  return <div>{x1}</div>;", "};"], ["function afterMarker() { return null; }"]),
    "go": ("package main\n\nimport \"fmt\"\n", ["func targetFn(a int) int {"], "\tx{i} := a + {i}",
           ["\treturn x1", "}"], ["func afterMarker() {}"]),
    "rust": ("use std::io;\n", ["impl Holder {", "    fn target_fn(&self, a: i32) -> i32 {"],
             "        let x{i} = a + {i};", ["        x1", "    }"], ["    fn after_marker() {}", "}"]),
    "java": ("import java.util.List;\n", ["public class Holder {", "  public int targetFn(int a) {"],
             "    int x{i} = a + {i};", ["    return x1;", "  }"], ["  void afterMarker() {}", "}"]),
    "c": ("#include \"x.h\"\n", ["int target_fn(int a) {"], "  int x{i} = a + {i};",
          ["  return x1;", "}"], ["void after_marker(void) {}"]),
    "cpp": ("#include <vector>\n", ["namespace ns {", "int target_fn(int a) {"], "  int x{i} = a + {i};",
            ["  return x1;", "}"], ["void after_marker() {}", "}"]),
    "csharp": ("using System;\n", ["public class Holder {", "  public int TargetFn(int a) {"],
               "    int x{i} = a + {i};", ["    return x1;", "  }"], ["  void AfterMarker() {}", "}"]),
    "ruby": ("require_relative 'x'\n", ["class Holder", "  def target_fn(a)"], "    x{i} = a + {i}",
             ["    x1", "  end"], ["  def after_marker", "  end", "end"]),
    "php": ("<?php\nrequire_once 'x.php';\n", ["function target_fn($a) {"], "  $x{i} = $a + {i};",
            ["  return $x1;", "}"], ["function after_marker() {}"]),
    "lua": ("local x = require('x')\n", ["function target_fn(a)"], "  local x{i} = a + {i}",
            ["  return x1", "end"], ["function after_marker() end"]),
    "bash": ("source ./x.sh\n", ["target_fn() {"], "  x{i}=$((a + {i}))", ["  echo \"$x1\"", "}"],
             ["after_marker() { :; }"]),
}


def _document(grammar):
    prelude, headers, stmt, closing, after = CASES[grammar]
    lines = prelude.rstrip("\n").split("\n") + [""] + headers
    body = [stmt.format(i=i) for i in range(120)]
    cursor_line = len(lines) + 100
    lines += body + closing + after
    text = "\n".join(lines) + "\n"
    start = sum(len(l) + 1 for l in lines[:cursor_line])
    offset = start + len(lines[cursor_line])  # end of statement 100
    return text, offset


def test_all_languages_have_parsers():
    for grammar in CASES:
        assert get_parser(grammar) is not None, grammar


@pytest.mark.parametrize("grammar", sorted(CASES))
@pytest.mark.parametrize("with_tree", [True, False])
def test_boundaries(grammar, with_tree):
    text, offset = _document(grammar)
    budgets = Budgets(prefix_tokens=320, suffix_tokens=400, window_step_lines=8)
    doc = DocumentTree(text, grammar if with_tree else None)
    ctx = build_context(text, offset, grammar if with_tree else None, COUNT, budgets, tree=doc)
    _, headers, _, closing, after = CASES[grammar]
    # Far from the top: the window was cut, and the header restores the scope.
    assert ctx.prefix_start > 0
    assert ctx.prefix.endswith(text[ctx.prefix_start:offset])
    assert ctx.prefix == ctx.header + text[ctx.prefix_start:offset]
    # Indentation alone cannot see an unindented C++ namespace: plain text
    # mode only promises the innermost header.
    for h in headers if with_tree else headers[-1:]:
        assert h.strip() in ctx.header, (grammar, ctx.header)
    assert COUNT(ctx.prefix) <= budgets.prefix_tokens
    # The suffix runs to the end of the enclosing scope and no further.
    assert closing[-1].strip() in ctx.suffix
    assert "after_marker" not in ctx.suffix.lower().replace("aftermarker", "after_marker")
    assert ctx.suffix.rstrip().endswith(closing[-1].strip())
    assert ctx.suffix_end == offset + len(ctx.suffix)
    if with_tree:
        # the file's imports survive the cut
        prelude = CASES[grammar][0].strip().split("\n")[-1]
        assert prelude in ctx.header, (grammar, ctx.header)


@pytest.mark.parametrize(
    "language_id,path,expected",
    [
        ("python", None, "python"),
        ("typescriptreact", None, "tsx"),
        ("javascriptreact", None, "javascript"),
        ("shellscript", None, "bash"),
        ("csharp", None, "csharp"),
        ("cpp", None, "cpp"),
        ("c", None, "c"),
        (None, "/a/b/main.rs", "rust"),
        (None, "x.tsx", "tsx"),
        ("plaintext", "notes.txt", None),
        ("markdown", None, None),
        (None, None, None),
        ("unknown", "file.go", "go"),
    ],
)
def test_grammar_for(language_id, path, expected):
    assert grammar_for(language_id, path) == expected


def test_unknown_grammar_parser_is_none():
    assert get_parser("no-such-language") is None
