"""Does shifted-suffix KV reuse pay? Prefix-only reuse beside prefix + tail reuse, on the real model.

While the user types at the end of the FIM prefix, the suffix and the closing FIM markers do not change,
but they sit after the edit, so llama.cpp's longest-common-prefix reuse re-evaluates them on every key.
`kv_reuse` (lsp_server/backends/llama_cpp.py) keeps their KV entries instead and shifts them to their new
positions, the approximation llama-server calls --cache-reuse: the kept entries were computed against the
old prefix. This replays real typing (a function from an installed package, retyped character by
character inside its file) through both configurations, same prompts, and prints tokens evaluated,
prompt time, and how often the two give the same first line.

    .venv/bin/python bench/kv_reuse.py [--keys 40] [--file PATH] [--function NAME]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import sysconfig
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lsp_server import catalog  # noqa: E402
from lsp_server.backends.base import GenerationRequest  # noqa: E402
from lsp_server.backends.llama_cpp import LlamaCppBackend  # noqa: E402
from lsp_server.context import Budgets, Mode, build_context, decide_mode  # noqa: E402
from lsp_server.prompts import get_template, render  # noqa: E402


def pick_function(path: str, name: str | None) -> tuple[str, int, int]:
    text = open(path, encoding="utf-8").read()
    tree = ast.parse(text)
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and len(n.body) >= 3]
    if name:
        funcs = [f for f in funcs if f.name == name] or funcs
    func = sorted(funcs, key=lambda f: -(f.end_lineno - f.lineno))[min(3, len(funcs) - 1)] if not name else funcs[0]
    lines = text.splitlines(keepends=True)
    body_start = sum(len(x) for x in lines[: func.body[0].lineno - 1])
    body_end = sum(len(x) for x in lines[: func.end_lineno])
    return text, body_start, body_end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=40, help="keystrokes replayed")
    ap.add_argument("--file", default=os.path.join(sysconfig.get_paths()["purelib"], "diskcache", "core.py"))
    ap.add_argument("--function", default="")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()

    model = catalog.model_path(catalog.load_catalog().get("default"))
    template = get_template("qwen2.5-coder")
    text, start, end = pick_function(args.file, args.function or None)
    body = text[start:end]
    plain = LlamaCppBackend(model, n_ctx=4096, kv_reuse=False)
    shifted = LlamaCppBackend(model, n_ctx=4096, kv_reuse=True)
    plain.load()
    shifted.load()
    rows = []
    typed_to = min(len(body), args.keys)
    for i in range(1, typed_to + 1):
        doc = text[:start] + body[:i] + text[end:]
        offset = start + i
        mode = decide_mode(doc, offset, "python", None)
        if mode == Mode.SKIP:
            mode = Mode.SINGLE
        ctx = build_context(doc, offset, "python", plain.count_tokens, Budgets(), mode=mode)
        prompt = render(template, ctx.prefix, ctx.suffix)
        request = GenerationRequest(prompt=prompt, max_tokens=args.max_tokens, stop=template.stop,
                                    stop_at_newline=True)
        row = {}
        for label, backend in (("plain", plain), ("shifted", shifted)):
            t0 = time.perf_counter()
            gen = backend.generate(request, threading.Event())
            row[label] = (gen.text.strip().split("\n")[0], gen.evaluated_tokens, gen.prompt_ms,
                          (time.perf_counter() - t0) * 1000)
        rows.append(row)
        print(f"{i:3d} plain {row['plain'][1]:4d} tok {row['plain'][2]:7.0f} ms | shifted {row['shifted'][1]:4d} tok "
              f"{row['shifted'][2]:7.0f} ms | same={row['plain'][0] == row['shifted'][0]}", flush=True)
    # the first keystroke is cold for both; leave it out
    rows = rows[1:]
    same = sum(r["plain"][0] == r["shifted"][0] for r in rows)
    print(f"\nfile {args.file} ({len(rows)} keystrokes after the first, prompt of ~{plain.count_tokens(prompt)} tokens)")
    for label in ("plain", "shifted"):
        ev = [r[label][1] for r in rows]
        pm = [r[label][2] for r in rows]
        tot = [r[label][3] for r in rows]
        print(f"{label:8s} evaluated tokens median {statistics.median(ev):6.0f}  prompt ms median {statistics.median(pm):7.0f}"
              f"  request ms median {statistics.median(tot):7.0f}")
    print(f"same first line: {same}/{len(rows)} ({100 * same / max(len(rows), 1):.0f}%)")


if __name__ == "__main__":
    main()
