"""Property-based fuzzing of the real server process over stdio (issue 9, "Fuzzing and bad input").

Hypothesis drives random sessions: didOpen / didChange (incremental and full) / didClose with positions
out of range, inside surrogate pairs and on CRLF / CR line ends, text with astral characters, lone
surrogates, NULs, U+2028 and raw invalid UTF-8 bytes spliced into the JSON body, 100,000-character lines,
unknown language ids and URIs; inline-completion, completion and code-action requests (some cancelled at
once, some resolved); configuration changes with invalid values; malformed and unframed messages. After
every session:

* the server process is alive and answered every request exactly once (tests/fuzz/rawclient.py counts);
* its copy of each document (`infill/documentText`, a diagnostic request) equals a model of the editor's
  buffer kept here: text and version.

Most sessions use the FAKE backend (TEST-ONLY: it replays a recorded output instantly) so that hundreds of
sessions fit in CI time; `test_sessions_on_the_real_model` runs a few sessions on the real default model.
Separate tests cover what one long-running server cannot: 10 MB documents, broken framing, oversized
messages, requests before `initialize` and after `shutdown`. INFILL_FUZZ_EXAMPLES scales the number of
sessions (default 60).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from tests.fuzz.rawclient import RawClient, frame

EXAMPLES = int(os.environ.get("INFILL_FUZZ_EXAMPLES", "60"))
LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Characters that break naive position code: astral (2 UTF-16 units), lone surrogates, CR, CRLF, NUL,
# U+2028 / U+0085 (line breaks to Python's splitlines, not to LSP), a BOM, combining marks.
PIECES = list("abc xyz_():=\t{}") + ["\n", "\r", "\r\n", "é", "😀", "𝔘", "中", "\u2028", "\x85", "\ufeff",
                                      "\x00", "\ud800", "\udfff", "e\u0301", "    ", "def f(a, b):\n    return "]
TEXT = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
RAW_BYTES = st.lists(st.sampled_from([b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80", b"ok", b"\xc3\xa9"]),
                     min_size=1, max_size=6).map(b"".join)
URIS = ["file:///fuzz/a.py", "file:///fuzz/b.rs", "untitled:Untitled-1", "file:///fuzz/sp%20ace/%C3%BC.js",
        "not a uri at all", "", "file:///fuzz/c.txt"]
LANGS = ["python", "rust", "javascript", "klingon", "", "plaintext"]
BASE_OPTIONS: dict[str, Any] = {}  # filled by the fixture: the fake model, a private cache dir


# -- the model of the editor's buffers ------------------------------------------------------------------
def model_offset(text: str, line: int, character: int) -> int:
    """Where an LSP position lands: a line past the end is the end of the text, a character past the
    line end is the line end, and a character inside a surrogate pair is the start of that character."""
    starts = [0] + [m.end() for m in LINE_BREAK.finditer(text)]
    if line >= len(starts):
        return len(text)
    start = starts[line]
    stop = starts[line + 1] if line + 1 < len(starts) else len(text)
    content = LINE_BREAK.sub("", text[start:stop])
    units = 0
    for i, ch in enumerate(content):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > character:
            return start + i
        units += width
    return start + len(content)


def apply_edit(text: str, rng: dict, new: str) -> str:
    a = model_offset(text, rng["start"]["line"], rng["start"]["character"])
    b = model_offset(text, rng["end"]["line"], rng["end"]["character"])
    a, b = min(a, b), max(a, b)
    return text[:a] + new + text[b:]


def decoded(raw: bytes) -> str:
    """What the server makes of raw bytes inside a JSON string: UTF-8 with invalid bytes as U+FFFD."""
    return (b'"' + raw + b'"').decode("utf-8", "replace")[1:-1]


@dataclass
class Session:
    client: RawClient
    docs: dict[str, tuple[str, int]] = field(default_factory=dict)  # uri -> (text, version)
    closed: set[str] = field(default_factory=set)
    requests: int = 0
    resolve: bool = True  # codeAction/resolve runs a chat: too slow for the real model here


# -- strategies that depend on the session ----------------------------------------------------------------
def positions(draw, text: str) -> dict:
    lines = LINE_BREAK.split(text)
    kind = draw(st.sampled_from(["in", "in", "in", "eol", "past_char", "past_line", "huge", "astral"]))
    line = draw(st.integers(0, max(0, len(lines) - 1)))
    width = sum(2 if ord(ch) > 0xFFFF else 1 for ch in lines[line])  # UTF-16 units; a lone surrogate is one
    if kind == "in":
        char = draw(st.integers(0, width))
    elif kind == "eol":
        char = width
    elif kind == "past_char":
        char = width + draw(st.integers(1, 50))
    elif kind == "past_line":
        line, char = len(lines) + draw(st.integers(0, 5)), draw(st.integers(0, 5))
    elif kind == "huge":
        line, char = draw(st.sampled_from([(0, 2**31 - 1), (2**31 - 1, 0), (2**31 - 1, 2**31 - 1)]))
    else:  # a character offset inside an astral character, when there is one
        units, char = 0, 0
        for ch in lines[line]:
            if ord(ch) > 0xFFFF:
                char = units + 1
                break
            units += 2 if ord(ch) > 0xFFFF else 1
    return {"line": line, "character": char}


def a_range(draw, text: str) -> dict:
    return {"start": positions(draw, text), "end": positions(draw, text)}


def text_request_params(draw, s: Session, method: str) -> dict:
    uri = draw(st.sampled_from(sorted(s.docs) + ["file:///fuzz/never-opened.py"]))
    text = s.docs.get(uri, ("", 0))[0]
    params: dict[str, Any] = {"textDocument": {"uri": uri}}
    if method == "textDocument/codeAction":
        params["range"] = a_range(draw, text)
        params["context"] = {"diagnostics": []}
    else:
        params["position"] = positions(draw, text)
        if method == "textDocument/inlineCompletion":
            params["context"] = {"triggerKind": draw(st.sampled_from([1, 2]))}
    return params


MALFORMED: list[tuple[bytes, int]] = [  # (bytes on the wire, error replies with id null it earns)
    (frame(b"{not json"), 1),
    (frame(b"[1, 2, 3]"), 1),
    (frame(b""), 1),  # an empty body is not JSON
    (frame(b"\xff\xfe\x00garbage"), 1),
    (frame(b"[" * 100_000 + b"]" * 100_000), 1),  # nesting deeper than the JSON parser's recursion limit
    (frame(b'{"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": 5}}'), 0),
    (frame(b'{"jsonrpc": "2.0", "method": 42}'), 0),
    (frame(b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "infill/status"}'), 1),
    (frame(b'{"jsonrpc": "2.0", "id": null, "method": "infill/status"}'), 1),
    (frame(b'{"jsonrpc": "2.0", "id": 999999999, "result": null}'), 0),  # a response nobody asked for
    (b"garbage header line\r\n\r\n", 0),
    (b"Content-Length: banana\r\n\r\n", 0),
    (b"\r\n\r\n", 0),
]


def step(draw, s: Session) -> None:
    c = s.client
    op = draw(st.sampled_from(["open", "open", "change", "change", "change", "full", "raw", "close", "inline",
                               "completion", "action", "resolve", "cancel", "config", "bad_config",
                               "malformed", "bad_request", "long_line", "unknown_method"]))
    if op == "open":
        uri = draw(st.sampled_from(URIS))
        text = draw(TEXT)
        version = draw(st.integers(0, 2**31 - 1000))  # room for the didChanges that follow (int32)
        c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": draw(st.sampled_from(LANGS)),
                                                           "version": version, "text": text}})
        s.docs[uri] = (text, version)
        s.closed.discard(uri)
    elif op in ("change", "full", "raw", "long_line") and s.docs:
        uri = draw(st.sampled_from(sorted(s.docs)))
        text, version = s.docs[uri]
        version += 1
        changes, raw = [], {}
        for i in range(draw(st.integers(1, 4))):
            if op == "full":
                new = draw(TEXT)
                changes.append({"text": new})
                text = new
            elif op == "raw":
                data = draw(RAW_BYTES)
                marker = f"\ue000RAW{i}\ue000"
                raw[marker] = data
                rng = a_range(draw, text)
                changes.append({"range": rng, "text": marker})
                text = apply_edit(text, rng, decoded(data))
            else:
                rng = a_range(draw, text)
                new = draw(TEXT) if op == "change" else "é😀" + "x" * 100_000 + "\r\n"
                changes.append({"range": rng, "text": new})
                text = apply_edit(text, rng, new)
        c.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                            "contentChanges": changes}, raw=raw)
        s.docs[uri] = (text, version)
    elif op == "close" and s.docs:
        uri = draw(st.sampled_from(sorted(s.docs) + ["file:///fuzz/never-opened.py"]))
        c.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        if s.docs.pop(uri, None) is not None:
            s.closed.add(uri)
    elif op in ("inline", "completion", "action", "cancel"):
        method = {"inline": "textDocument/inlineCompletion", "completion": "textDocument/completion",
                  "action": "textDocument/codeAction"}.get(op) or draw(st.sampled_from(
                      ["textDocument/inlineCompletion", "textDocument/completion", "textDocument/codeAction"]))
        msg_id = c.request(method, text_request_params(draw, s, method))
        s.requests += 1
        if op == "cancel":
            c.cancel(msg_id)
    elif op == "resolve" and s.docs and s.resolve:
        reply = c.call("textDocument/codeAction", text_request_params(draw, s, "textDocument/codeAction"))
        actions = reply.get("result") or []
        if actions:
            action = draw(st.sampled_from(actions))
            msg_id = c.request("codeAction/resolve", action)
            if draw(st.booleans()):
                c.cancel(msg_id)
    elif op == "config":
        junk = draw(st.dictionaries(
            st.sampled_from(["completion", "cache", "log_level", "load", "bogus", "model", "models", "actions"]),
            st.one_of(st.none(), st.booleans(), st.integers(-3, 10**9), st.text(max_size=4),
                      st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.sampled_from(["enable", "max_tokens_single", "time_budget_ms", "languages",
                                                       "memory_entries", "disk", "prefix_tokens", "x"]),
                                      st.one_of(st.booleans(), st.integers(-2, 5000), st.text(max_size=3)),
                                      max_size=3)),
            max_size=3))
        junk.pop("model", None), junk.pop("models", None)  # the fake model stays: no real-model load here
        c.notify("workspace/didChangeConfiguration", {"settings": {**BASE_OPTIONS, **junk}})
    elif op == "bad_config":
        bad = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                             st.just({"infill": 5}), st.just({"model": "nope-no-such-model"})))
        # (no completion in between: the defaults name the real model, which would load here)
        c.notify("workspace/didChangeConfiguration", {"settings": bad})
        c.notify("workspace/didChangeConfiguration", {"settings": BASE_OPTIONS})
    elif op == "malformed":
        data, null_replies = draw(st.sampled_from(MALFORMED))
        before = len(c.null_id)
        c.send_raw(data)
        c.call("infill/status", {})  # replies come in order: every error for `data` precedes this one
        got = c.null_id[before:]
        assert len(got) == null_replies, f"{data[:80]!r} earned {got} (expected {null_replies} error replies)"
    elif op == "bad_request":
        msg_id = c.request("textDocument/inlineCompletion", draw(st.sampled_from([
            None, 5, [], {"textDocument": {"uri": 7}, "position": {"line": 0, "character": 0}},
            {"textDocument": {"uri": "file:///fuzz/a.py"}, "position": {"line": -1, "character": 0}},
            {"textDocument": {"uri": "file:///fuzz/a.py"}, "position": {"line": 2**31, "character": 0}},
            {"textDocument": {"uri": "file:///fuzz/a.py"}, "position": {"line": "1", "character": 0}}])))
        assert "error" in c.wait(msg_id), "a request with invalid params must get an error"
    elif op == "unknown_method":
        assert "error" in c.call("infill/noSuchMethod", {"x": 1})
        c.notify("infill/noSuchNotification", {"x": 1})


def check(s: Session) -> None:
    c = s.client
    c.check_answered_once(timeout=60)
    for uri, (text, version) in s.docs.items():
        got = c.call("infill/documentText", {"uri": uri}).get("result")
        assert got is not None, f"{uri!r} is open in the editor but not in the server"
        assert got["version"] == version
        # Compared as JSON carries them: two lone surrogates that end up side by side are one character
        # to a UTF-16 editor, and JSON reads them as one too.
        assert got["text"] == json.loads(json.dumps(text)), f"{uri!r}: the server's copy differs from the editor's"
    for uri in s.closed:
        assert c.call("infill/documentText", {"uri": uri}).get("result") is None, f"{uri!r} closed but kept"
    assert c.alive(), "the server died"


def run_session(c: RawClient, data, resolve: bool = True) -> None:
    s = Session(c, resolve=resolve)
    for uri in URIS:  # each session starts from a clean editor
        c.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        step(data.draw, s)
    check(s)


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_outputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "outputs.json"
    path.write_text(json.dumps([
        {"prompt_contains": "", "output": "return a + b\n"},
        {"prompt_contains": "def f(a, b)", "output": "a * b\n", "delay_ms": 50},
    ]))
    return path


def fake_options(outputs: Path, cache: Path) -> dict[str, Any]:
    return {"model": "fake", "models": {"fake": {"backend": "fake", "fake_outputs": str(outputs)}},
            "cache": {"dir": str(cache)}}


@pytest.fixture(scope="module")
def fuzz_client(fake_outputs, tmp_path_factory):
    """One server (fake backend, test-only) for all fuzz sessions, as an editor keeps one for days."""
    tmp = tmp_path_factory.mktemp("fuzz-server")
    BASE_OPTIONS.clear()
    BASE_OPTIONS.update(fake_options(fake_outputs, tmp / "cache"))
    client = RawClient(stderr_path=tmp / "server.log", env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    try:
        assert "result" in client.initialize(BASE_OPTIONS)
        yield client
        client.check_answered_once(timeout=60)
        assert client.shutdown_and_exit() == 0
    finally:
        client.close()


# -- the properties -------------------------------------------------------------------------------------------
# No shrinking: sessions share one long-running server (as in an editor), so a shrunk replay would not see
# the same server state; the failing session's steps are printed instead (hypothesis `note`).
@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(data=st.data())
def test_random_sessions_keep_the_mirror_exact(fuzz_client, data):
    run_session(fuzz_client, data)


@pytest.mark.model
def test_sessions_on_the_real_model(model_path, tmp_path):
    """A few sessions on the real default model: its tokenizer sees lone surrogates, NULs and 100,000-character
    lines, and cancellations reach a real token loop."""
    options = {"model": str(model_path), "cache": {"disk": False},
               "completion": {"max_tokens_single": 8, "max_tokens_multi": 16, "prefix_tokens": 256,
                              "suffix_tokens": 64, "extra_tokens": 0}}
    client = RawClient(stderr_path=tmp_path / "server.log")
    BASE_OPTIONS.clear()
    BASE_OPTIONS.update(options)
    try:
        assert "result" in client.initialize(options)

        @settings(max_examples=int(os.environ.get("INFILL_FUZZ_REAL_EXAMPLES", "6")), deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def sessions(data):
            run_session(client, data, resolve=False)

        sessions()
        assert client.shutdown_and_exit() == 0
    finally:
        client.close()


def test_huge_document_and_long_lines(fake_outputs, tmp_path):
    """A 10 MB document with CRLF lines and a 100,000-character line: edits at the start, middle and end,
    completions on it, and the server's copy stays exact."""
    options = fake_options(fake_outputs, tmp_path / "cache")
    with RawClient(stderr_path=tmp_path / "server.log") as c:
        c.initialize(options)
        line = "    value = compute(alpha, beta) + 😀 # comment\r\n"
        text = "def big():\r\n" + line * (10_000_000 // len(line)) + "é" * 100_000 + "\r\n    return "
        uri = "file:///fuzz/huge.py"
        t0 = time.monotonic()
        c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                           "text": text}})
        n_lines = text.count("\n")
        edits = [({"start": {"line": 0, "character": 4}, "end": {"line": 0, "character": 7}}, "huge"),
                 ({"start": {"line": n_lines // 2, "character": 12}, "end": {"line": n_lines // 2 + 3, "character": 0}},
                  "x\r\n"),
                 ({"start": {"line": n_lines - 1, "character": 50_000}, "end": {"line": n_lines - 1, "character": 50_001}},
                  "Z"),
                 ({"start": {"line": n_lines, "character": 11}, "end": {"line": n_lines, "character": 11}}, "a")]
        for version, (rng, new) in enumerate(edits, start=2):
            c.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                "contentChanges": [{"range": rng, "text": new}]})
            text = apply_edit(text, rng, new)
        for pos in ({"line": n_lines, "character": 12}, {"line": n_lines - 1, "character": 99_999},
                    {"line": 5, "character": 4}):
            reply = c.call("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": pos,
                                                              "context": {"triggerKind": 2}}, timeout=120)
            assert "result" in reply, reply
        got = c.call("infill/documentText", {"uri": uri}, timeout=60)["result"]
        assert got["version"] == 1 + len(edits) and got["text"] == text
        elapsed = time.monotonic() - t0
        assert elapsed < 120, f"10 MB document round trip took {elapsed:.1f}s"
        c.check_answered_once()
        assert c.shutdown_and_exit() == 0


def test_broken_framing_and_oversized_messages(fake_outputs, tmp_path):
    """Header variants, a lying Content-Length, an oversized body (limit lowered to 1 MB for the test):
    each malformed message gets an error or is skipped, and the next well-formed request is answered."""
    env = dict(os.environ, INFILL_LS_MAX_MESSAGE_MB="1")
    with RawClient(env=env, stderr_path=tmp_path / "server.log") as c:
        c.initialize(fake_options(fake_outputs, tmp_path / "cache"))
        body = json.dumps({"jsonrpc": "2.0", "id": "lower", "method": "infill/status", "params": {}}).encode()
        c.sent["lower"] = "infill/status"
        c.send_raw(b"content-length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" % len(body)
                   + body)
        assert "result" in c.wait("lower")
        big = json.dumps({"jsonrpc": "2.0", "id": "big", "method": "textDocument/didOpen",
                          "params": {"textDocument": {"uri": "file:///fuzz/big.py", "languageId": "python",
                                                      "version": 1, "text": "x" * 2_000_000}}}).encode()
        c.send_raw(frame(big))
        errors = c.wait_null_ids(1)
        assert errors and "over the limit" in errors[0]["error"]["message"]
        c.send_raw(b"X" * 100_000 + b"\r\n")  # an endless header line
        c.send_raw(b"Content-Length: -5\r\n\r\n")
        assert "result" in c.call("infill/status", {})
        assert c.call("infill/documentText", {"uri": "file:///fuzz/big.py"})["result"] is None
        c.check_answered_once()
        assert c.shutdown_and_exit() == 0
    # a Content-Length far beyond what ever arrives, then the editor dies: a clean, prompt exit
    with RawClient(stderr_path=tmp_path / "server2.log") as c:
        c.initialize(fake_options(fake_outputs, tmp_path / "cache"))
        c.send_raw(b"Content-Length: 1000000000000\r\n\r\n{\"jsonrpc\": ")
        c.proc.stdin.close()
        assert c.proc.wait(timeout=5) == 0


def test_lifecycle_rules(fake_outputs, tmp_path):
    """Before initialize: requests get ServerNotInitialized, notifications are dropped. After shutdown:
    requests get InvalidRequest. `exit` after shutdown exits 0, without it 1."""
    options = fake_options(fake_outputs, tmp_path / "cache")
    with RawClient(stderr_path=tmp_path / "server.log") as c:
        assert c.call("infill/status", {})["error"]["code"] == -32002
        assert c.call("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///x.py"},
                                                         "position": {"line": 0, "character": 0},
                                                         "context": {"triggerKind": 2}})["error"]["code"] == -32002
        c.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///x.py", "languageId": "python",
                                                           "version": 1, "text": "early"}})
        c.initialize(options)
        assert c.call("infill/documentText", {"uri": "file:///x.py"})["result"] is None
        c.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///x.py", "languageId": "python",
                                                           "version": 1, "text": "def f(a, b):\n    "}})
        slow = c.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///x.py"},
                                                            "position": {"line": 1, "character": 4},
                                                            "context": {"triggerKind": 2}})
        assert "error" not in c.call("shutdown", None)
        after = c.call("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///x.py"},
                                                          "position": {"line": 1, "character": 4},
                                                          "context": {"triggerKind": 2}})
        assert after["error"]["code"] == -32600
        c.wait(slow)
        c.check_answered_once()
        c.notify("exit")
        assert c.proc.wait(timeout=5) == 0
    with RawClient(stderr_path=tmp_path / "server2.log") as c:
        c.initialize(options)
        c.notify("exit")
        assert c.proc.wait(timeout=5) == 1


def test_cursor_after_the_last_syntax_node(fake_outputs, tmp_path):
    """Regression (found by the fuzzer): a prefix window starting after the last top-level node made
    py-tree-sitter's first_child_for_byte dereference a null node and the server died (SIGSEGV)."""
    with RawClient(stderr_path=tmp_path / "server.log") as c:
        c.initialize(fake_options(fake_outputs, tmp_path / "cache"))
        text = "{" + "x" * 100_000 + "\n" + "y" * 100_000 + "\n"
        c.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///fuzz/r.rs", "languageId": "rust",
                                                           "version": 1, "text": text}})
        reply = c.call("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///fuzz/r.rs"},
                                                          "position": {"line": 2, "character": 0},
                                                          "context": {"triggerKind": 2}})
        assert "result" in reply and c.alive(), reply
        assert c.shutdown_and_exit() == 0
