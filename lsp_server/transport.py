"""The stdio transport: message framing, decoding, and which message gets which answer.

pygls' own stdio loop (`pygls.io_.run_async`) drops any message it cannot decode or structure with only a
log line, so a request carrying one invalid UTF-8 byte, a parameter of the wrong type or a wrong
`jsonrpc` version is never answered and the editor waits for it forever; a `Content-Length` of a terabyte
makes it allocate the whole body (MemoryError: the server dies). `serve_stdio` replaces that loop:

* frames: `Content-Length` is read case-insensitively, header lines and bodies are bounded
  (`INFILL_LS_MAX_MESSAGE_MB`, default 64); an oversized body is read and thrown away in chunks and
  answered with an InvalidRequest error (id null: its id is unknown);
* bodies are decoded as UTF-8 with invalid bytes replaced by U+FFFD, so a stray byte costs one character,
  not the whole edit (which would leave the server's copy of a document out of step with the editor's);
* unparsable JSON gets a ParseError (id null); a request whose params do not fit its method gets an
  InvalidParams error with its own id; a notification that does not fit is logged and dropped;
* before `initialize`, requests get ServerNotInitialized and notifications are dropped; after `shutdown`,
  requests get InvalidRequest (the LSP rules; pygls answered neither);
* fds 0 and 1 are moved aside for the protocol: native code (llama.cpp, ggml) printing to stdout writes
  to stderr instead, and nothing that redirects fd 1 (llama-cpp-python's quiet model loading does) can
  swallow or corrupt a reply.

Reading runs on its own thread (JSON parsing of a 10 MB didOpen does not stall the event loop); each
message is handed to the event loop in order.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import os
import sys
import threading
from typing import Any, BinaryIO, Callable, Generator

from lsprotocol import types as lsp
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)

MAX_HEADER_LINE = 8192
_DISCARD_CHUNK = 1 << 20


def max_message_bytes() -> int:
    try:
        mb = float(os.environ.get("INFILL_LS_MAX_MESSAGE_MB", "64"))
    except ValueError:
        mb = 64.0
    return max(1, int(mb * 1024 * 1024))


def _valid_id(value: Any) -> int | str | None:
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


class InfillProtocol(LanguageServerProtocol):
    """LanguageServerProtocol plus the LSP lifecycle rules pygls leaves out (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initialize_seen = False

    def send_error(self, msg_id: Any, code: int, message: str) -> None:
        self._send_data({"jsonrpc": "2.0", "id": _valid_id(msg_id), "error": {"code": code, "message": message}})

    def handle_message(self, message: Any) -> None:
        method = getattr(message, "method", None)
        is_request = method is not None and hasattr(message, "id")
        if method == lsp.INITIALIZE:
            self.initialize_seen = True
        elif method is not None and method != lsp.EXIT and not self.initialize_seen:
            if is_request:
                self.send_error(message.id, lsp.ErrorCodes.ServerNotInitialized,
                                f"infill-ls: {method} before initialize")
            else:
                log.warning("dropped notification %s before initialize", method)
            return
        if self._shutdown and is_request:
            self.send_error(message.id, lsp.ErrorCodes.InvalidRequest, f"infill-ls: {method} after shutdown")
            return
        super().handle_message(message)

    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None) -> None:
        """pygls files the future of every handler it runs under `_request_futures`, but only a request's
        reply removes it: each didChange/didOpen/didClose left one behind, holding its params (about 2 KB
        per keystroke; bench/soak.py showed RSS growing without end). Non-request entries go when done."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        if isinstance(callback, functools.partial) and callback.func == self._send_handler_result:
            return  # a request: its reply (or its cancellation) removes it
        future = self._request_futures.get(msg_id)
        if future is not None:
            if future.done():
                self._request_futures.pop(msg_id, None)
            else:
                future.add_done_callback(lambda _f: self._request_futures.pop(msg_id, None))

    @lsp_method(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: lsp.DidChangeTextDocumentParams) -> Generator[Any, Any, None]:
        """pygls' own workspace copy clamps a character past the line end IN PLACE (its position codec
        assigns Position.character), and the same params then reach our handler, which applied the clamped,
        wrong range: the server's copy drifted from the editor's (found by tests/fuzz). Its copy gets deep
        copies, and its failure never keeps a change from our documents."""
        try:
            for change in params.content_changes:
                self.workspace.update_text_document(params.text_document, copy.deepcopy(change))
        except Exception:  # noqa: BLE001 - pygls' copy is not the one completions read
            log.warning("pygls' workspace copy of %s could not apply a change", params.text_document.uri, exc_info=True)
        if (handler := self.fm.features.get(lsp.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None


class _Writer:
    """Whole frames under a lock (replies come from the event loop, notifications may come from threads);
    once the editor has gone, writes are dropped instead of raising into every handler."""

    def __init__(self, stream: BinaryIO, on_broken: Callable[[], None]):
        self._stream = stream
        self._lock = threading.Lock()
        self._on_broken = on_broken
        self.closed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self.closed = True
                log.warning("the editor's end of the connection is gone (%s): stopping", exc)
                self._on_broken()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            try:
                self._stream.close()
            except (OSError, ValueError):
                pass


def read_frames(stream: BinaryIO, deliver: Callable[[str, Any], None], limit: int) -> None:
    """Blocking: read framed messages until EOF; deliver ("json", value) | ("parse-error", why) |
    ("oversized", length) for each, then ("eof", None)."""
    while True:
        length: int | None = None
        while True:  # headers, up to the blank line that ends them
            line = stream.readline(MAX_HEADER_LINE)
            if not line:
                deliver("eof", None)
                return
            if not line.endswith(b"\n"):  # an over-long line cannot be a header: skip to its end
                while line and not line.endswith(b"\n"):
                    line = stream.readline(MAX_HEADER_LINE)
                continue
            stripped = line.strip()
            if not stripped:
                if length is not None:
                    break
                continue
            name, sep, value = stripped.partition(b":")
            if sep and name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = None
                if length is not None and length < 0:
                    length = None
                if length is None:
                    log.warning("ignored a bad header %r", stripped[:100])
        if length > limit:
            remaining = length
            while remaining:
                chunk = stream.read(min(remaining, _DISCARD_CHUNK))
                if not chunk:
                    break
                remaining -= len(chunk)
            deliver("oversized", length)
            if remaining:
                deliver("eof", None)
                return
            continue
        body = stream.read(length)
        if len(body) < length:
            log.warning("the connection closed inside a message (%d of %d bytes)", len(body), length)
            deliver("eof", None)
            return
        try:
            value = json.loads(body.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError) as exc:
            deliver("parse-error", f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        deliver("json", value)


def dispatch(protocol: InfillProtocol, kind: str, value: Any, limit: int) -> None:
    """Turn one framed message into a handler call or the error response it deserves."""
    if kind == "oversized":
        log.error("dropped a message of %d bytes (limit %d)", value, limit)
        protocol.send_error(None, lsp.ErrorCodes.InvalidRequest,
                            f"infill-ls: message of {value} bytes is over the limit of {limit} bytes "
                            "(INFILL_LS_MAX_MESSAGE_MB)")
        return
    if kind == "parse-error":
        log.error("unparsable message: %s", value)
        protocol.send_error(None, lsp.ErrorCodes.ParseError, f"infill-ls: invalid JSON: {value}")
        return
    is_request = isinstance(value, dict) and "method" in value and "id" in value
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        log.error("not a JSON-RPC 2.0 message: %.200r", value)
        if is_request or not isinstance(value, dict):
            msg_id = value.get("id") if isinstance(value, dict) else None
            protocol.send_error(msg_id, lsp.ErrorCodes.InvalidRequest, "infill-ls: not a JSON-RPC 2.0 message")
        return
    if "method" in value and not isinstance(value["method"], str):
        if "id" in value:
            protocol.send_error(value["id"], lsp.ErrorCodes.InvalidRequest, "infill-ls: method is not a string")
        return
    if is_request and _valid_id(value["id"]) is None:
        protocol.send_error(None, lsp.ErrorCodes.InvalidRequest, "infill-ls: a request id must be a number or string")
        return
    try:
        message = protocol.structure_message(value)
    except Exception as exc:  # noqa: BLE001 - cattrs raises many kinds; all mean "params do not fit"
        if is_request:
            protocol.send_error(value["id"], lsp.ErrorCodes.InvalidParams,
                                f"infill-ls: invalid params for {value['method']}: {exc.__cause__ or exc}")
        else:
            log.error("dropped an invalid %s message: %s", value.get("method", "response"), exc)
        return
    protocol.handle_message(message)


def serve_stdio(server: Any) -> int:
    """Serve LSP over this process's stdin/stdout until EOF or `exit`; returns the exit code."""
    reader, out = _protect_stdio()
    limit = max_message_bytes()
    protocol: InfillProtocol = server.protocol

    async def main() -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def finish(code: int) -> None:
            if not done.done():
                done.set_result(code)

        protocol.set_writer(_Writer(out, lambda: loop.call_soon_threadsafe(finish, 0)))

        def on_loop(kind: str, value: Any) -> None:
            if kind == "eof":
                log.info("the editor closed the connection: exiting")
                finish(0)
            else:
                dispatch(protocol, kind, value, limit)

        def deliver(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(on_loop, kind, value)
            except RuntimeError:  # the loop has closed: we are exiting anyway
                pass

        def read() -> None:
            try:
                read_frames(reader, deliver, limit)
            except Exception:  # noqa: BLE001 - whatever broke the input, the editor is unreachable now
                log.exception("reading from the editor failed")
                deliver("eof", None)

        threading.Thread(target=read, name="lsp-stdin", daemon=True).start()
        return await done

    try:
        return asyncio.run(main())
    except SystemExit as exc:  # the `exit` notification: 0 after shutdown, else 1
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.shutdown()


def _protect_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Private copies of fds 0 and 1 for the protocol; fd 0 becomes /dev/null and fd 1 a copy of stderr."""
    sys.stdout.flush()
    in_fd, out_fd = os.dup(0), os.dup(1)  # not inheritable: child processes never see the protocol
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr at all
        os.dup2(null, 1)
    os.close(null)
    sys.stdout = sys.stderr
    return os.fdopen(in_fd, "rb"), os.fdopen(out_fd, "wb")
