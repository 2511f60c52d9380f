"""Completion quality on HumanEval infilling, through the real server, against a raw-model baseline.

For every task the document ``prompt + suffix`` is opened in ONE real infill-ls server process (started
over stdio by InfillClient, exactly as an editor talks to it) and an inline completion is requested at
the hole; the first item is the server's answer. The same model is also called directly in this process
(LlamaCppBackend) with the whole prompt and suffix in its FIM template and no post-processing besides
the stop tokens: the raw baseline. Server and raw run interleaved, task by task, so that the noise of a
shared machine hits both columns alike.

Each completion is executed in its own subprocess (never in this process) with a 3 s timeout, as in the
original harness: ``prompt + completion + suffix + "\n" + test + "\n" + "check(entry_point)"``; it passes
when that exits with status 0.

Sets: single (SingleLineInfilling, 1033), random (RandomSpanInfillingLight, 164), multi (a fixed-seed
sample of MultiLineInfilling). Tasks run problem by problem (problems in a seeded random order; first
the small sets and one SingleLine hole per problem, then the remaining SingleLine holes) so that a partial run covers every
set with a random sample of problems, and consecutive prompts share their docstring in the KV cache.
Every finished task is appended to a JSONL file at once; ``--report FILE`` prints the table of a
(possibly partial) run.

    .venv/bin/python bench/quality.py --sets single,random,multi --limit 20 --seed 0
    .venv/bin/python bench/quality.py --multi-sample 164                # full single + random
    .venv/bin/python bench/quality.py --report bench/out/quality-XXXX.jsonl
    .venv/bin/python bench/quality.py --sets single,multi --jsonl bench/out/q.jsonl --resume   # go on after a stop
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import gzip
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_data import human_eval_dir  # noqa: E402

DEFAULT_DATA = human_eval_dir()
DEFAULT_MODEL = Path.home() / ".cache" / "infill-ls" / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
FILES = {
    "single": "HumanEval-SingleLineInfilling.jsonl.gz",
    "random": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
    "multi": "HumanEval-MultiLineInfilling.jsonl.gz",
}
NAMES = {"single": "SingleLine", "random": "RandomSpanLight", "multi": "MultiLine (sample)"}
EXEC_TIMEOUT = 3.0


# -- data -----------------------------------------------------------------------------------------------
def load_set(data: Path, name: str) -> list[dict]:
    path = data / FILES[name]
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def problem_of(task_id: str) -> int:
    return int(task_id.split("/")[2])


def select_tasks(data: Path, sets: list[str], limit: int | None, multi_sample: int, seed: int) -> list[tuple[str, dict]]:
    """(set, row) pairs, problem by problem in a seeded order; samples are fixed by the seed."""
    chosen: list[tuple[str, dict]] = []
    for name in sets:
        rows = load_set(data, name)
        rng = random.Random(f"{seed}:{name}")
        n = len(rows)
        if name == "multi":
            n = min(n, multi_sample)
        if limit:
            n = min(n, limit)
        if n < len(rows):
            keep = set(rng.sample(range(len(rows)), n))
            rows = [r for i, r in enumerate(rows) if i in keep]
        chosen.extend((name, r) for r in rows)
    problems = sorted({problem_of(r["task_id"]) for _, r in chosen})
    random.Random(seed).shuffle(problems)
    rank = {p: i for i, p in enumerate(problems)}
    order = {name: i for i, name in enumerate(sets)}
    # Phase 0 holds the small sets and one SingleLine hole per problem, phase 1 the other SingleLine
    # holes (~6 per problem): a run stopped early still has comparable n for every set, over a random set of problems.
    phase: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for name, r in sorted(chosen, key=lambda sr: random.Random(f"{seed}:{sr[1]['task_id']}").random()):
        key = (name, problem_of(r["task_id"]))
        phase[r["task_id"]] = 1 if name == "single" and key in seen else 0
        seen.add(key)
    # Within a phase and problem: set order, then the file's order (holes top to bottom share the
    # longest prompt prefix in the KV cache).
    return sorted(chosen, key=lambda sr: (phase[sr[1]["task_id"]], rank[problem_of(sr[1]["task_id"])], order[sr[0]]))


# -- scoring --------------------------------------------------------------------------------------------
def program(row: dict, completion: str) -> str:
    return (row["prompt"] + completion + row["suffix"] + "\n" + row["test"] + "\n"
            + f"check({row['entry_point']})\n")


def execute(source: str, timeout: float = EXEC_TIMEOUT) -> tuple[bool, str]:
    """Run one program in a fresh interpreter (isolated mode, temp cwd); (passed, short reason)."""
    with tempfile.TemporaryDirectory(prefix="infill-q-") as tmp:
        path = Path(tmp) / "prog.py"
        path.write_text(source, encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, "timeout"
        if proc.returncode == 0:
            return True, ""
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return False, (err[-1] if err else f"exit {proc.returncode}")[:200]


def parses(source: str) -> bool:
    try:
        ast.parse(source)
        return True
    except (SyntaxError, ValueError):
        return False


def _lines(doc: str) -> list[str]:
    return [line.rstrip() for line in doc.split("\n") if line.strip()]


def exact(row: dict, completion: str) -> bool:
    """Same code as the canonical solution, up to trailing spaces and blank lines."""
    return _lines(row["prompt"] + completion + row["suffix"]) == _lines(row["prompt"] + row["canonical_solution"] + row["suffix"])


def position(text: str, offset: int) -> tuple[int, int]:
    """LSP (line, UTF-16 character) of a string offset."""
    before = text[:offset]
    line = before.count("\n")
    col = before[before.rfind("\n") + 1:]
    return line, len(col.encode("utf-16-le")) // 2


# -- the two columns ------------------------------------------------------------------------------------
class Raw:
    """The same model called directly: whole prompt and suffix in the FIM template, stop tokens only."""

    def __init__(self, model: Path, n_ctx: int, draft_tokens: int = 0):
        from lsp_server.backends.llama_cpp import LlamaCppBackend
        from lsp_server.prompts import get_template

        self.template = get_template("qwen2.5-coder")
        # draft_tokens: prompt-lookup drafting, verified by the model itself (greedy output unchanged): speed only
        self.backend = LlamaCppBackend(model, n_ctx=n_ctx, draft_tokens=draft_tokens)
        self.backend.load()

    def complete(self, row: dict, max_tokens: int) -> tuple[str, float]:
        from lsp_server.backends import GenerationRequest
        from lsp_server.prompts import render

        prompt = render(self.template, row["prompt"], row["suffix"])
        t0 = time.perf_counter()
        gen = self.backend.generate(GenerationRequest(prompt=prompt, max_tokens=max_tokens, stop=self.template.stop),
                                    threading.Event())
        return gen.text, (time.perf_counter() - t0) * 1000


def summarize(records: list[dict], sets: list[str]) -> list[dict]:
    out = []
    for name in sets:
        rs = [r for r in records if r["set"] == name]
        if not rs:
            continue
        row = {"set": name, "n": len(rs)}
        for col in ("server", "raw"):
            lat = sorted(r[col]["ms"] for r in rs)
            row[col] = {
                "pass": sum(r[col]["passed"] for r in rs) / len(rs),
                "exact": sum(r[col]["exact"] for r in rs) / len(rs),
                "mean_ms": statistics.fmean(lat),
                "p95_ms": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                "breaks": sum(r[col]["breaks"] for r in rs),
                "empty": sum(not r[col]["text"].strip() for r in rs),
            }
        modes: dict[str, int] = {}
        for r in rs:
            modes[r["server"].get("mode") or "?"] = modes.get(r["server"].get("mode") or "?", 0) + 1
        row["modes"] = modes
        out.append(row)
    return out


def table(summary: list[dict]) -> str:
    head = ("| set | n | pass@1 server | pass@1 raw | exact server | exact raw | mean ms server | mean ms raw "
            "| p95 ms server | p95 ms raw | breaks syntax server / raw | empty server / raw | server modes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        a, b = s["server"], s["raw"]
        modes = " ".join(f"{k}:{v}" for k, v in sorted(s["modes"].items()))
        lines.append(
            f"| {NAMES.get(s['set'], s['set'])} | {s['n']} | **{a['pass']:.1%}** | {b['pass']:.1%} | {a['exact']:.1%} "
            f"| {b['exact']:.1%} | {a['mean_ms']:.0f} | {b['mean_ms']:.0f} | {a['p95_ms']:.0f} | {b['p95_ms']:.0f} "
            f"| {a['breaks']} / {b['breaks']} | {a['empty']} / {b['empty']} | {modes} |")
    return "\n".join(lines)


def read_records(path: Path) -> tuple[dict, list[dict]]:
    meta, records = {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if obj.get("kind") == "meta":
            meta = obj
        elif obj.get("kind") == "task":
            records.append(obj)
    return meta, records


# -- the run --------------------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> int:
    from lsp_server.client import InfillClient

    data = Path(args.data).resolve()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    tasks = select_tasks(data, sets, args.limit, args.multi_sample, args.seed)
    previous: list[dict] = []
    if args.resume and args.jsonl and Path(args.jsonl).is_file():
        # go on with an interrupted run: its finished tasks are kept, the others run now (appended)
        _, previous = read_records(Path(args.jsonl))
        done_ids = {(r["set"], r["task_id"]) for r in previous}
        tasks = [(n, r) for n, r in tasks if (n, r["task_id"]) not in done_ids]
        print(f"resuming {args.jsonl}: {len(previous)} tasks done, {len(tasks)} to go", flush=True)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.jsonl) if args.jsonl else out_dir / f"quality-{stamp}.jsonl"
    options = {
        "load": "startup",
        "cache": {"disk": False},
        "completion": {"time_budget_ms": args.time_budget_ms, "time_budget_invoked_ms": args.time_budget_ms},
        "log_level": "warning",
    }
    if args.set:
        from bench.replay import deep_merge, parse_set

        options = deep_merge(options, parse_set(args.set))
    if Path(args.model).resolve() != DEFAULT_MODEL.resolve():
        options["model"] = str(args.model)
    meta = {
        "kind": "meta", "argv": sys.argv, "sets": sets, "limit": args.limit, "seed": args.seed,
        "multi_sample": args.multi_sample, "raw_max_tokens": {"single": args.raw_max_single, "multi": args.raw_max_multi},
        "options": options, "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tasks": len(tasks) + len(previous),
        "resumed_after": len(previous), "raw_draft_tokens": args.raw_draft, "no_raw": args.no_raw, "set": args.set,
    }
    print(f"{len(tasks)} tasks ({', '.join(f'{s}: {sum(1 for n, _ in tasks if n == s)}' for s in sets)}) -> {out_path}",
          flush=True)
    t_start = time.monotonic()
    raw = None if args.no_raw else Raw(Path(args.model), args.n_ctx, args.raw_draft)
    pool = ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="exec")  # each runs a subprocess
    records: list[dict] = list(previous)
    with out_path.open("a" if previous else "w", encoding="utf-8") as fh:
        fh.write(json.dumps(meta) + "\n")
        fh.flush()
        async with InfillClient(options) as client:
            # Wait for the model (the server announces it with infill/modelState).
            state = ""
            for _ in range(1200):
                states = [getattr(p, "state", None) for m, p in client.notifications if m == "infill/modelState"]
                state = states[-1] if states else ""
                if state in ("ready", "error"):
                    break
                await asyncio.sleep(0.25)
            if state != "ready":
                print(f"server model not ready: {state or 'no state'}", file=sys.stderr)
                return 2
            for i, (name, row) in enumerate(tasks, start=len(previous)):
                doc = row["prompt"] + row["suffix"]
                uri = f"file:///infill-bench/{row['task_id'].replace('/', '_')}.py"
                line, ch = position(doc, len(row["prompt"]))
                client.open(uri, doc, "python")
                t0 = time.perf_counter()
                text = await client.inline(uri, line, ch, invoked=True)  # as the editor's explicit command
                server_ms = (time.perf_counter() - t0) * 1000
                last = (await client.status()).get("last") or {}
                from lsprotocol import types as lsp
                client.client.text_document_did_close(lsp.DidCloseTextDocumentParams(
                    text_document=lsp.TextDocumentIdentifier(uri=uri)))
                mode = last.get("mode") or ""
                raw_max = args.raw_max_multi if mode == "multi" else args.raw_max_single
                if raw is None:
                    raw_text, raw_ms = "", 0.0  # --no-raw: not run (its column then reads as empty)
                else:
                    raw_text, raw_ms = await asyncio.get_running_loop().run_in_executor(None, raw.complete, row, raw_max)
                before_ok = parses(doc)
                futs = {col: pool.submit(execute, program(row, t)) for col, t in (("server", text), ("raw", raw_text))}
                rec = {"kind": "task", "set": name, "task_id": row["task_id"], "parses_before": before_ok}
                for col, t, ms in (("server", text, server_ms), ("raw", raw_text, raw_ms)):
                    passed, why = await asyncio.wrap_future(futs[col])
                    rec[col] = {"text": t, "ms": round(ms, 1), "passed": passed, "error": why,
                                "exact": exact(row, t),
                                "breaks": before_ok and not parses(row["prompt"] + t + row["suffix"])}
                rec["server"].update(mode=mode, source=last.get("source"), total_ms=last.get("total_ms"),
                                     prompt_tokens=last.get("prompt_tokens"), generated=last.get("generated_tokens"),
                                     finish=last.get("finish_reason"))
                rec["raw"]["max_tokens"] = raw_max
                records.append(rec)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                if args.verbose or (i + 1) % 25 == 0 or i + 1 == len(tasks) + len(previous):
                    done = {s: sum(1 for r in records if r["set"] == s) for s in sets}
                    ok = sum(r["server"]["passed"] for r in records), sum(r["raw"]["passed"] for r in records)
                    print(f"[{i + 1}/{len(tasks) + len(previous)} {time.monotonic() - t_start:.0f}s] {done} pass server {ok[0]} raw {ok[1]}",
                          flush=True)
        fh.write(json.dumps({"kind": "end", "seconds": round(time.monotonic() - t_start, 1)}) + "\n")
    pool.shutdown()
    summary = summarize(records, sets)
    print(f"\nwall time {time.monotonic() - t_start:.0f}s; records: {out_path}\n")
    print(table(summary))
    (out_path.with_suffix(".summary.json")).write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    return 0


def replay(path: Path, data: Path, workers: int) -> int:
    """Development aid, not a benchmark figure: re-run mode + post-processing of the CURRENT code on the
    raw baseline's outputs of a records file (single mode: cut at the first line break as the server's
    stop does; multi needs the record's raw to have had the multi budget) and execute them."""
    from lsp_server.context import DocumentTree, decide_mode
    from lsp_server.postprocess import postprocess

    meta, records = read_records(path)
    rows = {}
    for name in FILES:
        try:
            rows.update({r["task_id"]: r for r in load_set(data, name)})
        except FileNotFoundError:
            pass
    pool = ThreadPoolExecutor(max_workers=workers)
    changed = []
    for rec in records:
        row = rows[rec["task_id"]]
        doc = row["prompt"] + row["suffix"]
        off = len(row["prompt"])
        mode = decide_mode(doc, off, "python", DocumentTree(doc, "python")).value
        raw = rec["raw"]["text"]
        if mode == "skip":
            text = ""
        else:
            if mode == "single":
                raw = raw.split("\n", 1)[0]
            text = postprocess(raw, prefix=row["prompt"], suffix=row["suffix"], mode=mode, grammar="python")
        if text != rec["server"]["text"] or mode != rec["server"]["mode"]:
            changed.append((rec, mode, text, pool.submit(execute, program(row, text))))
    gained = lost = 0
    for rec, mode, text, fut in changed:
        passed, why = fut.result()
        old = rec["server"]["passed"]
        gained += passed and not old
        lost += old and not passed
        short = rec["raw"]["max_tokens"] < 160 and mode == "multi"
        print(f"{rec['task_id']}: {rec['server']['mode']}->{mode}{' (raw had 48 tokens)' if short else ''} "
              f"{old}->{passed} {why[:60]}\n   old {rec['server']['text']!r}\n   new {text!r}")
    print(f"{len(records)} records, {len(changed)} changed, +{gained} -{lost} passes")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="single,random,multi", help="comma list of single, random, multi")
    p.add_argument("--limit", type=int, default=None, help="at most N tasks per set (fixed-seed sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--multi-sample", type=int, default=164, help="MultiLine tasks in the fixed sample")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with the human-eval-infilling *.jsonl.gz")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="GGUF for both columns")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--raw-max-single", type=int, default=48,
                   help="raw max_tokens where the server chose single (or skip): the server's single limit")
    p.add_argument("--raw-max-multi", type=int, default=160, help="raw max_tokens where the server chose multi")
    p.add_argument("--time-budget-ms", type=int, default=120000,
                   help="server completion.time_budget_ms (large: measure quality, not the machine's load)")
    p.add_argument("--workers", type=int, default=2, help="subprocesses executing completions at once")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--jsonl", default=None, help="records file (default bench/out/quality-<time>.jsonl)")
    p.add_argument("--report", default=None,
                   help="print the table of existing records files (comma list: e.g. two sets run apart) and exit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a server setting for this run (A/B of one switch), e.g. completion.prefill_lines=0")
    p.add_argument("--no-raw", action="store_true",
                   help="server column only (an A/B of a server setting: the raw column does not depend on it)")
    p.add_argument("--resume", action="store_true",
                   help="with --jsonl FILE: keep FILE's finished tasks, run the rest, append to it")
    p.add_argument("--raw-draft", type=int, default=4,
                   help="prompt-lookup draft tokens for the raw column (the server's default; speed only, "
                        "the model verifies every drafted token)")
    p.add_argument("--replay", default=None, help="development aid: re-post-process a records file's raw outputs")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    if args.replay:
        return replay(Path(args.replay), Path(args.data).resolve(), args.workers)
    if args.report:
        records, sets = [], []
        for one in args.report.split(","):
            meta, recs = read_records(Path(one))
            records += recs
            sets += [s for s in (meta.get("sets") or sorted({r["set"] for r in recs})) if s not in sets]
            print(f"{one}: {len(recs)} tasks; started {meta.get('started')}; argv {' '.join(meta.get('argv', []))}")
        print(table(summarize(records, sets)))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
