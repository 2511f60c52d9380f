"""Code actions' pure parts: definitions, targets, prompts, answer parsing, re-indentation, validation, edits."""

from __future__ import annotations

import pytest
from lsprotocol import types as lsp

from lsp_server import actions as A
from lsp_server.config import parse_settings
from lsp_server.context import get_parser

PY = '''import os

class Calc:
    @staticmethod
    def add(a, b):
        return a + b

    def sub(self, a, b):
        x = a - b
        return x

def top():
    pass
'''

JS = '''import { x } from "./x";

export function add(a, b) {
  return a + b;
}

const mul = (a, b) => {
  return a * b;
};
'''


def tree(text: str, grammar: str):
    return get_parser(grammar).parse(text.encode())


def target_at(text: str, grammar: str, needle: str, length: int = 0, **kw) -> A.Target:
    at = text.index(needle)
    return A.pick_target(text, tree(text, grammar), grammar, at, at + length, **kw)


# -- definitions ---------------------------------------------------------------------------------------------
def test_builtin_actions_are_data():
    actions = A.builtin_actions()
    assert list(actions) == ["explain", "refactor", "docstring", "fix", "tests"]
    assert actions["explain"].output == "markdown" and actions["tests"].output == "new_file"
    assert actions["fix"].when == "diagnostics" and actions["fix"].kind.startswith("quickfix")
    for spec in actions.values():
        assert "{code}" in spec.user and spec.title and 0 < spec.max_tokens <= 512


def test_user_actions_merge_override_and_report_errors():
    actions, errors = A.load_actions({
        "explain": {"max_tokens": 99, "model": "big"},
        "translate": {"title": "To Rust", "user": "Rewrite in Rust:\n{code}", "output": "markdown"},
        "broken": {"title": "x", "user": "{code}", "output": "sideways"},
        "partial": {"max_tokens": 10},
        "typo": {"title": "t", "user": "u", "maxtokens": 3},
    })
    assert actions["explain"].max_tokens == 99 and actions["explain"].model == "big"
    assert actions["explain"].user == A.builtin_actions()["explain"].user
    assert actions["translate"].output == "markdown" and actions["translate"].kind == "refactor.rewrite.infill"
    assert "broken" not in actions and "partial" not in actions and "typo" not in actions
    text = "\n".join(errors)
    assert "actions.broken.output: 'sideways' is not one of markdown, replace, new_file" in text
    assert "actions.partial: `title` is required" in text
    assert "actions.typo.maxtokens: unknown field" in text


def test_settings_validate_actions():
    settings, errors = parse_settings({"actions": {"mine": {"title": "T", "user": "{code}"}, "bad": 3},
                                       "actions_model": "codellama"})
    assert settings.actions == {"mine": {"title": "T", "user": "{code}"}}
    assert settings.actions_model == "codellama"
    assert errors == ["actions.bad: expected an object with title, user, output, ..."]
    settings, errors = parse_settings({"actions": ["x"]})
    assert settings.actions == {} and errors == ["actions: expected an object of named actions"]


def test_only_filter_is_hierarchical():
    assert A.matches_only("refactor.rewrite.infill", ["refactor"])
    assert A.matches_only("quickfix.infill", None)
    assert not A.matches_only("refactor.rewrite.infill", ["quickfix"])
    assert not A.matches_only("refactorx", ["refactor"])


# -- ranges and targets --------------------------------------------------------------------------------------
def test_check_range():
    A.check_range(PY, (0, 0), (13, 0))  # the empty line after the final newline is in the document
    A.check_range(PY, (0, 0), (0, 999))  # characters past the line end mean the line end (LSP)
    with pytest.raises(A.InvalidActionRequest, match="outside the document"):
        A.check_range(PY, (0, 0), (14, 0))
    with pytest.raises(A.InvalidActionRequest, match="before start"):
        A.check_range(PY, (3, 0), (1, 5))
    with pytest.raises(A.InvalidActionRequest, match="negative"):
        A.check_range(PY, (-1, 0), (1, 5))


def test_cursor_picks_the_enclosing_method_with_decorator():
    t = target_at(PY, "python", "return a + b")
    assert t.symbol == "add" and t.code.startswith("    @staticmethod") and t.indent == "    " and t.line_start


def test_cursor_on_a_header_picks_that_definition():
    assert target_at(PY, "python", "class Calc").symbol == "Calc"
    assert target_at(PY, "python", "sub(self").symbol == "sub"


def test_cursor_outside_definitions_picks_the_line():
    t = target_at(PY, "python", "import os")
    assert t.code == "import os" and t.node_type == "line"
    with pytest.raises(A.InvalidActionRequest, match="empty"):
        A.pick_target(PY, tree(PY, "python"), "python", PY.index("\n\nclass") + 1, PY.index("\n\nclass") + 1)


def test_selection_is_trimmed_and_snapped_to_line_start():
    start = PY.index("        x = a")
    t = A.pick_target(PY, tree(PY, "python"), "python", start + 3, PY.index("return x") + 8)
    assert t.code == "        x = a - b\n        return x" and t.line_start and t.indent == "        "


def test_selection_cutting_a_definition_takes_all_of_it():
    t = A.pick_target(PY, tree(PY, "python"), "python", PY.index("return x"), PY.index("def top") + 3)
    assert t.code.startswith("    def sub") and t.code.endswith("def top():\n    pass")


def test_mid_line_selection():
    t = target_at(PY, "python", "a - b", 5)
    assert t.code == "a - b" and not t.line_start


def test_javascript_targets():
    assert target_at(JS, "javascript", "return a + b").code.startswith("export function add")
    mul = target_at(JS, "javascript", "return a * b")
    assert mul.code.startswith("const mul") and mul.code.endswith("};")


def test_file_target():
    t = A.pick_target(PY, None, "python", 5, 5, target="file")
    assert t.start == 0 and t.code == PY.rstrip("\n")


# -- prompts -------------------------------------------------------------------------------------------------
def test_fill_leaves_other_braces():
    assert A.fill("{code} {x} {{y}}", {"code": "f({a})"}) == "f({a}) {x} {{y}}"


def test_messages_carry_code_language_instruction_and_diagnostics():
    t = target_at(PY, "python", "return a + b")
    spec = A.builtin_actions()["refactor"]
    system, user = A.build_messages(spec, t, grammar="python", path="/p/calc.py", instruction="Use lambdas.")
    assert system["role"] == "system" and "Python" in system["content"]
    assert "Use lambdas." in user["content"] and "```python\n@staticmethod\ndef add" in user["content"]
    default = A.build_messages(spec, t, grammar="python")[1]["content"]
    assert spec.instruction in default
    fix = A.build_messages(A.builtin_actions()["fix"], t, grammar="python",
                           diagnostics=A.format_diagnostics(PY, [{"line": 5, "message": "bad", "source": "lint"}]))
    assert "- bad (lint) at `return a + b`" in fix[1]["content"]
    tests = A.build_messages(A.builtin_actions()["tests"], t, grammar="python", path="/p/calc.py",
                             test_path="/p/test_calc.py")[1]["content"]
    assert "test_calc.py" in tests and "from calc import add" in tests


# -- answers -------------------------------------------------------------------------------------------------
def test_extract_code_from_fences_and_prose():
    e = A.extract_code("Sure!\n```python\ndef f():\n    return 1\n```\nThat's it.\n```\nf()\n```", "python")
    assert e.code == "def f():\n    return 1" and e.fenced and e.closed
    e = A.extract_code("```text\nnote\n```\n```py\nx = 1\n```", "python")
    assert e.code == "x = 1"
    e = A.extract_code("```python\ndef f():\n    return", "python")
    assert e.code == "def f():\n    return" and not e.closed
    e = A.extract_code("x = 1<|im_end|>", "python")
    assert e.code == "x = 1" and not e.fenced
    assert A.extract_code("   \n", "python") is None


def test_reindent_to_target_and_file_style():
    target = A.Target(0, 0, "", "    ", True)
    assert A.reindent("def f():\n    return 1\n", target, "    ") == "    def f():\n        return 1"
    assert A.reindent("def f():\n    return 1", A.Target(0, 0, "", "\t", True), "\t") == "\tdef f():\n\t\treturn 1"
    assert A.reindent("  def f():\n      return 1", A.Target(0, 0, "", "", True), "  ") == "def f():\n  return 1"
    mid = A.Target(0, 0, "", "    ", False)
    assert A.reindent("foo(\n    1)", mid, "    ") == "foo(\n        1)"


def test_indent_unit_detection():
    assert A.detect_indent_unit("a\n  b\n    c\n") == "  "
    assert A.detect_indent_unit("a\n\tb\n") == "\t"
    assert A.detect_indent_unit("a\n") == "    "


def test_syntax_errors():
    assert A.syntax_errors("def f():\n    return 1\n", "python") == 0
    assert A.syntax_errors("def f(:\n", "python") > 0
    assert A.syntax_errors("anything", None) is None


def test_plan_replacement_keeps_indentation_and_the_rest_of_the_file():
    t = target_at(PY, "python", "return a + b")
    answer = "Here:\n```python\n@staticmethod\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n    return a + b\n```"
    planned = A.plan_replacement(answer, "stop", A.builtin_actions()["docstring"], PY, t, "python")
    assert planned.new_text == '    @staticmethod\n    def add(a, b):\n        """Add."""\n        return a + b'
    assert planned.new_document == PY.replace("    def add(a, b):\n", '    def add(a, b):\n        """Add."""\n')


@pytest.mark.parametrize("answer, reason", [
    ("I cannot help with that, sorry.", "prose, not code"),
    ("```python\ndef add(a, b:\n    return", "cut off at max_tokens"),
    ("```python\ndef plus(a, b):\n    return a + b\n```", "no longer defines `add`"),
    ("```python\n@staticmethod\ndef add(a, b):\n    return a + b\n```", "unchanged"),
    ("```python\n```", "no code"),
])
def test_unusable_answers_say_why(answer, reason):
    t = target_at(PY, "python", "return a + b")
    with pytest.raises(A.UnusableAnswer, match=reason):
        A.plan_replacement(answer, "length" if "cut off" in reason else "stop", A.builtin_actions()["docstring"],
                           PY, t, "python")


def test_new_syntax_errors_are_rejected_but_old_ones_tolerated():
    broken = "def f(:\n    pass\n\ndef g():\n    return 1\n"
    t = target_at(broken, "python", "return 1")
    ok = A.plan_replacement("```python\ndef g():\n    return 2\n```", "stop", A.builtin_actions()["refactor"],
                            broken, t, "python")
    assert "return 2" in ok.new_document
    with pytest.raises(A.UnusableAnswer, match="syntax errors"):
        A.plan_replacement("```python\ndef g(:\n    return 2\n```", "stop", A.builtin_actions()["refactor"],
                           broken, t, "python")


def test_new_file_replaces_a_pasted_copy_with_an_import():
    answer = ("```python\nimport pytest\n\ndef square(n):\n    return n * n\n\n"
              "def test_square():\n    assert square(3) == 9\n```")
    planned = A.plan_new_file(answer, "stop", A.builtin_actions()["tests"], "python", "/p/test_m.py",
                              module="m", symbol="square")
    assert planned.new_text.startswith("import pytest\nfrom m import square\n")
    assert "def square" not in planned.new_text and "def test_square" in planned.new_text
    with pytest.raises(A.UnusableAnswer, match="syntax errors"):
        A.plan_new_file("```python\ndef test_x(:\n```", "stop", A.builtin_actions()["tests"], "python", "/p/t.py")


def test_markdown_answer_closes_a_cut_off_fence():
    assert A.markdown_answer("Text\n```python\nx = 1") == "Text\n```python\nx = 1\n```"
    with pytest.raises(A.UnusableAnswer):
        A.markdown_answer("<|im_end|>")


# -- files and edits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, grammar, expected", [
    ("/s/calc.py", "python", "/s/test_calc.py"),
    ("/s/calc.ts", "typescript", "/s/calc.test.ts"),
    ("/s/calc.go", "go", "/s/calc_test.go"),
    ("/s/Calc.java", "java", "/s/CalcTest.java"),
    ("/s/calc.rs", "rust", "/s/calc_tests.rs"),
    ("/s/calc.txt", None, "/s/test_calc.txt"),
])
def test_test_file_names(path, grammar, expected):
    assert A.test_file_path(path, grammar, exists=lambda p: False) == expected


def test_test_file_never_overwrites():
    taken = {"/s/test_calc.py", "/s/test_calc_2.py", "/s/calc.test.js"}
    assert A.test_file_path("/s/calc.py", "python", exists=taken.__contains__) == "/s/test_calc_3.py"
    assert A.test_file_path("/s/calc.js", "javascript", exists=taken.__contains__) == "/s/calc_2.test.js"


def test_edits():
    t = target_at(PY, "python", "return x")
    edit = A.replace_edit("file:///p.py", 3, PY, t, "NEW")
    change = edit.document_changes[0]
    assert change.text_document.version == 3
    assert change.edits[0].range == lsp.Range(start=lsp.Position(7, 0), end=lsp.Position(9, 16))
    assert A.replace_edit("file:///p.py", 3, PY, t, "NEW", document_changes=False).changes["file:///p.py"]
    create, fill = A.new_file_edit("file:///t.py", "x\n").document_changes
    assert isinstance(create, lsp.CreateFile) and not create.options.overwrite
    assert fill.edits[0].new_text == "x\n"


def test_explanation_names_and_header():
    t = target_at(PY, "python", "return x")
    assert A.explanation_name("/p/calc.py", t, PY) == "calc-sub-L8"
    assert A.explanation_markdown("Explain this code (infill)", "/p/calc.py", t, PY, "Body").startswith(
        "# Explain this code: `sub` (calc.py:8)\n\nBody")


def test_new_file_imports_what_it_tests_and_drops_a_dangling_comment():
    answer = "```python\nimport pytest\n\ndef test_square():\n    assert square(3) == 9\n\n    # Test case 2"
    planned = A.plan_new_file(answer, "length", A.builtin_actions()["tests"], "python", "/p/test_m.py",
                              module="m", symbol="square")
    assert planned.new_text == "import pytest\nfrom m import square\n\ndef test_square():\n    assert square(3) == 9\n"
    unrelated = A.plan_new_file("```python\ndef test_x():\n    assert 1\n```", "stop", A.builtin_actions()["tests"],
                                "python", "/p/t.py", module="m", symbol="square")
    assert "import" not in unrelated.new_text


def test_repeated_imports_are_not_pasted_into_the_target():
    text = "import json\n\n\ndef f(p):\n    return json.load(p)\n"
    t = target_at(text, "python", "return json")
    planned = A.plan_replacement("```python\nimport json\n\ndef f(p):\n    with open(p) as h:\n        return json.load(h)\n```",
                                 "stop", A.builtin_actions()["refactor"], text, t, "python")
    assert planned.new_text.startswith("def f(p):") and planned.new_document.count("import json") == 1


def test_a_test_file_without_tests_is_refused():
    with pytest.raises(A.UnusableAnswer, match="no tests"):
        A.plan_new_file("```python\nimport pytest\n\ndef square(n):\n    return n * n\n```", "stop",
                        A.builtin_actions()["tests"], "python", "/p/test_m.py", module="m", symbol="square")


def test_a_cut_off_test_file_keeps_what_parses():
    answer = ("```python\nfrom m import square\n\ndef test_one():\n    assert square(2) == 4\n\n"
              "    # case 2\n    values = {'a': 1,\n    'b")
    planned = A.plan_new_file(answer, "length", A.builtin_actions()["tests"], "python", "/p/test_m.py",
                              module="m", symbol="square")
    assert planned.new_text == "from m import square\n\ndef test_one():\n    assert square(2) == 4\n"
