"""The FIM training-set builder (lsp_server/tools/fim_dataset.py) on real source trees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_server.context import Mode
from lsp_server.prompts import get_template, render
from lsp_server.tools import fim_dataset
from lsp_server.tools.fim_dataset import Options, build

ROOT = Path(__file__).resolve().parents[2]
HAS_GIT = shutil.which("git") is not None


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# A real source tree that nobody edits while the tests run: the installed pygls package.
import pygls  # noqa: E402

TREE = Path(pygls.__file__).resolve().parent


@pytest.fixture(scope="module")
def project_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("fim")
    manifest = build(TREE, out, Options(per_file=6, seed=3))
    return out, manifest


def test_examples_are_the_servers_prompts_around_real_holes(project_set):
    out, manifest = project_set
    train, held = _rows(out / "train.jsonl"), _rows(out / "heldout.jsonl")
    assert manifest["files"]["used"] >= 20 and len(train) >= 60 and held
    template = get_template("qwen2.5-coder")
    for row in train + held:
        # exactly what the engine renders for this prefix/suffix window, and the hole's text as target
        assert row["prompt"] == render(template, row["prefix"], row["suffix"], path=row["path"], grammar="python")
        assert row["prompt"].startswith("<|fim_prefix|>") and row["prompt"].endswith("<|fim_middle|>")
        assert row["completion"] == row["middle"] + "<|endoftext|>"
        assert row["middle"].strip() and row["mode"] in (Mode.SINGLE.value, Mode.MULTI.value)
        # the hole sits between the end of the prefix window and the start of the suffix window in the file
        source = (TREE / row["path"]).read_text(encoding="utf-8")
        assert row["prefix"][-30:] + row["middle"] + row["suffix"][:30] in source, row
    assert {row["kind"] for row in train} == {"line", "block", "random"}


def test_block_holes_are_whole_syntax_nodes(project_set):
    out, _ = project_set
    blocks = [r for r in _rows(out / "train.jsonl") if r["kind"] == "block"]
    assert len(blocks) >= 20
    import ast

    parsed_ok = 0
    for row in blocks:
        # a Python statement or block body cut at node boundaries parses on its own once dedented
        lines = row["middle"].split("\n")
        indent = len(row["prefix"]) - len(row["prefix"].rstrip(" "))
        body = "\n".join([lines[0]] + [ln[indent:] if ln[:indent].isspace() else ln for ln in lines[1:]])
        try:
            ast.parse(body)
            parsed_ok += 1
        except SyntaxError:
            pass  # e.g. an `elif` clause or a `return` outside a function: whole nodes, not whole programs
    assert parsed_ok >= len(blocks) * 0.7, (parsed_ok, len(blocks))


def test_split_is_by_file_and_deterministic(project_set, tmp_path):
    out, manifest = project_set
    train_paths = {r["path"] for r in _rows(out / "train.jsonl")}
    held_paths = {r["path"] for r in _rows(out / "heldout.jsonl")}
    assert held_paths and not train_paths & held_paths
    assert held_paths <= set(manifest["heldout_files"])
    again = build(TREE, tmp_path, Options(per_file=6, seed=3))
    assert again["heldout_files"] == manifest["heldout_files"]
    assert (tmp_path / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


SECRET_AWS = "AKIA" + "ABCDEFGHIJKLMNOP"
SECRET_PEM = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----\n"


def _make_tree(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "app.py").write_text(
        "import os\n\n\ndef total(items):\n    result = 0\n    for item in items:\n        result += item.price\n"
        "    return result\n\n\nclass Cart:\n    def __init__(self):\n        self.items = []\n\n"
        "    def add(self, item):\n        self.items.append(item)\n        return len(self.items)\n")
    (root / "pkg" / "util.py").write_text(
        "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n")
    (root / "pkg" / "copy_of_util.py").write_text((root / "pkg" / "util.py").read_text())
    (root / "settings.py").write_text(f'AWS_KEY = "{SECRET_AWS}"\n\n\ndef region():\n    return "eu"\n')
    (root / "deploy.py").write_text(f'KEY = """{SECRET_PEM}"""\n\n\ndef run():\n    pass\n')
    (root / ".env").write_text("TOKEN=abc\n")
    (root / "blob.py").write_bytes(b"def f():\n    return 1\n\x00\x01\x02")
    (root / "min.js").write_text("var a=1;" * 400 + "\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("def built():\n    return 42\n")
    (root / "models.gen.py").write_text("def gen():\n    return 1\n")
    (root / "keep.gen.py").write_text("def kept():\n    return 2\n")
    (root / ".gitignore").write_text("build/\n*.gen.py\n!keep.gen.py\n")


@pytest.mark.parametrize("git", [False, True])
def test_gitignore_secrets_binaries_and_duplicates_stay_out(tmp_path, git):
    if git and not HAS_GIT:
        pytest.skip("git is not installed")
    src = tmp_path / "src"
    _make_tree(src)
    if git:
        subprocess.run(["git", "init", "-q", str(src)], check=True)
    out = tmp_path / "out"
    manifest = build(src, out, Options(per_file=9, heldout=0.5))
    rows = _rows(out / "train.jsonl") + _rows(out / "heldout.jsonl")
    used = {r["path"] for r in rows}
    assert used <= {"pkg/app.py", "pkg/util.py", "pkg/copy_of_util.py", "keep.gen.py"}
    assert "pkg/app.py" in used and "keep.gen.py" in used
    skipped = manifest["skipped"]
    assert "contains a AWS access key" == skipped["settings.py"]
    assert "private key" in skipped["deploy.py"]
    assert skipped["blob.py"].startswith("binary")
    assert "minified" in skipped["min.js"]
    assert skipped["pkg/util.py"] == "duplicate of pkg/copy_of_util.py"  # identical files: one copy, one split
    assert not {"build/out.py", "models.gen.py", ".env"} & (used | set(skipped))  # ignored: never even read
    everything = (out / "train.jsonl").read_text() + (out / "heldout.jsonl").read_text() + \
        (out / "manifest.json").read_text()
    assert SECRET_AWS not in everything and "PRIVATE KEY" not in everything.replace("contains a private key", "")
    assert manifest["files"]["train"] >= 1 and manifest["files"]["heldout"] >= 1


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_own_gitignore_matcher_agrees_with_git(tmp_path):
    """Outside a git work tree the builder reads .gitignore itself: it must list what git would list."""
    src = tmp_path / "tree"
    files = ["a.py", "b.log", "logs/x.py", "src/logs/y.py", "src/keep.log", "src/deep/z.py", "docs/a.md",
             "doc/build/c.py", "build/d.py", "src/build/e.py", "x/y/z/w.tmp.py", "n/only/t.py", "n/t.py",
             "src/.gitignore", "sub/[ab].py", "sub/a.py"]
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text("x = 1\n")
    (src / ".gitignore").write_text("*.log\n!src/keep.log\nlogs/\n/build/\ndoc/**/c.py\n*.tmp.*\nn/only\n"
                                    "sub/[ab].py\n# comment\n\n")
    (src / "src" / ".gitignore").write_text("deep/\n!keep.log\n")
    ours = sorted(fim_dataset._walk(src))
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    theirs = fim_dataset.list_files(src)
    assert ours == theirs
    assert "build/d.py" not in ours and "src/build/e.py" in ours and "src/keep.log" in ours


def test_cli_reports_bad_arguments_and_writes_the_set(tmp_path):
    script = ROOT / "scripts" / "build_fim_dataset.py"
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                          "--kinds", "line,sentences", "--template", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown kind 'sentences'" in bad.stderr and "not a directory" in bad.stderr
    assert "unknown FIM template 'nope'" in bad.stderr
    src = tmp_path / "src"
    _make_tree(src)
    good = subprocess.run([sys.executable, str(script), str(src), "--out", str(tmp_path / "o"), "--quiet",
                           "--template", "starcoder"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    summary = json.loads(good.stdout)
    assert summary["files"]["used"] == 3 and sum(summary["examples"].values()) > 0
    row = json.loads((tmp_path / "o" / "train.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("<fim_prefix>") and row["completion"].endswith("<|endoftext|>")
