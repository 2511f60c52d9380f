"""Focused tests for each post-processing step."""

import time

from lsp_server.postprocess import (
    align_first_line,
    balance_brackets,
    count_syntax_errors,
    detect_indentation,
    drop_leading_newlines,
    normalize_indentation,
    postprocess,
    remove_prefix_echo,
    remove_suffix_overlap,
    strip_chat_noise,
    strip_special_tokens,
    syntax_check,
    truncate_at_enclosing_close,
    truncate_block,
    truncate_single_line,
)

# 1. special tokens / stop strings


def test_end_tokens_cut_generation():
    assert strip_special_tokens("a + b<|endoftext|>junk") == "a + b"
    assert strip_special_tokens("x<|im_end|>") == "x"
    assert strip_special_tokens("x\n<|file_sep|>other.py\n") == "x\n"
    assert strip_special_tokens("x<EOT>y") == "x"
    assert strip_special_tokens("x<｜fim▁end｜>y") == "x"
    assert strip_special_tokens("x<|some_unknown|>y") == "x<|some_unknown|>y"
    assert strip_special_tokens("x<|eot_custom|>y") == "x"


def test_middle_tokens_removed():
    assert strip_special_tokens("<|fim_middle|>a") == "a"
    assert strip_special_tokens("<MID>a") == "a"
    assert strip_special_tokens("<fim_middle>a") == "a"
    # An echo of the whole prompt before the middle token is dropped.
    assert strip_special_tokens("<|fim_prefix|>p<|fim_suffix|>s<|fim_middle|>body") == "body"


def test_stop_strings():
    assert strip_special_tokens("a\n\nb", ["\n\n"]) == "a"
    assert strip_special_tokens("abc", ["", "c"]) == "ab"


# 2. chat noise


def test_fenced_block_keeps_inside():
    raw = "Here is the code:\n```python\nreturn 1\n```\nHope this helps."
    assert strip_chat_noise(raw) == "return 1"
    assert strip_chat_noise("```\nx = 1\n").rstrip() == "x = 1"


def test_stray_closing_fence_after_code():
    assert strip_chat_noise("a + b\n```") == "a + b"
    assert strip_chat_noise("a + b```") == "a + b"


def test_leading_prose_lines_dropped_but_code_kept():
    assert strip_chat_noise("Sure! Here's the fix:\nreturn x") == "return x"
    assert strip_chat_noise("sure = compute()") == "sure = compute()"
    assert strip_chat_noise("for idx, elem in enumerate(numbers):") == "for idx, elem in enumerate(numbers):"
    assert strip_chat_noise("return x\n\nThis function returns x.").rstrip() == "return x"


def test_prefix_echo_current_line():
    assert remove_prefix_echo("return a + b", "def f(a, b):\n    return ") == "a + b"
    assert remove_prefix_echo("    return a + b", "def f(a, b):\n    return ") == "a + b"
    # A genuine continuation that merely starts like the line is kept.
    assert remove_prefix_echo("turn_x", "    re") == "turn_x"


def test_prefix_echo_header_and_previous_lines():
    prefix = 'def add(a, b):\n    """Sum."""\n    '
    assert remove_prefix_echo("def add(a, b):\n    return a + b", prefix) == "    return a + b"
    assert remove_prefix_echo("def add(a, b):\n    return a + b", "def add(a, b):\n") == "    return a + b"


def test_prefix_echo_keeps_repeated_statement_with_other_indent():
    prefix = "if x:\n        return False\n"
    assert remove_prefix_echo("    return False\n", prefix) == "    return False\n"


# 3. single line


def test_single_line_cut():
    assert truncate_single_line("a + b\nprint(1)") == ("a + b", True)
    assert truncate_single_line("a + b") == ("a + b", False)


def test_leading_newline_single_mode():
    assert drop_leading_newlines("\nfoo()", prefix="x = 1", suffix="\n", mode="single") == ""
    assert drop_leading_newlines("\n\nfoo()", prefix="x = 1\n", suffix="\n", mode="single") == "foo()"
    assert drop_leading_newlines("\nfoo()", prefix="x\n", suffix="y = 2\n", mode="single") == ""
    assert drop_leading_newlines("\n  foo()", prefix="x:", suffix="\n", mode="multi") == "\n  foo()"


def test_single_mode_inserts_whole_line_before_existing_text():
    assert postprocess("    y = 1\n", prefix="def f():\n", suffix="    return y\n", mode="single",
                       grammar="python") == "    y = 1\n"


# 4. block extent


def test_block_stops_at_dedent():
    text, ended = truncate_block("x = 1\n    return x\n\ndef g():\n    pass", prefix="def f():\n    ")
    assert text == "x = 1\n    return x" and ended


def test_block_definition_header_stops_at_sibling():
    text, _ = truncate_block("def g():\n    return 2\n\ndef h():\n    return 3\n", prefix="x = 1\n\n")
    assert text == "def g():\n    return 2"


def test_block_includes_one_closing_line():
    text, _ = truncate_block("  return 1;\n}\n\nfunction g() {}\n", prefix="function f() {\n  ")
    assert text == "  return 1;\n}"


def test_block_never_leaves_enclosing_function():
    text, _ = truncate_block("\n\ndef g():\n    pass", prefix="def f():\n    return 1")
    assert text == ""


def test_block_header_at_cursor_body_only_but_else_continues():
    text, _ = truncate_block("\n        a()\n    else:\n        b()\n    c()", prefix="def f():\n    if x:")
    assert text == "\n        a()\n    else:\n        b()"


def test_tree_sitter_close_of_enclosing_block():
    prefix = "function f() {\n  if (x) {\n"
    out = truncate_at_enclosing_close("    y();\n  } more();\n  z();\n", prefix=prefix, grammar="javascript")
    assert out == "    y();\n  } more();\n  z();\n"  # a closer followed by code is not a block end
    out = truncate_at_enclosing_close("    y();\n  }\n  z();\n}\nfoo();", prefix=prefix, grammar="javascript")
    assert out == "    y();\n  }"
    assert truncate_at_enclosing_close("    a\n  end\n  b\n", prefix="def f\n  if x\n", grammar="ruby") == "    a\n  end"


# 5. suffix overlap


def test_suffix_lines_repeated():
    assert remove_suffix_overlap("a()\n    return s", prefix="def f():\n    ", suffix="\n    return s\n") == "a()"
    assert remove_suffix_overlap("a();\n}", prefix="function f() {\n  ", suffix="\n}\n") == "a();"


def test_suffix_rest_of_line_repeated():
    assert remove_suffix_overlap("(0..10).collect();", prefix="let v = ", suffix=".collect();\n") == "(0..10)"
    # Not when the completion only coincides with the start of the suffix's line.
    assert remove_suffix_overlap("encode(", prefix="return ", suffix="encode(s))\n") == "encode("


def test_whole_completion_equal_to_next_line_is_dropped():
    assert postprocess("    return x\n", prefix="def f(x):\n", suffix="    return x\n", mode="single",
                       grammar="python") == ""


# 6. brackets


def test_closers_the_suffix_already_has():
    kw = dict(mode="single", grammar="python")
    assert balance_brackets("a, b)", prefix="foo(", suffix=")\n", **kw) == "a, b"
    assert balance_brackets("values))", prefix="print(sum(", suffix=")\n", **kw) == "values)"
    assert balance_brackets("foo()", prefix="print(", suffix=")\n", **kw) == "foo()"


def test_unopened_closer_cut():
    assert balance_brackets("x;)", prefix="let a = ", suffix="\n", mode="single", grammar="javascript") == "x;"
    assert balance_brackets("x)", prefix="# (\ny = ", suffix="\n", mode="single", grammar="python") == "x"


def test_brackets_in_strings_and_comments_ignored():
    assert balance_brackets("')' + x", prefix="y = ", suffix="\n", mode="single", grammar="python") == "')' + x"
    assert balance_brackets("1 # )", prefix="y = ", suffix="\n", mode="single", grammar="python") == "1 # )"
    assert balance_brackets("&'a str) {", prefix="fn f<'a>(s: ", suffix="\n", mode="single",
                            grammar="rust") == "&'a str) {"


def test_duplicate_closing_quote():
    assert balance_brackets('hi")', prefix='print("', suffix='")\n', mode="single", grammar="python") == "hi"


# 7. indentation


def test_detect_indentation():
    assert detect_indentation("a:\n\tb\n\t\tc\n") == (True, 4)
    assert detect_indentation("a:\n  b\n    c\n") == (False, 2)
    assert detect_indentation("a\nb\n") == (None, 4)


def test_spaces_to_tabs_and_back():
    assert normalize_indentation("x\n    y\n        z", prefix="f {\n\ta\n\t") == "x\n\ty\n\t\tz"
    assert normalize_indentation("x\n\ty", prefix="f {\n  a\n    b\n  ") == "x\n  y"


def test_align_first_line_drops_repeated_indent():
    assert align_first_line("    return 1", "def f():\n    ") == "return 1"
    assert align_first_line("  return 1", "f() {\n  ") == "return 1"


# 8. syntax


def test_count_syntax_errors():
    assert count_syntax_errors("x = (1\n", "python") > 0
    assert count_syntax_errors("x = 1\n", "python") == 0
    assert count_syntax_errors("x", None) is None


def test_syntax_check_trims_to_valid_lines():
    out = syntax_check("return 1\n    )))", prefix="def f():\n    ", suffix="\n", grammar="python")
    assert out == "return 1"
    assert syntax_check(")))", prefix="def f():\n    ", suffix="\n    return 1\n", grammar="python") == ""


def test_single_line_block_header_allowed():
    out = syntax_check("if (x) {", prefix="function f() {\n  ", suffix="\n}\n", grammar="javascript", mode="single")
    assert out == "if (x) {"


def test_no_grammar_skips_syntax_check():
    assert syntax_check("x)(", prefix="", suffix="", grammar=None) == "x)("


# composition


def test_postprocess_examples():
    assert postprocess("return a + b<|endoftext|>", prefix="def f(a, b):\n    return ", suffix="\n",
                       mode="single", grammar="python") == "a + b"
    assert postprocess("   \n", prefix="x = ", suffix="\n", mode="multi", grammar=None) == ""
    assert postprocess("", prefix="", suffix="", mode="single", grammar="python") == ""


def test_mid_line_space_kept_before_suffix_text():
    assert postprocess("[] if x else ", prefix="    return ", suffix="sorted(x)\n", mode="single",
                       grammar="python") == "[] if x else "


def test_fast_on_large_documents():
    prefix = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(3000)) + "def g(x):\n    "
    suffix = "\n" + "".join(f"def h{i}():\n    pass\n" for i in range(3000))
    postprocess("return x * 2\n", prefix=prefix, suffix=suffix, mode="multi", grammar="python")
    t = time.perf_counter()
    for _ in range(10):
        postprocess("return x * 2\n\ndef z():\n    pass", prefix=prefix, suffix=suffix, mode="multi", grammar="python")
    assert (time.perf_counter() - t) / 10 < 0.05
