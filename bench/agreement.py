"""How often the transformers backend's greedy completion equals llama.cpp's, on FIM prompts cut from real code.

Both backends load the same GGUF (the default model): llama.cpp runs it quantized (Q4_K_M), transformers
dequantizes it to float32, so the two compute slightly different numbers and greedy decoding can part
ways where two tokens are nearly tied. The prompts are cut from the Python sources installed in this
virtual environment (pygls, lsprotocol, diskcache, cattrs, _pytest, ...): at a random code line, the
cursor sits after the indentation, the prefix is the 30 lines before, the suffix the 8 lines after, and
the FIM prompt is rendered with the model's template from prompts/fim.toml. A prompt agrees when the first
non-empty line of both completions is identical. tests/e2e/test_transformers_backend.py runs the first
prompts of the same set.

Run: .venv/bin/python bench/agreement.py [--n 40] [--threads 1] [--seed 7]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import sys
import sysconfig
import threading
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lsp_server.backends.base import GenerationRequest  # noqa: E402
from lsp_server.prompts import get_template, render  # noqa: E402

PACKAGES = ("pygls", "lsprotocol", "diskcache", "cattrs", "_pytest", "pluggy", "hypothesis", "tree_sitter")
PREFIX_LINES = 30
SUFFIX_LINES = 8
MAX_TOKENS = 24


@dataclass(frozen=True)
class Cut:
    where: str  # file:line
    prefix: str
    suffix: str
    expected: str  # the line the user actually wrote there (for reference; not part of the agreement)


def source_files() -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"])
    files: list[Path] = []
    for pkg in PACKAGES:
        root = site / pkg
        if root.is_dir():
            files += sorted(p for p in root.rglob("*.py") if p.stat().st_size > 2000)
    return files


def cut_prompts(n: int, seed: int = 7) -> list[Cut]:
    """n cursor positions in real code, one per file, chosen reproducibly."""
    rng = random.Random(seed)
    files = source_files()
    if not files:
        raise SystemExit("no Python sources found under site-packages (is this the project's venv?)")
    rng.shuffle(files)
    site = Path(sysconfig.get_paths()["purelib"])
    cuts: list[Cut] = []
    for path in files:
        source = path.read_text(encoding="utf-8", errors="replace")
        lines = source.split("\n")
        prose = _string_lines(source)
        candidates = [i for i in range(PREFIX_LINES, len(lines) - SUFFIX_LINES)
                      if i not in prose and _is_code_line(lines[i]) and lines[i].startswith("    ")]
        if not candidates:
            continue
        i = rng.choice(candidates)
        indent = len(lines[i]) - len(lines[i].lstrip())
        prefix = "\n".join(lines[i - PREFIX_LINES : i]) + "\n" + lines[i][:indent]
        suffix = "\n" + "\n".join(lines[i + 1 : i + 1 + SUFFIX_LINES]) + "\n"
        cuts.append(Cut(f"{path.relative_to(site)}:{i + 1}", prefix, suffix, lines[i][indent:]))
        if len(cuts) == n:
            break
    return cuts


def _string_lines(source: str) -> set[int]:
    """0-based lines that lie inside a multi-line string (docstrings): prose, not code."""
    inside: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                inside.update(range(tok.start[0] - 1, tok.end[0]))
    except (tokenize.TokenError, SyntaxError):
        return set(range(len(source.split("\n"))))  # unreadable: take nothing from this file
    return inside


def _is_code_line(line: str) -> bool:
    text = line.strip()
    return len(text) >= 8 and not text.startswith(("#", '"', "'", "@")) and not text.endswith(('"""', "'''"))


def first_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return line.rstrip()
    return ""


def request_for(cut: Cut, template_name: str = "qwen2.5-coder") -> GenerationRequest:
    template = get_template(template_name)
    return GenerationRequest(prompt=render(template, cut.prefix, cut.suffix), max_tokens=MAX_TOKENS,
                             stop=tuple(template.stop), stop_at_newline=True)


def complete(backend, cut: Cut) -> str:
    return first_line(backend.generate(request_for(cut), threading.Event()).text)


def default_model_path() -> Path:
    from lsp_server import catalog

    return catalog.model_path(catalog.load_catalog().get("default"))


def load_backends(threads: int):
    from lsp_server.backends.llama_cpp import LlamaCppBackend
    from lsp_server.backends.transformers_backend import TransformersBackend

    path = default_model_path()
    llama = LlamaCppBackend(path, n_threads=threads)
    llama.load()
    hf = TransformersBackend(path, n_threads=threads)
    hf.load()
    return llama, hf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40, help="prompts (default 40)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="threads per backend (default 1)")
    ap.add_argument("--quiet", action="store_true", help="only the summary")
    args = ap.parse_args()
    cuts = cut_prompts(args.n, args.seed)
    t0 = time.monotonic()
    llama, hf = load_backends(args.threads)
    print(f"loaded both backends in {time.monotonic() - t0:.1f} s (transformers {hf.load_seconds:.1f} s)")
    same = same_tokens = 0
    t_llama = t_hf = 0.0
    for k, cut in enumerate(cuts, 1):
        same_tokens += llama.tokenize(request_for(cut).prompt) == hf.tokenize(request_for(cut).prompt)
        t = time.monotonic()
        a = complete(llama, cut)
        t_llama += time.monotonic() - t
        t = time.monotonic()
        b = complete(hf, cut)
        t_hf += time.monotonic() - t
        same += a == b
        if not args.quiet:
            mark = "=" if a == b else "≠"
            print(f"{k:3d} {mark} {cut.where}\n      llama.cpp:    {a!r}\n      transformers: {b!r}")
    n = len(cuts)
    print(f"\nagreement (first line of the greedy completion): {same}/{n} = {same / n:.0%}")
    print(f"identical prompt tokenization: {same_tokens}/{n}")
    print(f"time: llama.cpp {t_llama:.1f} s, transformers {t_hf:.1f} s for {n} prompts "
          f"(threads={args.threads}, max_tokens={MAX_TOKENS})")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"{hf.info().get('transformers')} / torch {hf.info().get('torch')}")
    llama.close()
    hf.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
