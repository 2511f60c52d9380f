"""Replay benchmark: typing sessions through the real server over stdio, naive beside optimized.

Each session takes a real function from a package installed here (PyPI's diskcache and markupsafe, npm's
`ms`, ...), opens its file in the real server process (`python -m lsp_server serve`, driven by
`InfillClient`), deletes the function's body in one edit (a Python docstring stays, as if written first)
and retypes it the way an editor reports it:

- one `didChange` per keystroke; Enter carries the new line's indentation (auto-indent). Gaps between keys
  are 60-200 ms; now and then the user pauses for 0.5-2 s (more often at the start of a line). All timings
  come from a seeded RNG per file and text offset, so every configuration replays the same keystrokes.
- after every change a `textDocument/inlineCompletion` request (trigger kind Automatic), as VS Code sends
  them; when the next key arrives before the answer, the editor sends `$/cancelRequest` for it.
- at a pause the user waits for the suggestion (at most --pause-wait-s); the time from the last key to
  the answer is the "pause -> suggestion" latency.
- a shown suggestion that matches what the user is about to type is typed through (each key that matches
  it keeps it shown, as VS Code does) or, with probability --accept, accepted whole (one edit inserting it).

Per request it records the end-to-end latency at the client and, from the server's `infill/status`
(the last request's timings), where the answer came from (model, cache, type-through, ...), the prompt
tokens evaluated, the tokens generated and the time spent inside the server. Records go to
bench/out/replay-<config>.jsonl; the summary table is printed (markdown).

    make bench-replay                                   # both configurations, short sessions (~10 min)
    .venv/bin/python bench/replay.py --config optimized --limit-keys 60
    .venv/bin/python bench/replay.py --full             # every session, whole bodies (much longer)
    .venv/bin/python bench/replay.py --files path/to/file.go::FuncName,other.py::name
    .venv/bin/python bench/replay.py --set models.default.draft_tokens=4   # an optimized-side override

Naive switches off every latency optimization (KV prefix and tail reuse, drafting, type-through,
prefetch, stable prompt windows, other-file context, memory and disk cache); optimized is the server's
defaults. Both use a fresh temporary completion cache dir, so a run never reads a previous run's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsprotocol import types as lsp  # noqa: E402
from pygls.exceptions import JsonRpcException  # noqa: E402

from lsp_server.client import InfillClient, inline_text, language_id_for  # noqa: E402
from lsp_server.context import get_parser, grammar_for, offset_to_position  # noqa: E402

OUT = ROOT / "bench" / "out"

# (where the file comes from, path, function). Paths under site-packages are resolved in this Python's
# site-packages; npm files in the repository's node_modules folders first, then npm's own bundled copy.
SESSIONS = [
    ("PyPI diskcache 5.6.3", "site:diskcache/core.py", "__contains__"),
    ("npm ms 2.1.3", "npm:ms/index.js", "fmtLong"),
    ("PyPI markupsafe", "site:markupsafe/_speedups.c", "escape_unicode"),
]
FULL_SESSIONS = SESSIONS + [
    ("PyPI pygls 2.1.1", "site:pygls/workspace/text_document.py", "offset_at_position"),
    ("npm semver 7.8.5", "npm:semver/classes/semver.js", "compareMain"),
]
NPM_DIRS = [ROOT / "editors" / "vscode" / "node_modules", ROOT / "tests" / "editors" / "harness" / "node_modules",
            Path("/usr/lib/node_modules/npm/node_modules"), Path("/usr/local/lib/node_modules/npm/node_modules")]

NAIVE = {
    "models": {"default": {"prefix_reuse": False, "kv_reuse": False, "draft_tokens": 0}},
    "completion": {"type_through": False, "prefetch": False, "window_step_lines": 1, "extra_files": False,
                   "prefill_lines": 0, "warmup_ms": 0, "block_stop": False, "time_budget_ms": 4000,
                   "cold_prompt_ms": 0},
    "cache": {"memory_entries": 0, "disk": False},
}
OPTIMIZED: dict[str, Any] = {}  # the server's defaults

HITS = ("cache", "type-through")
COLD_TOKENS = 256
GAP_S = (0.06, 0.20)
PAUSE_S = (0.5, 2.0)
PAUSE_P_LINE_START, PAUSE_P = 0.35, 0.03


# -- sessions ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Session:
    origin: str
    path: Path
    function: str
    text: str  # the whole file
    start: int  # the body that is deleted and retyped: text[start:end]
    end: int

    @property
    def name(self) -> str:
        return f"{self.path.name}::{self.function}"

    @property
    def target(self) -> str:
        return self.text[self.start : self.end]


def resolve(spec: str) -> Path:
    kind, _, rel = spec.partition(":")
    if kind == "site" and rel:
        for base in dict.fromkeys([sysconfig.get_paths()["purelib"], *sys.path]):
            if base and (Path(base) / rel).is_file():
                return Path(base) / rel
        raise FileNotFoundError(f"{rel} is not installed in this Python's site-packages (make setup)")
    if kind == "npm" and rel:
        for base in NPM_DIRS:
            if (base / rel).is_file():
                return base / rel
        raise FileNotFoundError(f"npm package file {rel} not found in {', '.join(map(str, NPM_DIRS))}")
    return Path(spec).expanduser().resolve()


FUNCTION_NODES = {"function_definition", "function_declaration", "method_definition", "function_item",
                  "method_declaration", "generator_function_declaration", "func_literal"}


def _name_of(node, src: bytes) -> str:
    name = node.child_by_field_name("name")
    if name is not None:
        return src[name.start_byte : name.end_byte].decode()
    declarator = node.child_by_field_name("declarator")  # C/C++: pointer/function declarators nest
    while declarator is not None:
        if declarator.type in ("identifier", "field_identifier"):
            return src[declarator.start_byte : declarator.end_byte].decode()
        declarator = declarator.child_by_field_name("declarator")
    return ""


def load_session(origin: str, spec: str, function: str) -> Session:
    path = resolve(spec)
    text = path.read_text(encoding="utf-8")
    grammar = grammar_for(language_id_for(str(path)), str(path))
    parser = get_parser(grammar) if grammar else None
    if parser is None:
        raise ValueError(f"{path}: no tree-sitter grammar to find functions in")
    src = text.encode("utf-8")
    stack = [parser.parse(src).root_node]
    while stack:
        node = stack.pop()
        body = node.child_by_field_name("body")
        if node.type in FUNCTION_NODES and body is not None and _name_of(node, src) == function:
            break
        stack.extend(reversed(node.children))
    else:
        raise ValueError(f"{path}: no function named {function!r}")
    b_start, b_end = (len(src[: b].decode("utf-8")) for b in (body.start_byte, body.end_byte))
    if text[b_start] == "{" and text[b_end - 1] == "}":
        # keep the braces (the editor closed them) and the line break before `}`: retype what is inside
        start, end = b_start + 1, len(text[:b_end - 1].rstrip())
    else:  # an indented block: from the end of the header line to the end of the last statement
        start, end = text.rfind("\n", 0, b_start), b_end
        first = body.named_children[0] if body.named_children else None
        docstring = first is not None and (first.type == "string" or (  # grammar versions differ here
            first.type == "expression_statement" and first.named_children and first.named_children[0].type == "string"))
        if docstring and len(body.named_children) > 1:
            # a docstring stays (written first, like the signature); the code after it is retyped
            start = len(src[: first.end_byte].decode("utf-8"))
    if end - start < 20:
        raise ValueError(f"{path}::{function}: the body is too short to replay")
    return Session(origin, path, function, text, start, end)


def parse_files(value: str) -> list[tuple[str, str, str]]:
    sessions = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        path, sep, function = item.rpartition("::")
        if not sep or not path or not function:
            raise SystemExit(f"--files: {item!r} is not PATH::FUNCTION")
        sessions.append(("--files", path, function))
    return sessions


# -- the simulated user ------------------------------------------------------------------------------------
def next_key(target: str, o: int) -> str:
    """What one keystroke inserts at target offset o: Enter brings the next line's indentation with it."""
    end = o + 1
    if target[o] == "\n" or (target[o] in " \t" and (o == 0 or target[o - 1] == "\n")):
        while end < len(target) and target[end] in " \t":
            end += 1
    return target[o:end]


@dataclasses.dataclass
class Timing:
    """Per text offset: the gap before the key typed there, a pause instead, and the accept roll."""

    gaps: list[float]
    pauses: list[float]  # 0: no pause
    accept: list[float]

    @classmethod
    def for_session(cls, session: Session, seed: int) -> "Timing":
        rng = random.Random(f"{seed}:{session.name}")
        target = session.target
        gaps, pauses, accept = [], [], []
        for o in range(len(target) + 1):
            gaps.append(rng.uniform(*GAP_S))
            line_start = o == 0 or target[o - 1] == "\n" or (target[o - 1] in " \t" and target[:o].rstrip(" \t").endswith("\n"))
            pause = rng.random() < (PAUSE_P_LINE_START if line_start else PAUSE_P)
            pauses.append(rng.uniform(*PAUSE_S) if pause else 0.0)
            accept.append(rng.random())
        return cls(gaps, pauses, accept)


@dataclasses.dataclass
class Request:
    session: str
    index: int
    kind: str  # open | key | accept
    version: int
    t_sent: float
    msg_id: str = ""
    future: Any = None
    t_answer: float | None = None
    text: str | None = None  # None: no answer (cancelled by the editor, or an error)
    cancelled: bool = False
    error: str = ""
    at_pause: bool = False
    pause_wait_ms: float | None = None
    server: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def latency_ms(self) -> float | None:
        return None if self.t_answer is None else (self.t_answer - self.t_sent) * 1000

    def record(self) -> dict[str, Any]:
        return {"session": self.session, "index": self.index, "kind": self.kind, "version": self.version,
                "latency_ms": _r(self.latency_ms), "cancelled": self.cancelled, "error": self.error or None,
                "suggestion_chars": None if self.text is None else len(self.text), "at_pause": self.at_pause,
                "pause_wait_ms": _r(self.pause_wait_ms), **{f"server_{k}": v for k, v in self.server.items()}}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class Replay:
    def __init__(self, client: InfillClient, session: Session, timing: Timing, args: argparse.Namespace):
        self.client, self.session, self.timing, self.args = client, session, timing, args
        self.uri = session.path.resolve().as_uri()
        self.doc = session.text
        self.requests: list[Request] = []
        self.pending: Request | None = None
        self.shown = ""  # the ghost text the editor shows now
        self.typed_through = 0  # keys typed that matched the ghost text
        self.accepted: list[int] = []  # lengths of suggestions accepted whole
        self.keys = 0
        self._status_tasks: list[asyncio.Task] = []

    def _change(self, start: int, end: int, text: str) -> None:
        self.client.change(self.uri, offset_to_position(self.doc, start), offset_to_position(self.doc, end), text)
        self.doc = self.doc[:start] + text + self.doc[end:]

    def _request(self, kind: str, cursor: int) -> None:
        line, character = offset_to_position(self.doc, cursor)
        req = Request(self.session.name, len(self.requests), kind, self.client.versions[self.uri], time.perf_counter())
        req.msg_id, req.future = self.client.inline_request(self.uri, line, character)
        req.future.add_done_callback(lambda f, r=req: self._answered(r, f))
        self.requests.append(req)
        self.pending = req

    def _answered(self, req: Request, future: asyncio.Future) -> None:
        if req.cancelled:  # the editor no longer waits for it (its answer is an error or stale text)
            if not future.cancelled():
                future.exception()
            return
        req.t_answer = time.perf_counter()
        try:
            req.text = inline_text(future.result())
        except (JsonRpcException, asyncio.CancelledError) as exc:
            req.error = type(exc).__name__
            return
        if req is self.pending:
            self.shown = req.text
        self._status_tasks.append(asyncio.ensure_future(self._fetch_status(req)))

    async def _fetch_status(self, req: Request) -> None:
        last = (await self.client.status()).get("last") or {}
        if last.get("uri") == self.uri and last.get("version") == req.version:
            req.server = {k: last.get(k) for k in ("source", "mode", "total_ms", "prompt_tokens", "evaluated_tokens",
                                                   "generated_tokens", "prompt_ms", "generate_ms", "finish_reason")}
        else:
            req.server = {"source": "unmatched"}  # another request finished in between

    def _cancel_pending(self) -> None:
        req = self.pending
        if req is not None and not req.future.done():
            req.cancelled = True
            self.client.cancel(req.msg_id)
        self.pending = None

    async def _wait_answer(self, timeout: float) -> None:
        if self.pending is not None and not self.pending.future.done():
            await asyncio.wait([self.pending.future], timeout=timeout)

    async def run(self) -> None:
        s, target, limit = self.session, self.session.target, self.args.limit_keys
        self.client.open(self.uri, self.doc, language_id_for(str(s.path)))
        await asyncio.sleep(0.3)
        self._change(s.start, s.end, "")  # the user selects the body and deletes it
        cursor, o = s.start, 0
        self._request("open", cursor)
        while o < len(target) and (not limit or self.keys < limit):
            pause = self.timing.pauses[o]
            if pause:
                t0 = time.perf_counter()
                req = self.pending
                await self._wait_answer(self.args.pause_wait_s)
                if req is not None:
                    req.at_pause = True
                    req.pause_wait_ms = (time.perf_counter() - req.t_sent) * 1000
                await asyncio.sleep(max(0.0, pause - (time.perf_counter() - t0)))
            else:
                await asyncio.sleep(self.timing.gaps[o])
            rest = target[o:]
            if self.shown.strip() and rest.startswith(self.shown) and self.timing.accept[o] < self.args.accept:
                text, self.shown = self.shown, ""
                self._cancel_pending()
                self._change(cursor, cursor, text)  # Tab: the whole suggestion
                self.accepted.append(len(text))
                cursor, o = cursor + len(text), o + len(text)
                self._request("accept", cursor)
                continue
            key = next_key(target, o)
            if self.shown and self.shown.startswith(key):
                self.shown = self.shown[len(key):]  # typed through: the editor keeps showing the rest
                self.typed_through += 1
            else:
                self.shown = ""
            self._cancel_pending()
            self._change(cursor, cursor, key)
            self.keys += 1
            cursor, o = cursor + len(key), o + len(key)
            self._request("key", cursor)
        # the user stops here and looks at the last suggestion
        req = self.pending
        await self._wait_answer(self.args.pause_wait_s)
        if req is not None:
            req.at_pause = True
            req.pause_wait_ms = (time.perf_counter() - req.t_sent) * 1000
        self._cancel_pending()
        if self._status_tasks:
            await asyncio.wait(self._status_tasks, timeout=10)
        self.client.client.text_document_did_close(
            lsp.DidCloseTextDocumentParams(text_document=lsp.TextDocumentIdentifier(uri=self.uri)))


# -- one configuration ---------------------------------------------------------------------------------------
def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def parse_set(items: list[str]) -> dict:
    """`a.b.c=value` (JSON value, else a string) -> nested dict."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


CALIBRATION_GEN = "def fibonacci_table(limit):\n    "  # a multi-line completion of a short prompt


async def calibrate(client: InfillClient, session: Session) -> dict[str, Any]:
    """The model's own throughput on this machine, now, from two cold requests: a whole prompt window (prompt
    evaluation; its generation is cut by the time budget that the long evaluation spent) and a short prompt
    that leaves the budget to generation."""
    out: dict[str, Any] = {}
    folder = session.path.parent
    for kind, name, text, offset in (("prompt", f"calibration-{session.path.name}", session.text, session.start),
                                     ("gen", "calibration_gen.py", CALIBRATION_GEN, len(CALIBRATION_GEN))):
        uri = (folder / name).as_uri()
        client.open(uri, text, language_id_for(name))
        # explicit (Invoked): the whole prompt, never the short stand-in of a cold file (completion.cold_prompt_ms)
        await client.inline(uri, *offset_to_position(text, offset), invoked=True)
        last = (await client.status()).get("last") or {}
        client.client.text_document_did_close(
            lsp.DidCloseTextDocumentParams(text_document=lsp.TextDocumentIdentifier(uri=uri)))
        if kind == "prompt":
            out.update(evaluated_tokens=last.get("evaluated_tokens"), prompt_ms=last.get("prompt_ms"))
        else:
            out.update(generated_tokens=last.get("generated_tokens"), generate_ms=last.get("generate_ms"))
    return out


async def run_config(name: str, options: dict, sessions: list[Session], args: argparse.Namespace) -> dict[str, Any]:
    cache_dir = Path(tempfile.mkdtemp(prefix=f"infill-replay-{name}-"))
    options = deep_merge(options, {"cache": {"dir": str(cache_dir)}, "load": "startup"})
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / f"replay-{name}.server.log"
    log_path.unlink(missing_ok=True)
    print(f"[{name}] settings: {json.dumps(options, sort_keys=True)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    replays: list[Replay] = []
    try:
        # no workspace root: other-file context comes from each session's own folder
        async with InfillClient(options, stderr_path=str(log_path)) as client:
            for message in client.messages:
                print(f"[{name}] server: {message.message}", file=sys.stderr)
            calibration = await calibrate(client, sessions[0])
            for session in sessions:
                replay = Replay(client, session, Timing.for_session(session, args.seed), args)
                ts = time.perf_counter()
                await replay.run()
                replays.append(replay)
                print(f"[{name}] {session.name}: {replay.keys} keys, {len(replay.requests)} requests, "
                      f"{time.perf_counter() - ts:.0f} s", file=sys.stderr, flush=True)
            status = await client.status()
            bad = [m.message for m in client.messages]
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    records = [r.record() for rp in replays for r in rp.requests]
    with open(OUT / f"replay-{name}.jsonl", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    summary = summarize(records, replays, calibration)
    summary.update(config=name, wall_s=round(time.perf_counter() - t0, 1), settings=options,
                   backend=status.get("backend"), messages=bad)
    return summary


# -- figures ---------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(records: list[dict], replays: list[Replay], calibration: dict) -> dict[str, Any]:
    answered = [r for r in records if r["latency_ms"] is not None and not r["error"]]
    lat = [r["latency_ms"] for r in answered]
    lat_noskip = [r["latency_ms"] for r in answered if r.get("server_source") not in ("skip", "disabled")]
    sources = [r.get("server_source") for r in answered]
    known = [s for s in sources if s not in (None, "unmatched")]
    wanted = [s for s in known if s not in ("skip", "disabled")]
    hits = [r for r in answered if r.get("server_source") in HITS]
    model = [r for r in answered if r.get("server_source") == "model"]
    pauses = [r for r in records if r["at_pause"]]
    # the answer to the request sent with the last key before the pause; one that had not come when the user
    # gave up waiting counts with the time waited (so these percentiles are then lower bounds)
    shown = [r["latency_ms"] for r in pauses if r["suggestion_chars"]]
    censored = [r["pause_wait_ms"] for r in pauses if r["latency_ms"] is None]
    shown += censored
    # a cold pause: its answer evaluated most of a prompt window (the file's context was not in the KV
    # cache yet, e.g. right after opening it); shown apart, never instead of the figure above
    cold = [r for r in pauses if r["suggestion_chars"] and (r.get("server_evaluated_tokens") or 0) >= COLD_TOKENS]
    warm = [r["latency_ms"] for r in pauses if r["suggestion_chars"] and r not in cold] + censored
    big = [r for r in model if (r.get("server_evaluated_tokens") or 0) >= 64]
    gen = [r for r in model if (r.get("server_generated_tokens") or 0) > 0]

    def rate(rows, tokens, ms):
        t, m = sum(r[tokens] or 0 for r in rows), sum(r[ms] or 0 for r in rows)
        return t / m * 1000 if m else None

    cal_prompt = (calibration["evaluated_tokens"] / calibration["prompt_ms"] * 1000
                  if calibration.get("prompt_ms") else None)
    cal_gen = (calibration["generated_tokens"] / calibration["generate_ms"] * 1000
               if calibration.get("generate_ms") and (calibration.get("generated_tokens") or 0) >= 8 else None)
    return {
        "sessions": [rp.session.name for rp in replays],
        "keys": sum(rp.keys for rp in replays),
        "requests": len(records),
        "answered": len(answered),
        "cancelled": sum(1 for r in records if r["cancelled"]),
        "errors": sum(1 for r in records if r["error"]),
        "latency_p50_ms": pct(lat, 0.5), "latency_p95_ms": pct(lat, 0.95),
        "latency_noskip_p50_ms": pct(lat_noskip, 0.5), "latency_noskip_p95_ms": pct(lat_noskip, 0.95),
        "pauses": len(pauses), "pauses_shown": len(shown), "pauses_censored": len(censored),
        "pause_to_suggestion_p50_ms": pct(shown, 0.5), "pause_to_suggestion_p95_ms": pct(shown, 0.95),
        "pauses_cold": len(cold), "pause_warm_p50_ms": pct(warm, 0.5), "pause_warm_p95_ms": pct(warm, 0.95),
        "sources": {s: known.count(s) for s in sorted(set(known))},
        "unmatched_status": sources.count("unmatched"),
        "hit_rate": len(hits) / len(wanted) if wanted else None,
        "hit_server_p99_ms": pct([r["server_total_ms"] for r in hits], 0.99),
        "hit_server_max_ms": max((r["server_total_ms"] for r in hits), default=None),
        "hits": len(hits),
        "hit_e2e_p50_ms": pct([r["latency_ms"] for r in hits], 0.5),
        "model_requests": len(model),
        "evaluated_median": pct([r["server_evaluated_tokens"] for r in model], 0.5),
        "prompt_tokens_median": pct([r["server_prompt_tokens"] for r in model], 0.5),
        "generated_median": pct([r["server_generated_tokens"] for r in model], 0.5),
        "prompt_tok_s": rate(big, "server_evaluated_tokens", "server_prompt_ms"),
        "gen_tok_s": rate(gen, "server_generated_tokens", "server_generate_ms"),
        "calibration": calibration, "calibration_prompt_tok_s": cal_prompt, "calibration_gen_tok_s": cal_gen,
        "accepted": sum(len(rp.accepted) for rp in replays),
        "accepted_chars": sum(sum(rp.accepted) for rp in replays),
        "typed_through_keys": sum(rp.typed_through for rp in replays),
    }


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        value = f"{value:.{digits}f}"
    return f"{value}{unit}"


def table(results: list[dict]) -> str:
    cols = [r["config"] for r in results]
    rows: list[tuple[str, list[str], str]] = []

    def row(label, fn, goal=""):
        rows.append((label, [fn(r) for r in results], goal))

    row("keystrokes / requests / answered / cancelled by the editor",
        lambda r: f"{r['keys']} / {r['requests']} / {r['answered']} / {r['cancelled']}")
    row("end-to-end latency p50 / p95 (answered requests)",
        lambda r: f"{_fmt(r['latency_p50_ms'], ' ms')} / {_fmt(r['latency_p95_ms'], ' ms')}")
    row("the same, answers other than skip (no suggestion wanted there)",
        lambda r: f"{_fmt(r['latency_noskip_p50_ms'], ' ms')} / {_fmt(r['latency_noskip_p95_ms'], ' ms')}")
    row("pause → suggestion p50 / p95",
        lambda r: f"{_fmt(r['pause_to_suggestion_p50_ms'], ' ms')} / {_fmt(r['pause_to_suggestion_p95_ms'], ' ms')}",
        "< 600 ms / < 1.5 s")
    row(f"the same without cold pauses (answer evaluated ≥ {COLD_TOKENS} prompt tokens; how many)",
        lambda r: f"{_fmt(r['pause_warm_p50_ms'], ' ms')} / {_fmt(r['pause_warm_p95_ms'], ' ms')} "
                  f"({r['pauses_cold']} cold)")
    row("pauses: with a suggestion / all (no answer within the wait, counted as the wait)",
        lambda r: f"{r['pauses_shown'] - r['pauses_censored']} / {r['pauses']} ({r['pauses_censored']})")
    row("hit rate (cache + type-through, of requests that wanted one)",
        lambda r: _fmt(None if r["hit_rate"] is None else 100 * r["hit_rate"], "%", 1))
    row("hits: inside the server p99 / max (end to end p50)",
        lambda r: f"{_fmt(r['hit_server_p99_ms'], ' ms', 2)} / {_fmt(r['hit_server_max_ms'], ' ms', 2)} "
                  f"({_fmt(r['hit_e2e_p50_ms'], ' ms')}), n={r['hits']}",
        "p99 < 5 ms")
    row("answers by source", lambda r: ", ".join(f"{k} {v}" for k, v in r["sources"].items()) or "–")
    row("prompt tokens evaluated per model request, median (prompt size)",
        lambda r: f"{_fmt(r['evaluated_median'])} ({_fmt(r['prompt_tokens_median'])}), n={r['model_requests']}",
        "< 32")
    row("tokens generated per model request, median", lambda r: _fmt(r["generated_median"]))
    row("model throughput in this run: prompt / generation",
        lambda r: f"{_fmt(r['prompt_tok_s'], ' tok/s')} / {_fmt(r['gen_tok_s'], ' tok/s')}")
    row("cold calibration requests: prompt / generation",
        lambda r: f"{_fmt(r['calibration_prompt_tok_s'], ' tok/s')} ({_fmt(r['calibration'].get('evaluated_tokens'))} tok)"
                  f" / {_fmt(r['calibration_gen_tok_s'], ' tok/s')} ({_fmt(r['calibration'].get('generated_tokens'))} tok)")
    row("accepted whole (chars) / keys typed through a suggestion",
        lambda r: f"{r['accepted']} ({r['accepted_chars']}) / {r['typed_through_keys']}")
    row("wall time", lambda r: f"{r['wall_s']:.0f} s")
    lines = ["| | " + " | ".join(cols) + " | goal |", "|---|" + "---|" * len(cols) + "---|"]
    lines += [f"| {label} | " + " | ".join(vals) + f" | {goal} |" for label, vals, goal in rows]
    by = {r["config"]: r for r in results}
    if "naive" in by and "optimized" in by:
        n, o = by["naive"], by["optimized"]
        for label, key in (("pause → suggestion p50", "pause_to_suggestion_p50_ms"),
                           ("end-to-end latency p50", "latency_p50_ms")):
            if n[key] and o[key]:
                lines.append(f"\n{label}: naive / optimized = {n[key] / o[key]:.1f}× (goal ≥ 10×)")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.machine()}, load average {load[0]:.2f} at start"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("naive", "optimized", "both"), default="both")
    ap.add_argument("--limit-keys", type=int, default=100,
                    help="keystrokes per session (0: the whole body; default 100)")
    ap.add_argument("--files", default="", help="sessions as PATH::FUNCTION[,PATH::FUNCTION...] "
                    "(PATH may be site:pkg/file.py or npm:pkg/file.js)")
    ap.add_argument("--full", action="store_true", help="every built-in session, whole bodies (--limit-keys 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accept", type=float, default=0.5,
                    help="probability that a matching suggestion is accepted whole rather than typed through")
    ap.add_argument("--pause-wait-s", type=float, default=20.0, help="the longest a pausing user waits for an answer")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an optimized-side setting, e.g. models.default.draft_tokens=4")
    ap.add_argument("--json", help="also write the summaries to this file")
    args = ap.parse_args(argv)
    if args.full:
        args.limit_keys = 0
    specs = parse_files(args.files) if args.files else (FULL_SESSIONS if args.full else SESSIONS)
    sessions = []
    for origin, spec, function in specs:
        try:
            sessions.append(load_session(origin, spec, function))
        except (OSError, ValueError) as exc:
            print(f"skipping {spec}::{function}: {exc}", file=sys.stderr)
    if not sessions:
        print("no session to replay", file=sys.stderr)
        return 2
    configs = {"naive": NAIVE, "optimized": deep_merge(OPTIMIZED, parse_set(args.set))}
    names = ["naive", "optimized"] if args.config == "both" else [args.config]
    started = dt.datetime.now(dt.timezone.utc)
    header = [f"date: {started:%Y-%m-%d %H:%M} UTC", f"machine: {machine()}",
              "command: " + " ".join([Path(sys.executable).name, "bench/replay.py", *(argv if argv is not None else sys.argv[1:])]),
              "sessions: " + "; ".join(f"{s.name} ({s.origin}, {len(s.target)} chars)" for s in sessions),
              f"keys per session: {args.limit_keys or 'all'}, seed {args.seed}"]
    print("\n".join(header), file=sys.stderr, flush=True)
    results = [asyncio.run(run_config(name, configs[name], sessions, args)) for name in names]
    print("\n".join(header))
    print()
    print(table(results))
    for r in results:
        if r["messages"]:
            print(f"\n{r['config']}: server messages: {r['messages']}")
        if r["unmatched_status"]:
            print(f"{r['config']}: {r['unmatched_status']} answers without matching infill/status timings")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
