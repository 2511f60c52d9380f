"""The language server: owns settings, documents and the engine; the handlers are thin.

Standard methods: textDocument/inlineCompletion (LSP 3.18) and textDocument/completion for clients
without it. Custom methods live in the `infill/` namespace: `infill/status` (request: model state and
the last request's timings), `infill/modelState` (notification sent when the model state changes) and
`infill/documentText` (diagnostic request: the server's copy of a document, for tests and bug reports).
"""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from lsp_server import __version__, privacy
from lsp_server.config import Settings, parse_settings
from lsp_server.context import position_to_offset
from lsp_server.documents import DocumentStore, uri_to_path, workspace_root_from
from lsp_server.engine import Engine, ModelState
from lsp_server.transport import InfillProtocol, serve_stdio

log = logging.getLogger(__name__)

STATUS_REQUEST = "infill/status"
MODEL_STATE_NOTIFICATION = "infill/modelState"
DOCUMENT_TEXT_REQUEST = "infill/documentText"  # diagnostic: the server's copy of a document


class InfillServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("infill-ls", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental,
                         protocol_cls=InfillProtocol)
        self.settings = Settings()
        self.trusted = False  # whether the client vouched for its settings (privacy.enforce_trust)
        self.documents = DocumentStore()
        self.engine = Engine(self.settings, notify=self.show)
        self.engine.on_state = self._model_state_changed
        self.engine.open_documents = lambda uri: [
            (uri_to_path(d.uri), d.text, d.tree.grammar) for d in self.documents.others(uri)]

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        """stdio through lsp_server.transport (bounded frames, every request answered); sets exit_code."""
        self.exit_code = serve_stdio(self)

    def show(self, level: str, message: str) -> None:
        kind = {"error": lsp.MessageType.Error, "warning": lsp.MessageType.Warning}.get(level, lsp.MessageType.Info)
        log.log(logging.ERROR if level == "error" else logging.WARNING, "%s", message)
        try:
            self.window_show_message(lsp.ShowMessageParams(type=kind, message=message))
        except Exception:  # noqa: BLE001 - before initialize there is no writer; the log line stands
            pass

    def _model_state_changed(self, state: str, detail: str) -> None:
        try:
            self.protocol.notify(MODEL_STATE_NOTIFICATION, {"state": state, "detail": detail})
        except Exception:  # noqa: BLE001
            pass

    def apply_settings(self, raw: Any, *, initial: bool = False) -> None:
        # Workspace trust (lsp_server/privacy.py): the client may vouch for its settings only at initialize.
        raw, trusted, notes = privacy.split_trust_flag(raw, initial=initial)
        if initial:
            self.trusted = trusted
        settings, errors = parse_settings(raw)
        if errors:
            self.show("warning", "infill-ls: invalid settings, using defaults for: " + "; ".join(errors))
        user = privacy.user_config()
        settings, refused = privacy.enforce_trust(settings, self.trusted, user)
        notes += list(user.errors) + refused
        if notes:
            self.show("warning", "infill-ls: " + "; ".join(notes))
        privacy.set_redaction(settings.privacy.redact_secrets)
        self.settings = settings
        logging.getLogger("lsp_server").setLevel(settings.log_level.upper())
        self.engine.reconfigure(settings)


server = InfillServer()


@server.feature(lsp.INITIALIZE)
def on_initialize(ls: InfillServer, params: lsp.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options, initial=True)
    folders = params.workspace_folders or []
    root = folders[0].uri if folders else (params.root_uri or params.root_path)
    ls.engine.workspace_root = workspace_root_from(root)


@server.feature(lsp.INITIALIZED)
async def on_initialized(ls: InfillServer, params: lsp.InitializedParams) -> None:
    if ls.settings.load == "startup":
        try:
            await ls.engine.ensure_loaded()
        except Exception:  # noqa: BLE001 - already reported through showMessage by the engine
            pass


@server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
def on_configuration(ls: InfillServer, params: lsp.DidChangeConfigurationParams) -> None:
    ls.apply_settings(params.settings)


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def on_open(ls: InfillServer, params: lsp.DidOpenTextDocumentParams) -> None:
    doc = params.text_document
    ls.documents.open(doc.uri, doc.language_id, doc.version, doc.text)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def on_change(ls: InfillServer, params: lsp.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.documents.change(uri, params.text_document.version, params.content_changes)
    if doc is None:
        log.warning("didChange for a document that is not open: %s", uri)
        return
    ls.engine.document_changed(doc.snapshot(), lambda: getattr(ls.documents.get(uri), "version", None),
                               cursor=_cursor_after(doc.text, params.content_changes),
                               latest=lambda: (lambda d: d.snapshot() if d is not None else None)(ls.documents.get(uri)))


def _cursor_after(text: str, changes: list) -> int | None:
    """Where the cursor most likely is after an edit: the end of the last change's inserted text."""
    if not changes:
        return None
    last = changes[-1]
    rng = getattr(last, "range", None)
    if rng is None:
        return None
    return position_to_offset(text, rng.start.line, rng.start.character) + len(last.text)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def on_close(ls: InfillServer, params: lsp.DidCloseTextDocumentParams) -> None:
    ls.documents.close(params.text_document.uri)
    ls.engine.forget(params.text_document.uri)


async def _suggest(ls: InfillServer, uri: str, position: lsp.Position, invoked: bool = False):
    doc = ls.documents.get(uri)
    if doc is None:
        log.warning("completion for a document that is not open: %s", uri)
        return None
    snap = doc.snapshot()
    refused = privacy.completion_allowed(snap.path, ls.settings, getattr(ls.engine, "workspace_root", None))
    if refused:
        log.info("no completion: %s", refused)  # no prompt is built, nothing is sent
        return None
    suggestion = await ls.engine.complete(snap, position.line, position.character,
                                          current_version=lambda: getattr(ls.documents.get(uri), "version", None),
                                          invoked=invoked)
    return suggestion.text or None


@server.feature(lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions())
async def on_inline_completion(ls: InfillServer, params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList:
    context = getattr(params, "context", None)
    invoked = getattr(context, "trigger_kind", None) == lsp.InlineCompletionTriggerKind.Invoked
    text = await _suggest(ls, params.text_document.uri, params.position, invoked)
    if not text:
        return lsp.InlineCompletionList(items=[])
    at = lsp.Range(start=params.position, end=params.position)
    return lsp.InlineCompletionList(items=[lsp.InlineCompletionItem(insert_text=text, range=at)])


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(resolve_provider=False))
async def on_completion(ls: InfillServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    context = getattr(params, "context", None)
    invoked = getattr(context, "trigger_kind", None) == lsp.CompletionTriggerKind.Invoked
    text = await _suggest(ls, params.text_document.uri, params.position, invoked)
    if not text:
        return lsp.CompletionList(is_incomplete=True, items=[])
    first = text.split("\n", 1)[0].strip() or text.strip().split("\n", 1)[0]
    label = first + (" …" if "\n" in text.strip("\n") else "")
    at = lsp.Range(start=params.position, end=params.position)
    item = lsp.CompletionItem(
        label=label[:80],
        kind=lsp.CompletionItemKind.Snippet,
        detail="infill-ls",
        documentation=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=f"```\n{text}\n```"),
        text_edit=lsp.TextEdit(range=at, new_text=text),
        insert_text_format=lsp.InsertTextFormat.PlainText,
        sort_text="0",
        filter_text=first,
    )
    return lsp.CompletionList(is_incomplete=True, items=[item])


@server.feature(STATUS_REQUEST)
def on_status(ls: InfillServer, params: Any) -> dict[str, Any]:
    status = ls.engine.status()
    status["version"] = __version__
    status["documents"] = len(ls.documents._docs)
    return status


@server.feature(DOCUMENT_TEXT_REQUEST)
def on_document_text(ls: InfillServer, params: Any) -> dict[str, Any] | None:
    """Diagnostic: the server's copy of a document, so tests (and bug reports) can compare it with the
    editor's buffer. Params {"uri"}; null when the document is not open."""
    uri = params.get("uri") if isinstance(params, dict) else getattr(params, "uri", None)
    doc = ls.documents.get(uri) if isinstance(uri, str) else None
    if doc is None:
        return None
    return {"uri": doc.uri, "version": doc.version, "languageId": doc.language_id, "text": doc.text}


@server.feature(lsp.SHUTDOWN)
def on_shutdown(ls: InfillServer, params: Any) -> None:
    ls.engine.shutdown()


from lsp_server.features import register_all  # noqa: E402 - features register on the server made above

register_all(server)

__all__ = ["server", "InfillServer", "ModelState", "STATUS_REQUEST", "MODEL_STATE_NOTIFICATION"]
