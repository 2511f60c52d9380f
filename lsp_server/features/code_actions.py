"""Code actions driven by the local model: explain, refactor, docstring, fix a diagnostic, write tests.

`textDocument/codeAction` only lists actions (no model call). The model runs in `codeAction/resolve`, or
in `workspace/executeCommand` `infill.runAction` for clients that do not resolve (and for editor
commands that pass an instruction). Each run reports `$/progress` (begin, tokens generated, end),
streams its text so far in `infill/actionStream` notifications, and stops within one token when the
request is cancelled (`$/cancelRequest`) or its progress is (`window/workDoneProgress/cancel`).

Explanations are markdown: written to `<cache>/explanations/<name>.md` (user-only), opened with
`window/showDocument` where the client supports it, and always sent as the `infill/explanation`
notification {uri, title, markdown, path} that the editor clients render in a panel or float.

The pure parts (targets, prompts, answer parsing, validation, edits) are in lsp_server/actions.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from lsprotocol.converters import get_converter
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams, JsonRpcRequestCancelled

from lsp_server import actions as A
from lsp_server import privacy
from lsp_server.backends import ChatRequest
from lsp_server.config import cache_home
from lsp_server.context import position_to_offset
from lsp_server.errors import Cancelled, InfillError

log = logging.getLogger(__name__)

ACTION_COMMAND = "infill.runAction"
EXPLANATION_NOTIFICATION = "infill/explanation"
STREAM_NOTIFICATION = "infill/actionStream"
REPORT_INTERVAL_S = 0.25  # $/progress and stream notifications at most this often


class JsonRpcActionFailed(JsonRpcException):
    """The action could not run (model not loadable, prompt too long): a server error with the reason."""

    CODE = -32000
    MESSAGE = "Action failed"


# -- requests ------------------------------------------------------------------------------------------------
@dataclass
class ActionRequest:
    uri: str
    action: str
    start: tuple[int, int]
    end: tuple[int, int]
    instruction: str = ""
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    version: int | None = None

    def to_data(self) -> dict[str, Any]:
        return {"uri": self.uri, "action": self.action, "range": [*self.start, *self.end],
                "instruction": self.instruction, "diagnostics": self.diagnostics, "version": self.version}


def _position(raw: Any, name: str) -> tuple[int, int]:
    if isinstance(raw, lsp.Position):
        return raw.line, raw.character
    if isinstance(raw, dict) and isinstance(raw.get("line"), int) and isinstance(raw.get("character"), int):
        return raw["line"], raw["character"]
    raise JsonRpcInvalidParams(f"infill-ls: invalid range: {name} must be {{line, character}} integers, got {raw!r}")


def _range(raw: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(raw, lsp.Range):
        return (raw.start.line, raw.start.character), (raw.end.line, raw.end.character)
    if isinstance(raw, (list, tuple)) and len(raw) == 4 and all(isinstance(x, int) for x in raw):
        return (raw[0], raw[1]), (raw[2], raw[3])
    if isinstance(raw, dict):
        return _position(raw.get("start"), "start"), _position(raw.get("end"), "end")
    raise JsonRpcInvalidParams(f"infill-ls: invalid range {raw!r}: expected {{start, end}} positions")


def _diagnostic_data(d: Any) -> dict[str, Any]:
    if isinstance(d, lsp.Diagnostic):
        return {"line": d.range.start.line, "character": d.range.start.character, "message": d.message,
                "source": d.source or "", "code": "" if d.code is None else str(d.code)}
    if isinstance(d, dict):
        rng = d.get("range") or {}
        start = rng.get("start", {}) if isinstance(rng, dict) else {}
        return {"line": int(d.get("line", start.get("line", 0))), "character": int(d.get("character", start.get("character", 0))),
                "message": str(d.get("message", "")), "source": str(d.get("source") or ""),
                "code": "" if d.get("code") is None else str(d.get("code"))}
    raise JsonRpcInvalidParams(f"infill-ls: invalid diagnostic {d!r}")


def parse_request(raw: Any) -> ActionRequest:
    """From code action data or executeCommand arguments: one object, or [uri, range, action, instruction?]."""
    if isinstance(raw, (list, tuple)):
        if len(raw) == 1 and isinstance(raw[0], dict):
            raw = raw[0]
        elif 3 <= len(raw) <= 4:
            raw = {"uri": raw[0], "range": raw[1], "action": raw[2], "instruction": raw[3] if len(raw) > 3 else ""}
        else:
            raise JsonRpcInvalidParams(f"infill-ls: {ACTION_COMMAND} takes (uri, range, action, instruction?) "
                                       f"or one object, got {len(raw)} arguments")
    if not isinstance(raw, dict):
        raise JsonRpcInvalidParams(f"infill-ls: expected an action request object, got {raw!r}")
    uri, action = raw.get("uri"), raw.get("action")
    if not isinstance(uri, str) or not uri:
        raise JsonRpcInvalidParams("infill-ls: the action request has no document uri")
    if not isinstance(action, str) or not action:
        raise JsonRpcInvalidParams("infill-ls: the action request has no action name")
    start, end = _range(raw.get("range"))
    instruction = raw.get("instruction") or ""
    if not isinstance(instruction, str):
        raise JsonRpcInvalidParams("infill-ls: instruction must be a string")
    diagnostics = [_diagnostic_data(d) for d in (raw.get("diagnostics") or [])]
    version = raw.get("version") if isinstance(raw.get("version"), int) else None
    return ActionRequest(uri, action, start, end, instruction, diagnostics, version)


# -- progress ------------------------------------------------------------------------------------------------
class Progress:
    """$/progress for one action (when the client supports work done progress) plus stream notifications."""

    def __init__(self, ls: Any, title: str, max_tokens: int, uri: str, action: str, cancel: threading.Event):
        self.ls = ls
        self.title = title
        self.max_tokens = max(1, max_tokens)
        self.uri = uri
        self.action = action
        self.cancel = cancel
        self.token = f"infill-action-{uuid.uuid4().hex[:12]}"
        self.enabled = False
        self.ended = False
        self.tokens = 0
        self._last = 0.0
        self._loop = asyncio.get_running_loop()

    async def begin(self) -> None:
        caps = getattr(self.ls.client_capabilities, "window", None)
        if caps is not None and caps.work_done_progress:
            try:
                await asyncio.wait_for(self.ls.work_done_progress.create_async(self.token), 5)
                self.enabled = True
            except Exception as exc:  # noqa: BLE001 - progress is a nicety; the action runs without it
                log.info("window/workDoneProgress/create failed: %s", exc)
        if not self.enabled:
            return
        self.ls.work_done_progress.begin(self.token, lsp.WorkDoneProgressBegin(
            title=self.title, cancellable=True, message="waiting for the model", percentage=0))
        future = self.ls.work_done_progress.tokens.get(self.token)
        if future is not None:  # window/workDoneProgress/cancel cancels this future
            future.add_done_callback(lambda f: f.cancelled() and self.cancel.set())

    def on_text(self, text: str) -> None:
        """Called on the model worker thread after each token."""
        self.tokens += 1
        now = time.monotonic()
        if now - self._last >= REPORT_INTERVAL_S:
            self._last = now
            self._loop.call_soon_threadsafe(self._report, self.tokens, text)

    def _report(self, n: int, text: str) -> None:
        if self.ended:
            return
        if self.enabled:
            self.ls.work_done_progress.report(self.token, lsp.WorkDoneProgressReport(
                message=f"{n} tokens generated", percentage=min(99, n * 100 // self.max_tokens), cancellable=True))
        self.ls.protocol.notify(STREAM_NOTIFICATION, {"token": self.token, "uri": self.uri, "action": self.action,
                                                      "tokens": n, "text": text, "done": False})

    def end(self, message: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self.enabled:
            self.ls.work_done_progress.end(self.token, lsp.WorkDoneProgressEnd(message=message))
            self.ls.work_done_progress.tokens.pop(self.token, None)
        self.ls.protocol.notify(STREAM_NOTIFICATION, {"token": self.token, "uri": self.uri, "action": self.action,
                                                      "tokens": self.tokens, "done": True, "message": message})


# -- running an action ---------------------------------------------------------------------------------------
@dataclass
class ActionResult:
    spec: A.ActionSpec
    edit: lsp.WorkspaceEdit | None = None
    markdown: str = ""
    path: str = ""  # explanation file or new test file
    message: str = ""  # why there is no edit
    stats: dict[str, Any] = field(default_factory=dict)
    answer: str = ""  # the model's raw answer (for debugging and the docs)


def _document(ls: Any, uri: str):
    doc = ls.documents.get(uri)
    if doc is None:
        raise JsonRpcInvalidParams(f"infill-ls: unknown document {uri}: it is not open (send didOpen first)")
    return doc


def _spec(ls: Any, name: str) -> A.ActionSpec:
    actions, _errors = A.load_actions(ls.settings.actions)
    spec = actions.get(name)
    if spec is None:
        raise JsonRpcInvalidParams(f"infill-ls: unknown action {name!r} (known: {', '.join(actions)})")
    return spec


def _offsets(text: str, req: ActionRequest) -> tuple[int, int]:
    try:
        A.check_range(text, req.start, req.end)
    except A.InvalidActionRequest as exc:
        raise JsonRpcInvalidParams(f"infill-ls: {exc}") from exc
    return position_to_offset(text, *req.start), position_to_offset(text, *req.end)


def _target(spec: A.ActionSpec, snap: Any, req: ActionRequest, start: int, end: int) -> A.Target:
    text = snap.text
    if spec.when == "diagnostics" and req.diagnostics:
        first = req.diagnostics[0]
        line_begin = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line_end = len(text) if line_end == -1 else line_end
        small = start == end or (end <= line_end and
                                 len(text[start:end].strip()) < len(text[line_begin:line_end].strip()))
        if small:  # a cursor or a diagnostic's own tiny range: fix the enclosing function (or line)
            start = end = position_to_offset(text, first["line"], first["character"])
    try:
        return A.pick_target(text, snap.tree, snap.grammar, start, end, target=spec.target)
    except A.InvalidActionRequest as exc:
        raise JsonRpcInvalidParams(f"infill-ls: {exc}") from exc


def _outer_request_future(ls: Any):
    """workspace/executeCommand runs the command in its own task; $/cancelRequest cancels the request's
    outer future only. Find it so the cancel reaches the command (and the model)."""
    try:
        return ls.protocol._request_futures.get(ls.protocol.msg_id)
    except AttributeError:
        return None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


async def run_action(ls: Any, req: ActionRequest) -> ActionResult:
    """Run one action to a result. Raises JSON-RPC errors for bad requests and model failures; an answer
    that cannot be used gives a result with a message and no edit."""
    t0 = time.perf_counter()
    spec = _spec(ls, req.action)
    doc = _document(ls, req.uri)
    snap = doc.snapshot()
    start, end = _offsets(snap.text, req)
    target = _target(spec, snap, req, start, end)
    path = snap.path
    test_path = A.test_file_path(path, snap.grammar) if spec.output == "new_file" else ""
    messages = A.build_messages(spec, target, grammar=snap.grammar, language_id=snap.language_id, path=path,
                                instruction=req.instruction,
                                diagnostics=A.format_diagnostics(snap.text, req.diagnostics), test_path=test_path)
    model = spec.model or ls.settings.actions_model or ""
    refused = privacy.completion_allowed(path, ls.settings, getattr(ls.engine, "workspace_root", None), model or None)
    if refused:  # nothing of this file goes into a prompt
        raise JsonRpcActionFailed(f"infill-ls: {spec.name}: {refused}")
    try:
        backend = await ls.engine.backend_for(model or None)
    except InfillError as exc:
        ls.show("error", f"infill-ls: {spec.title}: the model {model or ls.settings.model!r} is not available: {exc}")
        raise JsonRpcActionFailed(f"infill-ls: the model for {spec.name!r} is not available: {exc}") from exc
    if not hasattr(backend, "chat"):
        raise JsonRpcActionFailed(f"infill-ls: the {backend.name!r} backend cannot run chat actions")

    cancel = threading.Event()
    progress = Progress(ls, spec.title.replace(" (infill)", ""), spec.max_tokens, req.uri, spec.name, cancel)
    await progress.begin()
    request = ChatRequest(messages=messages, max_tokens=spec.max_tokens)

    def work():
        if cancel.is_set():
            raise Cancelled("cancelled before the model started")
        return backend.chat(request, cancel, progress.on_text)

    task = asyncio.ensure_future(ls.engine.run_on_worker(work))
    try:
        gen = await asyncio.shield(task)
    except asyncio.CancelledError:
        cancel.set()  # $/cancelRequest: the model stops within one token
        task.add_done_callback(lambda _t: progress.end(f"cancelled after {progress.tokens} tokens"))
        log.info("action %s cancelled after %d tokens", spec.name, progress.tokens)
        raise
    except Cancelled as exc:  # window/workDoneProgress/cancel
        progress.end(f"cancelled after {progress.tokens} tokens")
        raise JsonRpcRequestCancelled(f"infill-ls: {spec.name} cancelled") from exc
    except InfillError as exc:
        progress.end("failed")
        ls.show("error", f"infill-ls: {spec.title}: {exc}")
        raise JsonRpcActionFailed(f"infill-ls: {spec.name} failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        progress.end("failed")
        raise JsonRpcInternalError(f"infill-ls: {spec.name} failed: {type(exc).__name__}: {exc}") from exc

    stats = {"action": spec.name, "prompt_tokens": gen.prompt_tokens, "generated_tokens": gen.generated_tokens,
             "prompt_ms": round(gen.prompt_ms, 1), "generate_ms": round(gen.generate_ms, 1),
             "finish_reason": gen.finish_reason}
    result = ActionResult(spec, stats=stats, answer=gen.text)
    try:
        if spec.output == "markdown":
            body = A.markdown_answer(gen.text)
            result.markdown = A.explanation_markdown(spec.title, path, target, snap.text, body)
            file = cache_home() / "explanations" / f"{A.explanation_name(path, target, snap.text)}.md"
            _write_private(file, result.markdown)
            result.path = str(file)
        elif spec.output == "new_file":
            planned = A.plan_new_file(gen.text, gen.finish_reason, spec, snap.grammar, test_path,
                                      module=Path(path).stem, symbol=target.symbol)
            result.edit = A.new_file_edit(Path(planned.test_path).as_uri(), planned.new_text)
            result.path = planned.test_path
        else:
            planned = A.plan_replacement(gen.text, gen.finish_reason, spec, snap.text, target, snap.grammar)
            current = ls.documents.get(req.uri)
            if current is None or current.version != snap.version:
                raise A.UnusableAnswer("the document changed while the model was working; run the action again")
            result.edit = A.replace_edit(req.uri, snap.version, snap.text, target, planned.new_text,
                                         document_changes=_document_changes(ls))
    except A.UnusableAnswer as exc:
        result.message = f"{spec.title.replace(' (infill)', '')}: {exc}; no edit was made"
        ls.show("warning", f"infill-ls: {result.message}")
        log.info("action %s: unusable answer (%d characters)", spec.name, len(gen.text))
        log.debug("action %s: the answer was %r", spec.name, gen.text[:500])  # code: only in debug logs
    progress.end(result.message or "done")
    stats["total_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    log.info("action %s", " ".join(f"{k}={v}" for k, v in stats.items()))
    if result.markdown:
        _show_explanation(ls, req.uri, spec, result)
    return result


def _document_changes(ls: Any) -> bool:
    ws = getattr(ls.client_capabilities, "workspace", None)
    edit = getattr(ws, "workspace_edit", None) if ws else None
    return bool(edit and edit.document_changes)


def _show_explanation(ls: Any, uri: str, spec: A.ActionSpec, result: ActionResult) -> None:
    title = spec.title.replace(" (infill)", "")
    ls.protocol.notify(EXPLANATION_NOTIFICATION, {"uri": uri, "title": title, "markdown": result.markdown,
                                                  "path": result.path})
    window = getattr(ls.client_capabilities, "window", None)
    show = getattr(window, "show_document", None) if window else None
    if show is not None and show.support:
        future = ls.protocol.send_request(lsp.WINDOW_SHOW_DOCUMENT, lsp.ShowDocumentParams(
            uri=Path(result.path).as_uri(), external=False, take_focus=True))
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is None
                                 or log.info("window/showDocument failed: %s", f.exception()))


# -- handlers ------------------------------------------------------------------------------------------------
def _resolve_supported(ls: Any) -> bool:
    td = getattr(ls.client_capabilities, "text_document", None)
    ca = getattr(td, "code_action", None) if td else None
    support = getattr(ca, "resolve_support", None) if ca else None
    return bool(support and "edit" in (support.properties or []))


def register(server: Any) -> None:
    kinds = sorted({spec.kind for spec in A.builtin_actions().values()})

    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION,
                    lsp.CodeActionOptions(resolve_provider=True, code_action_kinds=kinds))
    def on_code_action(ls: Any, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        """Lists the actions for the selection or the node at the cursor. Instant: no model call."""
        uri = params.text_document.uri
        doc = _document(ls, uri)
        rng = params.range
        req = ActionRequest(uri, "", (rng.start.line, rng.start.character), (rng.end.line, rng.end.character),
                            diagnostics=[_diagnostic_data(d) for d in (params.context.diagnostics or [])],
                            version=doc.version)
        snap = doc.snapshot()
        start, end = _offsets(snap.text, req)
        actions, _errors = A.load_actions(ls.settings.actions)
        resolve = _resolve_supported(ls)
        out = []
        for spec in actions.values():
            if not A.matches_only(spec.kind, params.context.only):
                continue
            if spec.when == "diagnostics" and not req.diagnostics:
                continue
            try:
                _target(spec, snap, req, start, end)
            except JsonRpcInvalidParams:  # nothing to act on here (a blank line): list nothing
                continue
            req.action = spec.name
            data = req.to_data()
            action = lsp.CodeAction(title=spec.title, kind=spec.kind)
            if spec.when == "diagnostics":
                action.diagnostics = list(params.context.diagnostics or [])
            if resolve:
                action.data = data
            else:
                action.command = lsp.Command(title=spec.title, command=ACTION_COMMAND, arguments=[data])
            out.append(action)
        return out

    @server.feature(lsp.CODE_ACTION_RESOLVE)
    async def on_resolve(ls: Any, action: lsp.CodeAction) -> lsp.CodeAction:
        """Runs the model for one listed action: an edit, or an explanation shown in the editor."""
        if not isinstance(action.data, dict):
            raise JsonRpcInvalidParams("infill-ls: this code action has no infill-ls data to resolve")
        req = parse_request(action.data)
        doc = _document(ls, req.uri)
        if req.version is not None and doc.version != req.version:
            from pygls.exceptions import JsonRpcContentModified

            raise JsonRpcContentModified(f"infill-ls: {req.uri} changed since the action was listed")
        result = await run_action(ls, req)
        action.edit = result.edit
        action.data = {**action.data, "result": {**result.stats, "message": result.message, "path": result.path,
                                                 "answer": result.answer}}
        return action

    @server.command(ACTION_COMMAND)
    async def on_run_action(ls: Any, *args: Any) -> dict[str, Any]:
        """`infill.runAction` (uri, range, action, instruction?): runs the action and applies its edit with
        workspace/applyEdit (or shows the explanation). Returns what happened."""
        task = asyncio.current_task()
        outer = _outer_request_future(ls)
        if outer is not None and outer is not task and task is not None:
            outer.add_done_callback(lambda f: f.cancelled() and task.cancel())
        req = parse_request(list(args))
        result = await run_action(ls, req)
        reply: dict[str, Any] = {"action": req.action, "applied": False, "message": result.message,
                                 "stats": result.stats, "answer": result.answer}
        if result.markdown:
            reply.update(markdown=result.markdown, path=result.path)
        if result.edit is not None:
            if result.path:
                reply["path"] = result.path
            ws = getattr(ls.client_capabilities, "workspace", None)
            if ws is not None and ws.apply_edit:
                applied = await ls.workspace_apply_edit_async(lsp.ApplyWorkspaceEditParams(
                    edit=result.edit, label=result.spec.title))
                reply["applied"] = bool(applied.applied)
                if not applied.applied:
                    reply["message"] = f"the editor did not apply the edit: {applied.failure_reason or 'no reason given'}"
            reply["edit"] = get_converter().unstructure(result.edit)
        return reply
