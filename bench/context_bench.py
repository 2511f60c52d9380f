"""Benchmark the context engine on real code.

* build_context latency (p50/p95) on a real 10,000-line Python file made by
  concatenating installed package sources (pygls, lsprotocol, ...), with the
  tree already parsed, and on small real files;
* a typing replay: a real function is retyped character by character in the
  middle of the big file; for each keystroke we measure how much of the
  prompt changed after the common prefix with the previous prompt (what a
  llama.cpp server must re-evaluate), for the cache-stable window versus a
  naive "last N tokens" window.

Token counts use a regex word/punctuation counter as a stand-in for the model
tokenizer (no model is loaded here).  Run: .venv/bin/python bench/context_bench.py
"""

from __future__ import annotations

import os
import random
import re
import statistics
import sys
import sysconfig
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lsp_server.context import Budgets, DocumentTree, build_context  # noqa: E402

_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")


def count_tokens(s: str) -> int:
    return len(_TOKEN.findall(s))


def real_sources() -> list[str]:
    site = sysconfig.get_paths()["purelib"]
    files = []
    for pkg in ("pygls", "lsprotocol", "cattrs", "attr", "pytest_lsp", "diskcache", "_pytest"):
        base = os.path.join(site, pkg)
        for dirpath, _, names in sorted(os.walk(base)):
            for n in sorted(names):
                if n.endswith(".py"):
                    files.append(os.path.join(dirpath, n))
    return files


def big_file(n_lines: int = 10_000) -> str:
    lines: list[str] = []
    for path in real_sources():
        with open(path, encoding="utf-8") as fh:
            lines.extend(fh.read().splitlines())
        if len(lines) >= n_lines:
            break
    return "\n".join(lines[:n_lines]) + "\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def latency(text: str, grammar: str, n: int, rng: random.Random) -> tuple[float, float, float]:
    doc = DocumentTree(text, grammar)
    t0 = time.perf_counter()
    assert doc.tree is not None
    parse_ms = (time.perf_counter() - t0) * 1000
    offsets = [rng.randint(0, len(text)) for _ in range(n)]
    for off in offsets:  # warm the per-line token cache, as a running server would be
        build_context(text, off, grammar, count_tokens, tree=doc)
    times = []
    for off in offsets:
        t0 = time.perf_counter()
        build_context(text, off, grammar, count_tokens, tree=doc)
        times.append((time.perf_counter() - t0) * 1000)
    return pct(times, 0.5), pct(times, 0.95), parse_ms


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def naive_prompt(text: str, offset: int, budgets: Budgets) -> str:
    """Last N tokens before the cursor (start slides with every keystroke), same suffix rule."""
    start = offset
    used = 0
    # walk back token by token in 256-char blocks
    while start > 0 and used < budgets.prefix_tokens:
        block = text[max(0, start - 256):start]
        toks = _TOKEN.findall(block)
        need = budgets.prefix_tokens - used
        if len(toks) <= need:
            used += len(toks)
            start -= len(block)
        else:
            start -= sum(len(t) for t in toks[-need:])
            used += need
    end = text.find("\n", offset)
    return text[start:offset] + "<SUF>" + text[offset:end if end != -1 else len(text)]


def replay(text: str) -> None:
    budgets = Budgets()
    # A real function from the big file, retyped where it was.
    matches = [m for m in re.finditer(r"\n(    def [^\n]+\n(?:        [^\n]*\n|\n){6,20})", text)]
    m = matches[len(matches) // 2]
    func = m.group(1)
    base = text[: m.start(1)] + text[m.end(1):]
    offset = m.start(1)
    doc = DocumentTree(base, "python")
    doc.tree  # noqa: B018  (parse before timing)
    stable_prev = naive_prev = None
    stats = {"stable": [], "naive": []}
    prefix_only = {"stable": [], "naive": []}
    stable_prefix_changes = []
    parse_ms, build_ms = [], []
    for ch in func:
        t0 = time.perf_counter()
        doc.apply_change(offset, offset, ch)
        offset += 1
        doc.tree  # noqa: B018  (incremental reparse)
        t1 = time.perf_counter()
        ctx = build_context(doc.text, offset, "python", count_tokens, budgets, tree=doc)
        t2 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1000)
        build_ms.append((t2 - t1) * 1000)
        stable = ctx.prefix + "<SUF>" + ctx.suffix
        naive = naive_prompt(doc.text, offset, budgets)
        if stable_prev is not None:
            for name, prev, cur in (("stable", stable_prev, stable), ("naive", naive_prev, naive)):
                keep = common_prefix(prev, cur)
                stats[name].append((len(cur) - keep, count_tokens(cur[keep:])))
                p_prev, p_cur = prev.split("<SUF>")[0], cur.split("<SUF>")[0]
                prefix_only[name].append(len(p_cur) - common_prefix(p_prev, p_cur))
            stable_prefix_changes.append(not ctx.prefix.startswith(prev_prefix))
        stable_prev, naive_prev, prev_prefix = stable, naive, ctx.prefix
    print(f"\ntyping replay: {len(func)} keystrokes retyping a {func.count(chr(10))}-line real method "
          f"at line {text[:m.start(1)].count(chr(10))} of the 10,000-line file")
    print(f"  per keystroke: apply_change+incremental reparse p50 {pct(parse_ms, .5):.2f} ms, "
          f"p95 {pct(parse_ms, .95):.2f} ms; build_context p50 {pct(build_ms, .5):.2f} ms, "
          f"p95 {pct(build_ms, .95):.2f} ms")
    print("  prompt = prefix + <SUF> + suffix; 'changed' = characters/tokens after the common prefix")
    print("  with the previous keystroke's prompt (what the server must re-evaluate)")
    for name in ("stable", "naive"):
        chars = [c for c, _ in stats[name]]
        toks = [t for _, t in stats[name]]
        label = "stable windows" if name == "stable" else "naive last-N  "
        print(f"  {label}: changed chars mean {statistics.mean(chars):7.1f} p95 {pct(chars, .95):6d} | "
              f"changed tokens mean {statistics.mean(toks):6.1f} p95 {pct(toks, .95):5d} | "
              f"total re-evaluated tokens {sum(toks)}")
    print(f"  prefix part only, changed chars mean: stable {statistics.mean(prefix_only['stable']):.1f}, "
          f"naive {statistics.mean(prefix_only['naive']):.1f} (the rest is the suffix, re-sent after <SUF>)")
    print(f"  stable prefix window moved (prefix not extended) on {sum(stable_prefix_changes)} "
          f"of {len(stable_prefix_changes)} keystrokes")


def main() -> None:
    rng = random.Random(42)
    text = big_file()
    print(f"big file: {text.count(chr(10))} lines, {len(text)} chars, from installed package sources")
    p50, p95, parse_ms = latency(text, "python", 300, rng)
    print(f"build_context 10,000-line file (tree parsed, 300 random cursors): p50 {p50:.2f} ms, "
          f"p95 {p95:.2f} ms (initial full parse {parse_ms:.1f} ms)")
    small = [p for p in real_sources() if 80 <= sum(1 for _ in open(p, encoding="utf-8")) <= 400][:20]
    times50, times95 = [], []
    for path in small:
        with open(path, encoding="utf-8") as fh:
            a, b, _ = latency(fh.read(), "python", 40, rng)
        times50.append(a)
        times95.append(b)
    print(f"build_context small files ({len(small)} files, 80-400 lines): median p50 "
          f"{statistics.median(times50):.2f} ms, max p95 {max(times95):.2f} ms")
    # Plain-text fallback on the same big file, for comparison.
    doc_text = text
    t = []
    for _ in range(100):
        off = rng.randint(0, len(doc_text))
        t0 = time.perf_counter()
        build_context(doc_text, off, None, count_tokens)
        t.append((time.perf_counter() - t0) * 1000)
    print(f"build_context plain-text fallback, 10,000-line file: p50 {pct(t, .5):.2f} ms, p95 {pct(t, .95):.2f} ms")
    replay(text)


if __name__ == "__main__":
    main()
