"""Run every built-in code action once on an example, through the real server over stdio, and record the
output and the time each took into docs/ACTIONS.md (between the `results` markers).

    .venv/bin/python bench/actions_demo.py            # default model, rewrites docs/ACTIONS.md's results
    .venv/bin/python bench/actions_demo.py --print    # only print

Each action goes through the same path an editor uses: textDocument/codeAction lists it, then
codeAction/resolve (explain, docstring, fix) or workspace/executeCommand infill.runAction (refactor with an
instruction, write tests) runs the model. Times are wall-clock from the request to its response.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types as lsp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsp_server import catalog  # noqa: E402
from lsp_server.client import InfillClient  # noqa: E402
from lsp_server.context import position_to_offset  # noqa: E402

EXAMPLE = '''import json


def load_scores(path):
    with open(path) as f:
        data = json.load(f)
    result = {}
    for name in data:
        if data[name] >= 0:
            result[name] = data[name]
    return result


def best_player(scores):
    top = None
    for name, score in scores.items():
        if top is None or score > scores[top]:
            top = name
    return tpo
'''

DIAGNOSTIC = lsp.Diagnostic(range=lsp.Range(start=lsp.Position(18, 11), end=lsp.Position(18, 14)),
                            message='"tpo" is not defined', source="Pyright", severity=lsp.DiagnosticSeverity.Error)

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def apply(text: str, edits) -> str:
    for e in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True):
        a = position_to_offset(text, e.range.start.line, e.range.start.character)
        b = position_to_offset(text, e.range.end.line, e.range.end.character)
        text = text[:a] + e.new_text + text[b:]
    return text


def fenced(text: str, lang: str = "python") -> str:
    return f"```{lang}\n{text.rstrip()}\n```"


async def run(model: str) -> str:
    work = Path(tempfile.mkdtemp(prefix="infill-actions-demo-"))
    src = work / "scores.py"
    src.write_text(EXAMPLE)
    uri = src.as_uri()
    options = {"load": "startup", "cache": {"disk": False}, "model": model}
    rows, sections = [], []
    async with InfillClient(options) as c:
        c.open(uri, EXAMPLE, "python")
        await c.status()

        async def listed(pos, **kw):
            t0 = time.perf_counter()
            actions = await c.code_actions(uri, pos, **kw)
            return {a.data["action"]: a for a in actions}, (time.perf_counter() - t0) * 1000

        actions, list_ms = await listed((5, 8))
        rows.append(("list (textDocument/codeAction)", "`load_scores`", f"{list_ms:.0f} ms", "-", "-"))

        async def timed(coro):
            t0 = time.perf_counter()
            result = await coro
            return result, time.perf_counter() - t0

        # Explain (resolve)
        resolved, secs = await timed(c.resolve(actions["explain"]))
        stats = resolved.data["result"]
        markdown = [p for m, p in c.notifications if m == "infill/explanation"][-1].markdown
        rows.append(("Explain", "`load_scores`", f"{secs:.1f} s", stats["prompt_tokens"], stats["generated_tokens"]))
        sections.append(("Explain", "codeAction/resolve on `load_scores` (cursor inside it); shown with "
                         "window/showDocument of the generated file and the `infill/explanation` notification",
                         markdown.strip(), "markdown", secs, stats))

        # Refactor with an instruction (executeCommand)
        before = len(c.applied_edits)
        reply, secs = await timed(c.run_action(uri, (5, 8), (5, 8), "refactor",
                                               "Use a dict comprehension."))
        edit = c.applied_edits[before].edit if len(c.applied_edits) > before else None
        out = edit.document_changes[0].edits[0].new_text if edit else f"(no edit: {reply['message']})"
        rows.append(("Refactor: \"Use a dict comprehension.\"", "`load_scores`", f"{secs:.1f} s",
                     reply["stats"]["prompt_tokens"], reply["stats"]["generated_tokens"]))
        sections.append(("Refactor", "workspace/executeCommand `infill.runAction` with the instruction "
                         "\"Use a dict comprehension.\"; the edit (applied with workspace/applyEdit) replaces:",
                         fenced(out), "", secs, reply["stats"]))

        # Docstring (resolve)
        actions, _ = await listed((14, 8))
        resolved, secs = await timed(c.resolve(actions["docstring"]))
        stats = resolved.data["result"]
        out = resolved.edit.document_changes[0].edits[0].new_text if resolved.edit else f"(no edit: {stats['message']})"
        rows.append(("Add docstring", "`best_player`", f"{secs:.1f} s", stats["prompt_tokens"], stats["generated_tokens"]))
        sections.append(("Add docstring", "codeAction/resolve on `best_player`; the edit replaces the function with:",
                         fenced(out), "", secs, stats))

        # Fix a diagnostic (resolve)
        actions, _ = await listed((18, 11), diagnostics=[DIAGNOSTIC], only=["quickfix"])
        resolved, secs = await timed(c.resolve(actions["fix"]))
        stats = resolved.data["result"]
        out = resolved.edit.document_changes[0].edits[0].new_text if resolved.edit else f"(no edit: {stats['message']})"
        rows.append(("Fix: `\"tpo\" is not defined`", "`best_player`", f"{secs:.1f} s", stats["prompt_tokens"],
                     stats["generated_tokens"]))
        sections.append(("Fix this diagnostic", "codeAction/resolve with the diagnostic "
                         "`\"tpo\" is not defined` (Pyright) in the request's context; the edit replaces "
                         "`best_player` with:", fenced(out), "", secs, stats))

        # Write tests (executeCommand)
        before = len(c.applied_edits)
        reply, secs = await timed(c.run_action(uri, (14, 8), (14, 8), "tests"))
        if len(c.applied_edits) > before:
            create, fill = c.applied_edits[before].edit.document_changes
            out = fill.edits[0].new_text
            where = Path(create.uri.replace("file://", "")).name
        else:
            out, where = f"(no edit: {reply['message']})", "-"
        rows.append(("Write tests", "`best_player`", f"{secs:.1f} s", reply["stats"]["prompt_tokens"],
                     reply["stats"]["generated_tokens"]))
        sections.append(("Write tests", f"workspace/executeCommand `infill.runAction` \"tests\" on `best_player`; "
                         f"a workspace edit creates `{where}` next to `scores.py` with:", fenced(out), "", secs,
                         reply["stats"]))

    lines = [BEGIN, "",
             f"Generated by `bench/actions_demo.py` on {time.strftime('%Y-%m-%d')}: model `{model}` "
             f"(`{catalog.model_path(catalog.load_catalog().get(model)).name if model == 'default' else model}`), "
             f"llama-cpp-python CPU build, {os.cpu_count()} CPU cores shared with other jobs "
             f"({platform.machine()}). Greedy decoding, so a rerun gives the same text; times vary with the load.",
             "", "The example file `scores.py`:", "", fenced(EXAMPLE), "",
             "| action | target | wall time | prompt tokens | generated tokens |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {t} | {w} | {p} | {g} |" for a, t, w, p, g in rows]
    for title, how, body, kind, secs, stats in sections:
        lines += ["", f"### {title} ({secs:.1f} s)", "",
                  f"{how} (prompt {stats['prompt_tokens']} tokens in {stats['prompt_ms'] / 1000:.1f} s, "
                  f"{stats['generated_tokens']} tokens generated in {stats['generate_ms'] / 1000:.1f} s, "
                  f"finish: {stats['finish_reason']})", ""]
        if kind == "markdown":
            lines += ["> " + ln if ln else ">" for ln in body.split("\n")]
        else:
            lines.append(body)
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--print", action="store_true", help="print only; do not touch docs/ACTIONS.md")
    args = parser.parse_args()
    results = asyncio.run(run(args.model))
    print(results)
    if args.print:
        return
    doc = ROOT / "docs" / "ACTIONS.md"
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# Code actions\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    doc.write_text(head + results + tail, encoding="utf-8")
    print(f"updated {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
