"""A small LSP client that drives the real server process over stdio.

Used by `infill-ls complete`, the demo, the benchmarks and the end-to-end tests: each of them talks to
the server exactly as an editor does (initialize, didOpen, textDocument/inlineCompletion, shutdown).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

from lsp_server.context import grammar_for

LANGUAGE_IDS = {
    ".py": "python", ".js": "javascript", ".jsx": "javascriptreact", ".ts": "typescript",
    ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".cc": "cpp", ".hpp": "cpp", ".cs": "csharp", ".rb": "ruby", ".php": "php",
    ".lua": "lua", ".sh": "shellscript", ".bash": "shellscript",
}


def language_id_for(path: str) -> str:
    ext = Path(path).suffix.lower()
    return LANGUAGE_IDS.get(ext, grammar_for(None, path) or "plaintext")


def server_command() -> list[str]:
    return [sys.executable, "-m", "lsp_server", "serve"]


class InfillClient:
    """`async with InfillClient(options) as c: await c.open(...); await c.inline(...)`"""

    def __init__(self, options: dict[str, Any] | None = None, *, env: dict[str, str] | None = None,
                 command: list[str] | None = None, root: str | None = None, stderr_path: str | None = None):
        self.options = options or {}
        self.stderr_path = stderr_path  # the server's stderr (its log) is appended here when given
        self.stderr_tail = bytearray()  # the last 64 KB of it, for error reports
        self._stderr_task: asyncio.Task | None = None
        self.env = env
        self.command = command or server_command()
        self.root = root
        self.client = LanguageClient("infill-ls-client", "0.1")
        self.messages: list[lsp.ShowMessageParams] = []
        self.notifications: list[tuple[str, Any]] = []
        self.versions: dict[str, int] = {}
        self._request_ids = itertools.count(1)

        @self.client.feature(lsp.WINDOW_SHOW_MESSAGE)
        def _show(params: lsp.ShowMessageParams) -> None:
            self.messages.append(params)

        @self.client.feature("infill/modelState")
        def _state(params: Any) -> None:
            self.notifications.append(("infill/modelState", params))

        # Code actions: what the server sends back while an action runs, recorded for callers and tests.
        self.progress: list[lsp.ProgressParams] = []
        self.progress_tokens: list[Any] = []
        self.applied_edits: list[lsp.ApplyWorkspaceEditParams] = []
        self.shown_documents: list[lsp.ShowDocumentParams] = []

        @self.client.feature(lsp.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def _progress_create(params: lsp.WorkDoneProgressCreateParams) -> None:
            self.progress_tokens.append(params.token)

        @self.client.feature(lsp.PROGRESS)
        def _progress(params: lsp.ProgressParams) -> None:
            self.progress.append(params)

        @self.client.feature(lsp.WORKSPACE_APPLY_EDIT)
        def _apply_edit(params: lsp.ApplyWorkspaceEditParams) -> lsp.ApplyWorkspaceEditResult:
            self.applied_edits.append(params)
            return lsp.ApplyWorkspaceEditResult(applied=True)

        @self.client.feature(lsp.WINDOW_SHOW_DOCUMENT)
        def _show_document(params: lsp.ShowDocumentParams) -> lsp.ShowDocumentResult:
            self.shown_documents.append(params)
            return lsp.ShowDocumentResult(success=True)

        for method in ("infill/explanation", "infill/actionStream"):
            self.client.feature(method)(lambda params, m=method: self.notifications.append((m, params)))

    async def __aenter__(self) -> "InfillClient":
        env = dict(os.environ if self.env is None else self.env)
        await self.client.start_io(*self.command, env=env)
        # pygls gives the server a stderr PIPE and never reads it: once 64 KB of logs fill it, the server
        # blocks in its next log write. Drain it into a bounded tail (and a file, when asked).
        self._stderr_task = asyncio.create_task(self._drain_stderr(self.client._server.stderr))
        root_uri = Path(self.root).resolve().as_uri() if self.root else None
        await self.client.initialize_async(
            lsp.InitializeParams(
                process_id=os.getpid(),
                root_uri=root_uri,
                capabilities=lsp.ClientCapabilities(
                    text_document=lsp.TextDocumentClientCapabilities(
                        inline_completion=lsp.InlineCompletionClientCapabilities(),
                        synchronization=lsp.TextDocumentSyncClientCapabilities(),
                        code_action=lsp.CodeActionClientCapabilities(
                            code_action_literal_support=lsp.ClientCodeActionLiteralOptions(
                                code_action_kind=lsp.ClientCodeActionKindOptions(value_set=[""])),
                            resolve_support=lsp.ClientCodeActionResolveOptions(properties=["edit"]),
                            data_support=True),
                    ),
                    workspace=lsp.WorkspaceClientCapabilities(
                        apply_edit=True,
                        workspace_edit=lsp.WorkspaceEditClientCapabilities(
                            document_changes=True, resource_operations=[lsp.ResourceOperationKind.Create])),
                    window=lsp.WindowClientCapabilities(
                        work_done_progress=True, show_document=lsp.ShowDocumentClientCapabilities(support=True)),
                ),
                initialization_options=self.options,
            )
        )
        self.client.initialized(lsp.InitializedParams())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self.client.stopped:
            return
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), 10)
            self.client.exit(None)
        except Exception:  # noqa: BLE001 - the server may already be gone; stop() cleans up
            pass
        server = self.client._server
        try:
            await asyncio.wait_for(self.client.stop(), 10)
        except asyncio.TimeoutError:  # it did not exit: do not leave it behind
            if server is not None and server.returncode is None:
                server.kill()
                await server.wait()
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(self._stderr_task, 2)
            except asyncio.TimeoutError:
                self._stderr_task.cancel()

    async def _drain_stderr(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        log_file = open(self.stderr_path, "ab") if self.stderr_path else None
        try:
            while chunk := await stream.read(65536):
                self.stderr_tail += chunk
                del self.stderr_tail[:-65536]
                if log_file is not None:
                    log_file.write(chunk)
                    log_file.flush()
        finally:
            if log_file is not None:
                log_file.close()

    def open(self, uri: str, text: str, language_id: str) -> None:
        self.versions[uri] = 1
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)))

    def change(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.versions[uri] += 1
        rng = lsp.Range(start=lsp.Position(*start), end=lsp.Position(*end))
        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[lsp.TextDocumentContentChangePartial(range=rng, text=text)]))

    def inline_params(self, uri: str, line: int, character: int, invoked: bool = False) -> lsp.InlineCompletionParams:
        kind = lsp.InlineCompletionTriggerKind.Invoked if invoked else lsp.InlineCompletionTriggerKind.Automatic
        return lsp.InlineCompletionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=lsp.Position(line=line, character=character),
            context=lsp.InlineCompletionContext(trigger_kind=kind))

    async def inline(self, uri: str, line: int, character: int, invoked: bool = False) -> str:
        """`invoked`: as when the user asks for a suggestion explicitly (trigger kind Invoked: the longer
        time budget, completion.time_budget_invoked_ms); otherwise as while typing (Automatic)."""
        result = await self.client.text_document_inline_completion_async(
            self.inline_params(uri, line, character, invoked))
        return inline_text(result)

    def inline_request(self, uri: str, line: int, character: int) -> tuple[str, asyncio.Future]:
        """Send textDocument/inlineCompletion without waiting, as an editor does while the user types.

        Returns the request id (for `cancel`, i.e. `$/cancelRequest`) and a future of the raw result
        (`inline_text` turns it into the first item's text). A cancelled request's future fails with
        pygls' JsonRpcRequestCancelled unless the server answered first."""
        msg_id = f"inline-{next(self._request_ids)}"
        future = self.client.protocol.send_request_async(
            lsp.TEXT_DOCUMENT_INLINE_COMPLETION, self.inline_params(uri, line, character), msg_id=msg_id)
        return msg_id, future

    async def status(self) -> dict[str, Any]:
        return to_plain(await self.client.protocol.send_request_async("infill/status", {}))

    # -- code actions ---------------------------------------------------------------------------------------
    async def code_actions(self, uri: str, start: tuple[int, int], end: tuple[int, int] | None = None, *,
                           diagnostics: list[lsp.Diagnostic] | None = None,
                           only: list[str] | None = None) -> list[lsp.CodeAction]:
        rng = lsp.Range(start=lsp.Position(*start), end=lsp.Position(*(end or start)))
        result = await self.client.text_document_code_action_async(lsp.CodeActionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri), range=rng,
            context=lsp.CodeActionContext(diagnostics=diagnostics or [], only=only)))
        return [a for a in (result or []) if isinstance(a, lsp.CodeAction)]

    async def resolve(self, action: lsp.CodeAction, *, msg_id: str | None = None) -> lsp.CodeAction:
        """codeAction/resolve; pass msg_id to be able to cancel it with `cancel(msg_id)`."""
        return await self.client.protocol.send_request_async(lsp.CODE_ACTION_RESOLVE, action, msg_id=msg_id)

    async def run_action(self, uri: str, start: tuple[int, int], end: tuple[int, int], action: str,
                         instruction: str | None = None, *, msg_id: str | None = None) -> dict[str, Any]:
        """workspace/executeCommand infill.runAction; the server applies edits with workspace/applyEdit."""
        rng = {"start": {"line": start[0], "character": start[1]}, "end": {"line": end[0], "character": end[1]}}
        args: list[Any] = [uri, rng, action] + ([instruction] if instruction else [])
        result = await self.client.protocol.send_request_async(
            lsp.WORKSPACE_EXECUTE_COMMAND, lsp.ExecuteCommandParams(command="infill.runAction", arguments=args),
            msg_id=msg_id)
        return to_plain(result)

    def cancel(self, msg_id: str) -> None:
        self.client.protocol.notify(lsp.CANCEL_REQUEST, lsp.CancelParams(id=msg_id))


def inline_text(result: Any) -> str:
    """The first item's text of a textDocument/inlineCompletion result ("" when there is none)."""
    items = result.items if isinstance(result, lsp.InlineCompletionList) else (result or [])
    if not items:
        return ""
    text = items[0].insert_text
    return text if isinstance(text, str) else text.value


def to_plain(value: Any) -> Any:
    """pygls hands results of custom methods back as namedtuples: turn them into dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: to_plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


async def complete_file(path: str, line: int, column: int, options: dict[str, Any] | None = None) -> str:
    """Headless completion of one position (1-based line and column, as editors and grep print them)."""
    text = Path(path).read_text(encoding="utf-8")
    uri = Path(path).resolve().as_uri()
    lines = text.splitlines(keepends=True) or [""]
    if not 1 <= line <= len(lines) + 1:
        raise ValueError(f"{path}: line {line} is outside the file (1..{len(lines)})")
    line_text = lines[line - 1].rstrip("\r\n") if line <= len(lines) else ""
    if column == 0:  # 0 or "end": the end of the line
        column = len(line_text) + 1
    if not 1 <= column <= len(line_text) + 1:
        raise ValueError(f"{path}:{line}: column {column} is outside the line (1..{len(line_text) + 1})")
    character = len(line_text[: column - 1].encode("utf-16-le")) // 2
    async with InfillClient(options) as client:
        client.open(uri, text, language_id_for(path))
        result = await client.inline(uri, line - 1, character, invoked=True)
        for message in client.messages:
            print(f"infill-ls: {message.message}", file=sys.stderr)
        return result
