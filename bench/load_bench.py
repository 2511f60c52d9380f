"""Scale-out load benchmark: N simulated editors share ONE llama-server with parallel slots.

Each editor is a real language-server process (`python -m lsp_server serve`, backend `llama_server`)
driven over stdio by an InfillClient, exactly as an editor drives it. Each replays a short typing
session in its own file: it types a new function into a module line by line, and after the first word
of each line (the point where an editor's debounce fires) it asks for an inline completion, waits for
the answer, "reads" it for THINK_S, then types the rest of the line. Latency is measured from the
request to the answer at the client. All N editors start together; throughput is completions per
second of wall time for the whole run.

    .venv/bin/python bench/load_bench.py                      # N = 1, 4, 16 against a fresh llama-server
    .venv/bin/python bench/load_bench.py --ns 1,4 --url http://gpu-box:8080   # an existing server

The llama-server binary comes from scripts/build_llama_server.sh; the model is the default one.
Completion caches are off so that every request reaches the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsp_server import catalog  # noqa: E402
from lsp_server.backends.managed import free_port, wait_healthy  # noqa: E402
from lsp_server.client import InfillClient  # noqa: E402
from lsp_server.config import cache_home  # noqa: E402

THINK_S = 0.3

HEADER = '''"""Inventory helpers for warehouse {i}."""

import math


def total_price_{i}(items):
    total = 0
    for item in items:
        total += item.price * item.quantity
    return total


'''
FOOTER = '''

def report_{i}(items):
    print("total", total_price_{i}(items))
'''
# the function each editor types; a completion is requested after the first word of each line
TYPED = [
    "def average_price_{i}(items):",
    "    if not items:",
    "        return 0",
    "    prices = [item.price for item in items]",
    "    return sum(prices) / len(prices)",
    "",
    "def max_quantity_{i}(items):",
    "    return max(item.quantity for item in items)",
]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def editor(i: int, url: str, requests: int, tmp: Path, ready: asyncio.Event, go: asyncio.Event,
                 slot: int) -> list[dict]:
    model = {"backend": "llama_server", "url": url, "model": "default", "slot_id": slot, "timeout_s": 600}
    opts = {"model": "team", "load": "startup", "cache": {"disk": False, "memory_entries": 0},
            "models": {"team": model}}
    results: list[dict] = []
    async with InfillClient(opts) as client:
        for _ in range(600):  # wait until the backend is loaded (vocabulary read, server verified)
            if (await client.status())["state"] == "ready":
                break
            await asyncio.sleep(0.1)
        uri = (tmp / f"editor_{i}.py").as_uri()
        header, footer = HEADER.format(i=i), FOOTER.format(i=i)
        client.open(uri, header + footer, "python")
        line, col = header.count("\n"), 0
        ready.set()
        await go.wait()
        for raw in TYPED:
            if len(results) >= requests:
                break
            text = raw.format(i=i)
            stripped = text.lstrip()
            indent = text[: len(text) - len(stripped)]
            first = indent + (stripped.split(" ", 1)[0] + " " if " " in stripped else stripped)
            client.change(uri, (line, col), (line, col), first)
            col += len(first)
            if stripped:
                t0 = time.perf_counter()
                answer = await client.inline(uri, line, col)
                latency = time.perf_counter() - t0
                last = (await client.status())["last"]
                results.append({"editor": i, "latency": latency, "chars": len(answer),
                                "source": last.get("source"), "evaluated": last.get("evaluated_tokens", 0),
                                "prompt": last.get("prompt_tokens", 0), "generated": last.get("generated_tokens", 0)})
                await asyncio.sleep(THINK_S)
            rest = text[len(first):] + "\n"
            client.change(uri, (line, col), (line, col), rest)
            line, col = line + 1, 0
    return results


async def run_n(n: int, url: str, requests: int, slots: int, pin: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        readies = [asyncio.Event() for _ in range(n)]
        go = asyncio.Event()
        tasks = [asyncio.create_task(editor(i, url, requests, Path(tmp), readies[i], go, i % slots if pin else -1))
                 for i in range(n)]
        await asyncio.gather(*(r.wait() for r in readies))
        t0 = time.perf_counter()
        go.set()
        per_editor = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    rows = [r for rs in per_editor for r in rs]
    lat = [r["latency"] * 1000 for r in rows]
    return {
        "n": n, "requests": len(rows), "answered": sum(1 for r in rows if r["chars"]),
        "errors": sum(1 for r in rows if r["source"] == "error"),
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "max_ms": max(lat) if lat else 0,
        "throughput": len(rows) / wall if wall else 0, "wall_s": wall,
        "mean_prompt": statistics.mean(r["prompt"] for r in rows) if rows else 0,
        "mean_evaluated": statistics.mean(r["evaluated"] for r in rows) if rows else 0,
        "generated": sum(r["generated"] for r in rows),
    }


def start_server(binary: Path, model: Path, slots: int, ctx: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"load-bench-llama-server-{port}.log", "wb")
    cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-c", str(ctx), "--no-webui"] + (["-t", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, 300)
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="1,4,16", help="editor counts (default 1,4,16)")
    ap.add_argument("--requests", type=int, default=5, help="completions per editor (default 5)")
    ap.add_argument("--url", default="", help="use this llama-server instead of starting one")
    ap.add_argument("--binary", default=str(cache_home() / "bin" / "llama-server"))
    ap.add_argument("--slots", type=int, default=4, help="llama-server -np (default 4)")
    ap.add_argument("--ctx", type=int, default=8192, help="llama-server -c, shared by the slots (default 8192)")
    ap.add_argument("--threads", type=int, default=0, help="llama-server -t (default: its own choice)")
    ap.add_argument("--pin", action="store_true", help="pin editor i to slot i %% slots (slot_id)")
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args()

    proc = None
    url = args.url
    if not url:
        model = catalog.model_path(catalog.load_catalog().get("default"))
        proc, url = start_server(Path(args.binary), model, args.slots, args.ctx, args.threads)
    try:
        results = []
        for n in (int(x) for x in args.ns.split(",")):
            r = asyncio.run(run_n(n, url, args.requests, args.slots, args.pin))
            results.append(r)
            print(f"N={n}: done in {r['wall_s']:.1f}s", file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nload benchmark: {platform.node()} {os.cpu_count()} CPUs, llama-server -np {args.slots} -c {args.ctx}"
          f"{' (pinned slots)' if args.pin else ''}, {args.requests} completions per editor, think time {THINK_S}s")
    print(f"{'N':>3} {'reqs':>5} {'answered':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'req/s':>6} {'wall s':>7} {'prompt tok':>10} {'evaluated':>9}")
    for r in results:
        print(f"{r['n']:>3} {r['requests']:>5} {r['answered']:>8} {r['errors']:>6} {r['p50_ms']:>8.0f} "
              f"{r['p95_ms']:>8.0f} {r['max_ms']:>8.0f} {r['throughput']:>6.2f} {r['wall_s']:>7.1f} "
              f"{r['mean_prompt']:>10.0f} {r['mean_evaluated']:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
