"""FIM templates: each family's rendering is pinned to its exact special-token strings."""

import pytest

from lsp_server.prompts import ExtraFile, detect_template, get_template, load_templates, render

PRE, SUF = "def f(x):\n    return ", "\n\nprint(f(1))\n"

EXPECTED = {
    "qwen2.5-coder": "<|fim_prefix|>" + PRE + "<|fim_suffix|>" + SUF + "<|fim_middle|>",
    "codellama": "<PRE> " + PRE + " <SUF>" + SUF + " <MID>",
    "codellama-spm": "<PRE> <SUF>" + SUF + " <MID> " + PRE,
    "starcoder": "<fim_prefix>" + PRE + "<fim_suffix>" + SUF + "<fim_middle>",
    "starcoder-spm": "<fim_prefix><fim_suffix>" + SUF + "<fim_middle>" + PRE,
    "deepseek-coder": "<｜fim▁begin｜>" + PRE + "<｜fim▁hole｜>" + SUF + "<｜fim▁end｜>",
    "codestral": "[SUFFIX]" + SUF + "[PREFIX]" + PRE,
    "prefix-only": PRE,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_rendering_is_pinned(name):
    assert render(get_template(name), PRE, SUF) == EXPECTED[name]


def test_every_template_is_pinned():
    assert set(load_templates()) == set(EXPECTED)


def test_braces_and_placeholders_in_code_are_left_alone():
    tricky_prefix = "x = {'a': 1}  # {suffix} {prefix}\n"
    out = render(get_template("qwen2.5-coder"), tricky_prefix, "}")
    assert out == "<|fim_prefix|>" + tricky_prefix + "<|fim_suffix|>}<|fim_middle|>"


def test_suffix_first_families_put_the_prefix_last():
    for name in ("codellama-spm", "starcoder-spm", "codestral"):
        t = get_template(name)
        assert t.order == "spm"
        assert render(t, PRE, SUF).endswith(PRE)


def test_stop_tokens_present():
    assert "<EOT>" in get_template("codellama").stop
    assert "<|endoftext|>" in get_template("qwen2.5-coder").stop
    assert get_template("prefix-only").fim is False


def test_multi_file_layout_for_qwen():
    t = get_template("qwen2.5-coder")
    out = render(t, PRE, SUF, extra=[ExtraFile("util.py", "def g():\n    pass")], path="main.py", repo="proj")
    assert out.startswith("<|repo_name|>proj\n<|file_sep|>util.py\ndef g():\n    pass\n<|file_sep|>main.py\n<|fim_prefix|>")


def test_path_comment_layout_for_families_without_one():
    out = render(get_template("codellama"), PRE, SUF, extra=[ExtraFile("util.py", "X = 1")], path="main.py",
                 grammar="python")
    assert out.startswith("<PRE> # Path: util.py\nX = 1\n\n# Path: main.py\n" + PRE)


@pytest.mark.parametrize(
    "vocab, expected",
    [
        ({"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"}, "qwen2.5-coder"),
        ({"<fim_prefix>", "<fim_suffix>", "<fim_middle>"}, "starcoder"),
        ({"<PRE>", "<SUF>", "<MID>"}, "codellama"),
        ({"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"}, "deepseek-coder"),
        ({"[SUFFIX]", "[PREFIX]"}, "codestral"),
        ({"<PRE>"}, "prefix-only"),
        (set(), "prefix-only"),
    ],
)
def test_detect_template_from_vocabulary(vocab, expected):
    assert detect_template(lambda s: s in vocab).name == expected
