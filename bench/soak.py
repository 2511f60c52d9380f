"""Soak benchmark: hours of typing compressed into minutes against ONE server process (issue 9, "Load").

A simulated user types real code (this repository's own sources) into a few documents, one character per
didChange, with backspaces, pastes and newlines; every few edits it asks for an inline completion, and
many are superseded by the next keystrokes or cancelled with $/cancelRequest, as in an editor. Before
asking again the user waits for the previous answer, so the backlog stays bounded and the latency per
phase is comparable (edits come as fast as the server takes them: hours of typing in minutes).
Documents are closed and reopened as the user switches files. The run is cut into phases; after each one
the server's RSS memory, thread count and open file descriptors are read from /proc, with the completion
latency of that phase, so that leaks show as growth from phase to phase after the warm-up.

Default: the FAKE backend (test-only; it replays a recorded output after `--model-ms`): this soaks the
protocol, document, context, engine and cache layers, which run on every keystroke; the model's own
memory is fixed once loaded. `--real` runs the same session on the real default model at a smaller scale.

    python bench/soak.py                      # 50,000 edits, 10,000 completion requests (fake backend)
    python bench/soak.py --scale 0.1          # a quick run
    python bench/soak.py --real --scale 0.01  # the real default model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz.rawclient import RawClient  # noqa: E402 - a plain JSON-RPC client over the server's stdio


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def corpus() -> str:
    files = sorted((ROOT / "lsp_server").rglob("*.py"))
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


class Typist:
    """The editor side: documents as the user sees them, and the edits that change them."""

    def __init__(self, client: RawClient, rng: random.Random, source: str, n_docs: int):
        self.c, self.rng, self.source = client, rng, source
        self.docs: dict[str, list] = {}  # uri -> [text, version, cursor offset, source position]
        self.n_docs = n_docs

    def open(self, k: int) -> str:
        uri = f"file:///soak/project/module_{k}.py"
        start = self.rng.randrange(0, len(self.source) - 5000)
        text = self.source[start : start + self.rng.randrange(500, 4000)]
        self.docs[uri] = [text, 1, len(text), start + len(text)]
        self.c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": text}})
        return uri

    def close(self, uri: str) -> None:
        self.c.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        del self.docs[uri]

    @staticmethod
    def position(text: str, offset: int) -> dict:
        line = text.count("\n", 0, offset)
        start = text.rfind("\n", 0, offset) + 1
        return {"line": line, "character": len(text[start:offset].encode("utf-16-le")) // 2}

    def edit(self, uri: str) -> None:
        doc = self.docs[uri]
        text, version, cur, src = doc
        roll = self.rng.random()
        if roll < 0.08 and cur > 0:  # backspace
            new, a, b = "", cur - 1, cur
        elif roll < 0.09:  # paste a few lines
            new, a, b = self.source[src : src + self.rng.randrange(20, 300)], cur, cur
        else:  # type the next character of the source
            new, a, b = self.source[src % len(self.source)], cur, cur
        rng = {"start": self.position(text, a), "end": self.position(text, b)}
        text = text[:a] + new + text[b:]
        cur = a + len(new)
        doc[:] = [text, version + 1, cur, src + (len(new) if new else 0)]
        self.c.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version + 1},
                                                 "contentChanges": [{"range": rng, "text": new}]})

    def complete(self, uri: str) -> int:
        text, _v, cur, _s = self.docs[uri]
        return self.c.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": self.position(text, cur), "context": {"triggerKind": 2}})


def run(args: argparse.Namespace) -> dict:
    edits = int(args.edits * args.scale)
    completions = int(args.completions * args.scale)
    every = max(1, edits // max(1, completions))
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="infill-soak-"))
    if args.real:
        from lsp_server import catalog

        options = {"model": str(catalog.model_path(catalog.load_catalog().get("default"))), "load": "startup"}
    else:
        outputs = work / "outputs.json"
        outputs.write_text(json.dumps([{"prompt_contains": "", "output": "value = compute(a, b)\n",
                                        "delay_ms": args.model_ms}]))
        options = {"model": "fake", "models": {"fake": {"backend": "fake", "fake_outputs": str(outputs)}}}
    options["cache"] = {"dir": str(work / "cache")} if not args.no_disk_cache else {"disk": False}
    env = dict(os.environ, INFILL_LS_CACHE=str(work / "home"))
    client = RawClient(env=env, stderr_path=work / "server.log")
    phases = []
    try:
        client.initialize(options)
        if args.real:
            while client.call("infill/status", {}, timeout=120)["result"]["state"] != "ready":
                time.sleep(0.2)
        typist = Typist(client, rng, corpus(), args.docs)
        uris = [typist.open(k) for k in range(args.docs)]
        per_phase = max(1, edits // args.phases)
        done_edits = 0
        t_start = time.monotonic()
        for phase in range(args.phases):
            t0 = time.monotonic()
            ids: list[int] = []
            cancelled = 0
            for i in range(per_phase):
                uri = rng.choice(uris)
                typist.edit(uri)
                done_edits += 1
                if done_edits % every == 0:
                    if ids:  # the user reads one suggestion before asking again: a bounded backlog
                        client.wait(ids[-1], timeout=300)
                    msg_id = typist.complete(uri)
                    ids.append(msg_id)
                    if rng.random() < args.cancel:
                        client.cancel(msg_id)
                        cancelled += 1
            # switch files: close one document, open another
            old = rng.choice(uris)
            typist.close(old)
            uris[uris.index(old)] = typist.open(rng.randrange(1000))
            status = client.call("infill/status", {}, timeout=300)["result"]
            for msg_id in ids:
                client.wait(msg_id, timeout=300)
            latencies = [(client.answered_at[i] - client.sent_at[i]) * 1000 for i in ids]
            answered = [client.responses[i][0] for i in ids]
            suggested = sum(1 for r in answered if (r.get("result") or {}).get("items"))
            stats = proc_stats(client.proc.pid)
            phases.append({
                "phase": phase + 1, "edits": done_edits, "requests": len(ids), "cancelled": cancelled,
                "with_suggestion": suggested, "seconds": round(time.monotonic() - t0, 1),
                "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
                "p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
                "rss_mb": round(stats["rss_mb"], 1), "threads": stats["threads"], "fds": stats["fds"],
                "cache_entries": status["cache"]["memory_entries"],
            })
            print(json.dumps(phases[-1]), flush=True)
        client.check_answered_once(timeout=300)
        total = time.monotonic() - t_start
        rc = client.shutdown_and_exit(timeout=30)
    finally:
        client.close()
    warm = phases[min(1, len(phases) - 1):]
    return {
        "backend": "real default model" if args.real else f"fake (test-only, {args.model_ms} ms per generation)",
        "edits": edits, "completion_requests": sum(p["requests"] for p in phases), "seconds": round(total, 1),
        "exit_code": rc, "phases": phases,
        "rss_after_warmup_mb": [warm[0]["rss_mb"], warm[-1]["rss_mb"]],
        "rss_growth_after_warmup_mb": round(warm[-1]["rss_mb"] - warm[0]["rss_mb"], 1),
        "threads": sorted({p["threads"] for p in phases}), "fds": sorted({p["fds"] for p in phases}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=50_000)
    ap.add_argument("--completions", type=int, default=10_000)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply edits and completions (0.1: a quick run)")
    ap.add_argument("--phases", type=int, default=10)
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--cancel", type=float, default=0.3, help="share of completion requests cancelled at once")
    ap.add_argument("--model-ms", type=int, default=5, help="fake backend: simulated generation time")
    ap.add_argument("--real", action="store_true", help="the real default model instead of the fake backend")
    ap.add_argument("--no-disk-cache", action="store_true", help="memory cache only (isolates SQLite's page cache)")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
