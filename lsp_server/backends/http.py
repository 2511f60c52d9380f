"""HTTP backends: a model served by another process, possibly on a shared GPU box.

* `llama_server`: llama.cpp's `llama-server`: `/infill` (native FIM with `input_extra` chunks from other
  files), `/completion` for prefix-only models, `/v1/chat/completions` for code actions; `cache_prompt`
  and an optional fixed slot (`slot_id`) keep each editor's prompt in one slot's KV cache.
* `openai`: any OpenAI-compatible server (vLLM, TGI, LocalAI, LM Studio, llama-cpp-python's server,
  llama-server's /v1): `/v1/completions` (the rendered FIM prompt; `suffix` with `fim = "native"`) and
  `/v1/chat/completions`.
* `ollama`: `/api/generate` (`suffix`, or `raw` with the rendered prompt) and `/api/chat`.

Only the Python standard library is used (http.client). Every request streams (SSE, or NDJSON for
Ollama) so that a cancelled or superseded request, or a client-side stop (first newline in single-line
mode, a stop string, the time budget), closes the socket at once; the server then drops the request.

Failures raise `RemoteError` (a BackendError) with a message fit for the user and `notify_once = True`:
the engine shows it once and returns empty completions until a request succeeds again; nothing here
needs a restart. A server that is down when the model "loads" is not a load failure (it may come up
later); a server that answers but does not serve the configured model is (ModelError).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from lsp_server import privacy
from lsp_server.backends.base import ChatRequest, Generation, GenerationRequest, OnText, cut_at_deadline
from lsp_server.config import ModelSettings
from lsp_server.errors import BackendError, Cancelled, ModelError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
BACKOFF_S = 0.25  # first retry delay; doubles per retry
DOWN_GRACE_S = 2.0  # after a failed request, the next ones within this time try once (no retries)


class RemoteError(BackendError):
    """The server is unreachable or refused a request. The engine shows it once until the next success."""

    notify_once = True


class Unreachable(RemoteError):
    """Connection-level failure (refused, reset, timeout, TLS, DNS): worth a retry."""


class Rejected(RemoteError):
    def __init__(self, message: str, status: int, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


def _error_text(body: str) -> str:
    """The human part of an error body: OpenAI {"error": {"message"}}, Ollama {"error": str}, FastAPI {"detail"}."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]


class HttpClient:
    """One server: base URL, TLS, API key, timeouts, retries; JSON requests and cancellable streams."""

    def __init__(self, url: str, *, kind: str, api_key: str = "", timeout_s: float = 30, retries: int = 2,
                 verify_tls: bool = True, ca_bundle: str = ""):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelError(f"{kind}: invalid url {url!r} (expected http://host:port or https://host)")
        self.kind = kind
        netloc = parts.netloc.rpartition("@")[2]  # user:password@ is never sent, nor shown in messages and logs
        self.url = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.api_key = api_key
        self.timeout = float(timeout_s) or 30.0
        self.retries = retries
        self.ssl_context: ssl.SSLContext | None = None
        if self.scheme == "https":
            try:
                ctx = ssl.create_default_context(cafile=ca_bundle or None)
            except (OSError, ssl.SSLError) as exc:
                raise ModelError(f"{kind}: cannot read ca_bundle {ca_bundle!r}: {exc}") from exc
            if not verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl_context = ctx
        self._down_until = 0.0

    # -- connections -------------------------------------------------------------------------------------
    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream, application/x-ndjson",
                   "User-Agent": "infill-ls"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _open(self, method: str, path: str, payload: Any, cancel: threading.Event | None,
              timeout: float | None = None, retries: int | None = None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request and return the open response (status < 400), retrying connection errors."""
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        timeout = timeout or self.timeout
        tries = 1 + (self.retries if retries is None else retries)
        if time.monotonic() < self._down_until:
            tries = 1  # it just failed: don't spend every keystroke on backoff
        last: Exception | None = None
        for attempt in range(tries):
            if attempt:
                delay = BACKOFF_S * 2 ** (attempt - 1)
                if cancel is not None and cancel.wait(delay):
                    raise Cancelled("cancelled while waiting to retry")
                if cancel is None:
                    time.sleep(delay)
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled before sending")
            conn = self._connect(timeout)
            try:
                conn.request(method, self.base_path + path, body=body, headers=self._headers(body))
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                last = exc
                continue
            if resp.status < 400:
                self._down_until = 0.0
                return conn, resp
            text = _read_limited(resp)
            conn.close()
            if resp.status == 503 and attempt + 1 < tries:  # llama-server answers 503 while it loads
                last = Rejected(self._http_message(resp.status, resp.reason, text, path), resp.status, text)
                continue
            raise Rejected(self._http_message(resp.status, resp.reason, text, path), resp.status, text)
        self._down_until = time.monotonic() + DOWN_GRACE_S
        if isinstance(last, Rejected):
            raise last
        raise Unreachable(self._unreachable_message(last))

    def _unreachable_message(self, exc: Exception | None) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = f"TLS certificate not trusted ({exc.verify_message}); set ca_bundle, or verify_tls = false"
        elif isinstance(exc, ssl.SSLError):
            why = f"TLS error: {exc}"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused: is the server running?"
        elif isinstance(exc, (socket.timeout, TimeoutError)):
            why = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host {self.host!r}"
        else:
            why = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
        return f"cannot reach the {self.kind} server at {self.url} ({why}); completions are empty until it answers"

    def _http_message(self, status: int, reason: str, body: str, path: str) -> str:
        detail = _error_text(body)
        hint = ""
        if status in (401, 403):
            hint = " (check api_key / api_key_env)"
        elif status == 404:
            hint = f" (is {self.url} a {self.kind} server? does it serve the configured model?)"
        elif status == 503:
            hint = " (the server is busy or still loading the model)"
        return f"the {self.kind} server at {self.url} answered {status} {reason} to {path}: {detail}{hint}"

    # -- JSON and streams --------------------------------------------------------------------------------
    def get_json(self, path: str, *, timeout: float | None = None, retries: int | None = None) -> Any:
        return self.request_json("GET", path, None, timeout=timeout, retries=retries)

    def request_json(self, method: str, path: str, payload: Any, *, timeout: float | None = None,
                     retries: int | None = None, cancel: threading.Event | None = None) -> Any:
        conn, resp = self._open(method, path, payload, cancel, timeout, retries)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self._unreachable_message(exc)) from exc
        finally:
            conn.close()
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RemoteError(f"the {self.kind} server at {self.url} sent malformed JSON for {path}: "
                              f"{raw[:120]!r}") from exc

    def stream(self, path: str, payload: Any, cancel: threading.Event, *, fmt: str = "sse") -> Iterator[dict]:
        """JSON events of a streamed response (SSE `data:` lines or NDJSON lines).

        Closing the generator, or setting `cancel`, closes the socket; a blocked read returns at once."""
        conn, resp = self._open("POST", path, payload, cancel)
        done = threading.Event()

        def watch() -> None:  # wakes a read blocked on a silent server (e.g. during prompt evaluation)
            while not done.is_set():
                if cancel.wait(0.05):
                    _shutdown(conn, close=False)  # the reading thread closes the connection itself
                    return

        watcher = threading.Thread(target=watch, name="infill-http-cancel", daemon=True)
        watcher.start()
        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
                    if cancel.is_set():
                        raise Cancelled("cancelled while streaming") from exc
                    raise Unreachable(self._unreachable_message(exc)) from exc
                if not line:
                    if cancel.is_set():
                        raise Cancelled("cancelled while streaming")
                    return
                line = line.strip()
                if not line or line.startswith(b":"):
                    continue
                if fmt == "sse":
                    if not line.startswith(b"data:"):
                        continue  # event:, id:, retry: fields
                    line = line[5:].strip()
                    if line == b"[DONE]":
                        return
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise RemoteError(f"the {self.kind} server at {self.url} sent malformed JSON in a stream "
                                      f"from {path}: {line[:120]!r}") from exc
                if isinstance(event, dict) and "error" in event:
                    raise RemoteError(f"the {self.kind} server at {self.url} failed during {path}: "
                                      f"{_error_text(json.dumps(event))}")
                if not isinstance(event, dict):
                    raise RemoteError(f"the {self.kind} server at {self.url} sent an unexpected event: {event!r:.120}")
                yield event
        finally:
            done.set()
            _shutdown(conn)


def _read_limited(resp: http.client.HTTPResponse, limit: int = 8192) -> str:
    try:
        return resp.read(limit).decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException):
        return ""


def _shutdown(conn: http.client.HTTPConnection, close: bool = True) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    if close:
        conn.close()


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    return min(found) if found else None


class LocalVocab:
    """Exact token counts from a local GGUF's vocabulary (no weights loaded); a heuristic without one.

    Uses llama.cpp's C API directly: llama_cpp.Llama(verbose=False) silences llama.cpp by pointing file
    descriptors 1 and 2 at /dev/null for a moment, which would swallow the LSP messages that the main
    thread writes to stdout meanwhile."""

    def __init__(self, path: str | None):
        self.model = self.vocab = None
        self._lock = threading.Lock()
        if path:
            try:
                import llama_cpp
                from llama_cpp import _logger

                if not os.environ.get("INFILL_LS_LLAMA_VERBOSE"):
                    _logger.set_verbose(False)  # llama.cpp logs through a Python callback: errors only
                params = llama_cpp.llama_model_default_params()
                params.vocab_only = True
                model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
                if not model:
                    raise OSError("llama.cpp could not read it")
                self.model, self.vocab = model, llama_cpp.llama_model_get_vocab(model)
            except Exception as exc:  # noqa: BLE001 - counts fall back to the heuristic
                log.warning("cannot read the vocabulary of %s (%s): token counts are estimated", path, exc)

    @property
    def exact(self) -> bool:
        return self.vocab is not None

    def tokenize(self, text: str, special: bool) -> int:
        import llama_cpp

        data = text.encode("utf-8")
        n = len(data) + 8
        with self._lock:
            if self.vocab is None:
                raise OSError("vocabulary closed")
            buf = (llama_cpp.llama_token * n)()
            k = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n, False, special)
            if k < 0:
                buf = (llama_cpp.llama_token * -k)()
                k = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, -k, False, special)
        return k

    def count(self, text: str) -> int:
        if self.vocab is None:
            return len(text) // 3 + 1  # code averages ~3-4 characters per token; err on the large side
        return self.tokenize(text, special=False)

    def single(self, text: str) -> bool | None:
        if self.vocab is None:
            return None
        return self.tokenize(text, special=True) == 1

    def close(self) -> None:
        with self._lock:
            if self.model is not None:
                import llama_cpp

                llama_cpp.llama_model_free(self.model)
                self.model = self.vocab = None


class RemoteBackend:
    """What the three HTTP backends share: settings, probing, the streaming generation loop, stats."""

    name = "remote"
    kind = "HTTP"
    stream_format = "sse"

    def __init__(self, settings: ModelSettings, vocab_path: str | None = None):
        self.settings = settings
        self.vocab_path = vocab_path
        self.vocab: LocalVocab | None = None
        self.client: HttpClient | None = None
        self.remote_model = settings.remote_model
        self.verified = False
        self.server_info: dict[str, Any] = {}
        self.calls = 0
        self.redactions = 0  # secrets replaced by [REDACTED] in what was sent (lsp_server/privacy.py)
        self._single_cache: dict[str, bool] = {}
        self._count_cache: dict[str, int] = {}

    @property
    def model_path(self) -> str:  # identifies the model in cache keys and status
        url = self.client.url if self.client else self.settings.url
        return f"{url} [{self.remote_model or 'server default'}]"

    # -- lifecycle -----------------------------------------------------------------------------------------
    def _api_key(self) -> str:
        s = self.settings
        if s.api_key_env:
            key = os.environ.get(s.api_key_env, "")
            if not key:
                log.warning("api_key_env %s is not set in the environment", s.api_key_env)
            return key or s.api_key
        return s.api_key

    def _make_client(self, url: str) -> HttpClient:
        s = self.settings
        return HttpClient(url, kind=self.kind, api_key=self._api_key(), timeout_s=s.timeout_s, retries=s.retries,
                          verify_tls=s.verify_tls, ca_bundle=s.ca_bundle)

    def load(self) -> None:
        if not self.settings.url:
            raise ModelError(f"{self.name} backend: set `url` to the server's address (e.g. http://127.0.0.1:8080)")
        self.client = self._make_client(self.settings.url)
        self._load_vocab()
        try:
            self.verify()
        except (Unreachable, Rejected) as exc:
            if isinstance(exc, Rejected) and exc.status not in (502, 503, 504):
                raise  # it answers but refuses us (key, path, model): a configuration problem
            # Not fatal: the server may come up (or finish loading) later. The first completion reports it.
            log.warning("%s", exc)

    def _load_vocab(self) -> None:
        self.vocab = LocalVocab(self.vocab_path)

    def verify(self) -> None:
        """Probe the server and check the model name; ModelError when it answers but can't serve us."""
        self.verified = True

    def _require(self) -> HttpClient:
        if self.client is None:
            raise ModelError(f"the {self.name} backend is not loaded")
        if not self.verified:
            try:
                self.verify()  # the server was down at load: check the model now that it may be up
            except ModelError as exc:
                raise RemoteError(str(exc)) from exc
        return self.client

    def close(self) -> None:
        if self.vocab is not None:
            self.vocab.close()

    # -- tokens ----------------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        n = self._count_cache.get(text)
        if n is None:
            if len(self._count_cache) > 65536:
                self._count_cache.clear()
            n = self._count_cache[text] = (self.vocab or LocalVocab(None)).count(text)
        return n

    def is_single_token(self, text: str) -> bool:
        if text not in self._single_cache:
            local = self.vocab.single(text) if self.vocab else None
            if local is None:
                try:
                    local = self.remote_single_token(text)
                except Exception as exc:  # noqa: BLE001 - detection falls back to prefix-only
                    log.info("cannot ask the server whether %r is one token: %s", text, exc)
                    local = False
            self._single_cache[text] = local
        return self._single_cache[text]

    def remote_single_token(self, text: str) -> bool:
        return False

    # -- generation --------------------------------------------------------------------------------------------
    def completion_call(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def completion_delta(self, event: dict) -> tuple[str, str | None]:
        """(new text, finish reason or None) of one streamed event."""
        raise NotImplementedError

    def chat_call(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def chat_delta(self, event: dict) -> tuple[str, str | None]:
        raise NotImplementedError

    def event_stats(self, event: dict, stats: dict[str, Any]) -> None:
        """Pick prompt/generation counts and timings out of an event (usually the last)."""

    def _private(self, request):
        """The request as it may leave the machine: secrets redacted (privacy.redact_secrets, default on)."""
        request, n = privacy.redact_request(request)
        if n:
            self.redactions += n
            log.info("%d secret(s) redacted from the prompt to %s", n, self.name)  # counts only, never text
        return request

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        client = self._require()
        path, payload = self.completion_call(self._private(request))
        return self._run(client, path, payload, self.completion_delta, request, cancel, None)

    def chat(self, request: ChatRequest, cancel: threading.Event, on_text: OnText | None = None) -> Generation:
        client = self._require()
        path, payload = self.chat_call(self._private(request))
        gen = GenerationRequest(prompt="", max_tokens=request.max_tokens, stop=tuple(request.stop))
        return self._run(client, path, payload, self.chat_delta, gen, cancel, on_text)

    def _run(self, client: HttpClient, path: str, payload: dict, delta: Callable[[dict], tuple[str, str | None]],
             request: GenerationRequest, cancel: threading.Event, on_text: OnText | None) -> Generation:
        self.calls += 1
        t0 = time.monotonic()
        t_first: float | None = None
        text = ""
        reason = "length"
        stats: dict[str, Any] = {}
        stops = [s for s in request.stop if s]
        chunks = 0
        events = client.stream(path, payload, cancel, fmt=self.stream_format)
        try:
            for event in events:
                self.event_stats(event, stats)
                piece, finish = delta(event)
                if piece:
                    if t_first is None:
                        t_first = time.monotonic()
                    chunks += 1
                    text += piece
                    hit = _first_stop(text, stops)
                    if hit is not None:
                        text, reason = text[:hit], "stop"
                        break
                    if on_text is not None:
                        on_text(text)
                    if request.stop_at_newline and "\n" in text.lstrip("\n"):
                        reason = "newline"
                        break
                    cut = cut_at_deadline(request, text)
                    if cut is not None:
                        text, reason = cut, "deadline"
                        break
                    if request.stop_check is not None and text.endswith("\n") and request.stop_check(text):
                        reason = "block"
                        break
                if finish:
                    reason = finish
                    break
            else:
                if cancel.is_set():
                    raise Cancelled("cancelled")
        finally:
            events.close()  # closes the socket: the server stops generating for us
        t2 = time.monotonic()
        if cancel.is_set() and reason not in ("stop", "newline", "deadline", "block"):
            raise Cancelled("cancelled during generation")
        t1 = t_first or t2
        return Generation(
            text=text,
            finish_reason=reason,
            prompt_tokens=int(stats.get("prompt_tokens", 0)),
            evaluated_tokens=int(stats.get("evaluated_tokens", stats.get("prompt_tokens", 0))),
            generated_tokens=int(stats.get("generated_tokens", chunks)),
            prompt_ms=float(stats.get("prompt_ms", (t1 - t0) * 1000)),
            generate_ms=float(stats.get("generate_ms", (t2 - t1) * 1000)),
            extra={"backend": self.name, "wall_ms": round((t2 - t0) * 1000, 1)},
        )

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        return 0  # the server caches prompts itself

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "url": self.client.url if self.client else self.settings.url,
            "remote_model": self.remote_model or None,
            "verified": self.verified,
            "server": self.server_info,
            "calls": self.calls,
            "redactions": self.redactions,
            "exact_token_counts": bool(self.vocab and self.vocab.exact),
        }

    def _server_stops(self, stops, limit: int | None = None) -> list[str]:
        stops = [s for s in stops if s]
        if limit is not None:
            # plain-text stops first: special tokens end generation server-side anyway (end-of-generation)
            stops = sorted(stops, key=lambda s: s.startswith("<") and s.endswith(">"))[:limit]
        return stops


# ------------------------------------------------------------------------------------------------------------
class LlamaServerBackend(RemoteBackend):
    name = "llama_server"
    kind = "llama-server"

    def __init__(self, settings: ModelSettings, vocab_path: str | None = None, managed_model: str | None = None):
        super().__init__(settings, vocab_path)
        self.managed = None
        self.managed_model = managed_model
        self.infill_supported = settings.fim != "prompt"

    def load(self) -> None:
        if self.settings.server_binary and not self.settings.url:
            from lsp_server.backends.managed import ManagedLlamaServer

            if not self.managed_model:
                raise ModelError("managed llama-server: set `model` to a catalog model or a .gguf file")
            self.managed = ManagedLlamaServer(self.settings.server_binary, self.managed_model,
                                              n_ctx=self.settings.n_ctx, n_gpu_layers=self.settings.n_gpu_layers,
                                              n_threads=self.settings.n_threads, extra_args=self.settings.server_args,
                                              api_key=self._api_key())
            url = self.managed.start()
            self.client = self._make_client(url)
            self._load_vocab()
            self.verify()
            return
        super().load()

    def _api_key(self) -> str:
        if self.managed is not None:
            return self.managed.api_key  # the key it was started with (generated when none is configured)
        return super()._api_key()

    def _require(self) -> HttpClient:
        if self.managed is not None:
            url = self.managed.ensure_running()  # restarts a crashed server (with backoff)
            if self.client is None or self.client.url != url:
                self.client = self._make_client(url)
        return super()._require()

    def verify(self) -> None:
        client = self.client
        assert client is not None
        health = client.get_json("/health", timeout=PROBE_TIMEOUT_S, retries=0)
        try:
            props = client.get_json("/props", timeout=PROBE_TIMEOUT_S, retries=0)
        except Rejected:
            props = {}
        served = str(props.get("model_alias") or props.get("model_path") or "")
        self.server_info = {"health": health.get("status") if isinstance(health, dict) else health,
                            "model": served, "total_slots": props.get("total_slots"),
                            "n_ctx": (props.get("default_generation_settings") or {}).get("n_ctx")}
        if self.remote_model and served and self.remote_model not in (served, os.path.basename(served)):
            raise ModelError(f"the llama-server at {client.url} serves {served!r}, not remote_model "
                             f"{self.remote_model!r}")
        self.verified = True

    def remote_single_token(self, text: str) -> bool:
        data = self._require().request_json("POST", "/tokenize", {"content": text, "add_special": False,
                                                                   "parse_special": True},
                                            timeout=PROBE_TIMEOUT_S, retries=0)
        return len(data.get("tokens", [])) == 1

    def _common(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "n_predict": request.max_tokens,
            "stop": self._server_stops(request.stop),
            "stream": True,
            "cache_prompt": True,
            "temperature": 0.0,
            "top_k": 1,
            "samplers": ["top_k", "temperature"],
        }
        if self.settings.slot_id >= 0:
            body["id_slot"] = self.settings.slot_id
        if request.deadline is not None:
            # llama-server's own time budget: stops at the next newline after this many ms of generation
            body["t_max_predict_ms"] = max(1, int((request.deadline - time.monotonic()) * 1000))
        return body

    def completion_call(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body = self._common(request)
        if request.prefix is not None and self.infill_supported:
            body.update(input_prefix=request.prefix, input_suffix=request.suffix or "",
                        input_extra=[{"filename": getattr(f, "path", ""), "text": getattr(f, "text", str(f))}
                                     for f in request.extra])
            return "/infill", body
        body["prompt"] = request.prompt
        return "/completion", body

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        try:
            return super().generate(request, cancel)
        except Rejected as exc:
            if "Infill is not supported" in exc.body and self.infill_supported:
                log.warning("llama-server: the model has no FIM tokens: using /completion with the prompt")
                self.infill_supported = False
                return super().generate(request, cancel)
            raise

    def completion_delta(self, event: dict) -> tuple[str, str | None]:
        content = event.get("content", "")
        if not isinstance(content, str):
            raise RemoteError(f"llama-server sent an event without text content: {event!r:.120}")
        finish = None
        if event.get("stop"):
            stop_type = event.get("stop_type", "")
            finish = {"limit": "length", "eos": "stop", "word": "stop"}.get(stop_type, "stop")
        return content, finish

    def event_stats(self, event: dict, stats: dict[str, Any]) -> None:
        timings = event.get("timings")
        if isinstance(timings, dict):
            stats["evaluated_tokens"] = timings.get("prompt_n", 0)
            stats["prompt_ms"] = timings.get("prompt_ms", 0.0)
            stats["generated_tokens"] = timings.get("predicted_n", 0)
            stats["generate_ms"] = timings.get("predicted_ms", 0.0)
            if "cache_n" in timings:
                stats["prompt_tokens"] = timings.get("cache_n", 0) + timings.get("prompt_n", 0)
        if "tokens_evaluated" in event:
            stats["prompt_tokens"] = event["tokens_evaluated"]

    def chat_call(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"messages": list(request.messages), "max_tokens": request.max_tokens,
                                "temperature": 0.0, "stream": True, "cache_prompt": True}
        if request.stop:
            body["stop"] = list(request.stop)
        if self.remote_model:
            body["model"] = self.remote_model
        return "/v1/chat/completions", body

    chat_delta = staticmethod(lambda event: _openai_chat_delta(event))

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        prompt = self._private(GenerationRequest(prompt=prompt, max_tokens=0)).prompt
        body = {"prompt": prompt, "n_predict": 0, "cache_prompt": True, "stream": True}
        if self.settings.slot_id >= 0:
            body["id_slot"] = self.settings.slot_id
        gen = self._run(self._require(), "/completion", body, self.completion_delta,
                        GenerationRequest(prompt=prompt, max_tokens=0), cancel, None)
        return gen.evaluated_tokens

    def close(self) -> None:
        super().close()
        if self.managed is not None:
            self.managed.stop()
            self.managed = None

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["slot_id"] = self.settings.slot_id
        info["native_infill"] = self.infill_supported
        if self.managed is not None:
            info["managed"] = self.managed.info()
        return info


def _openai_chat_delta(event: dict) -> tuple[str, str | None]:
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise RemoteError(f"unexpected chat event (no choices): {event!r:.120}")
    if not choices:
        return "", None  # e.g. a final usage-only chunk
    choice = choices[0]
    delta = choice.get("delta") or choice.get("message") or {}
    return delta.get("content") or "", _finish(choice.get("finish_reason"))


def _finish(reason: Any) -> str | None:
    if not reason:
        return None
    return "length" if reason == "length" else "stop"


# ------------------------------------------------------------------------------------------------------------
class OpenAIBackend(RemoteBackend):
    name = "openai"
    kind = "OpenAI-compatible"

    def verify(self) -> None:
        client = self.client
        assert client is not None
        data = client.get_json("/v1/models", timeout=PROBE_TIMEOUT_S, retries=0)
        try:
            ids = [m["id"] for m in data["data"]]
        except (KeyError, TypeError) as exc:
            raise RemoteError(f"the server at {client.url} sent an unexpected /v1/models answer: "
                              f"{json.dumps(data)[:120]}") from exc
        self.server_info = {"models": ids[:20]}
        if self.remote_model:
            if ids and self.remote_model not in ids:
                raise ModelError(f"the server at {client.url} does not serve model {self.remote_model!r}; "
                                 f"it serves: {', '.join(ids[:10])}")
        elif ids:
            self.remote_model = ids[0]
            if len(ids) > 1:
                log.warning("%s serves several models; using %s (set remote_model to choose)", client.url, ids[0])
        self.verified = True

    def remote_single_token(self, text: str) -> bool:
        client = self._require()
        try:  # llama-cpp-python's server
            data = client.request_json("POST", "/extras/tokenize", {"input": text, "model": self.remote_model},
                                       timeout=PROBE_TIMEOUT_S, retries=0)
            return len(data.get("tokens", [])) == 1
        except Rejected:
            pass  # vLLM / llama-server: /tokenize
        data = client.request_json("POST", "/tokenize", {"model": self.remote_model, "prompt": text,
                                                          "content": text, "add_special_tokens": False,
                                                          "add_special": False, "parse_special": True},
                                   timeout=PROBE_TIMEOUT_S, retries=0)
        return len(data.get("tokens", [])) == 1

    def completion_call(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.remote_model, "max_tokens": request.max_tokens, "temperature": 0.0,
                                "stream": True}
        stops = self._server_stops(request.stop, limit=4)  # OpenAI and TGI accept at most 4
        if stops:
            body["stop"] = stops
        if self.settings.fim == "native" and request.prefix is not None:
            body["prompt"], body["suffix"] = request.prefix, request.suffix or ""
        else:
            body["prompt"] = request.prompt
        return "/v1/completions", body

    def completion_delta(self, event: dict) -> tuple[str, str | None]:
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise RemoteError(f"unexpected completion event (no choices): {event!r:.120}")
        if not choices:
            return "", None
        return choices[0].get("text") or "", _finish(choices[0].get("finish_reason"))

    def event_stats(self, event: dict, stats: dict[str, Any]) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict):
            stats["prompt_tokens"] = usage.get("prompt_tokens", 0)
            stats["generated_tokens"] = usage.get("completion_tokens", 0)
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cached is not None:
                stats["evaluated_tokens"] = stats["prompt_tokens"] - cached
        timings = event.get("timings")  # llama-server's /v1 adds its own timings
        if isinstance(timings, dict):
            stats["prompt_ms"] = timings.get("prompt_ms", 0.0)
            stats["generate_ms"] = timings.get("predicted_ms", 0.0)
            stats["evaluated_tokens"] = timings.get("prompt_n", 0)

    def chat_call(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.remote_model, "messages": list(request.messages),
                                "max_tokens": request.max_tokens, "temperature": 0.0, "stream": True}
        stops = self._server_stops(request.stop, limit=4)
        if stops:
            body["stop"] = stops
        return "/v1/chat/completions", body

    chat_delta = staticmethod(lambda event: _openai_chat_delta(event))


# ------------------------------------------------------------------------------------------------------------
class OllamaBackend(RemoteBackend):
    """Ollama's native API. NOTE: written to Ollama's documented API, not tested against a real Ollama."""

    name = "ollama"
    kind = "Ollama"
    stream_format = "ndjson"

    def verify(self) -> None:
        client = self.client
        assert client is not None
        data = client.get_json("/api/tags", timeout=PROBE_TIMEOUT_S, retries=0)
        try:
            names = [m.get("name") or m.get("model") for m in data["models"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise RemoteError(f"the server at {client.url} sent an unexpected /api/tags answer (is it Ollama?): "
                              f"{json.dumps(data)[:120]}") from exc
        self.server_info = {"models": names[:20]}
        if not self.remote_model:
            raise ModelError(f"ollama backend: set remote_model to one of the models at {client.url}: "
                             f"{', '.join(names[:10]) or '(none pulled)'}")
        wanted = self.remote_model if ":" in self.remote_model else self.remote_model + ":latest"
        if wanted not in names and self.remote_model not in names:
            raise ModelError(f"Ollama at {client.url} has no model {self.remote_model!r} "
                             f"(`ollama pull {self.remote_model}`); it has: {', '.join(names[:10]) or 'none'}")
        self.verified = True

    def _options(self, max_tokens: int, stop) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": max_tokens, "temperature": 0.0, "top_k": 1}
        stops = self._server_stops(stop)
        if stops:
            options["stop"] = stops
        return options

    def completion_call(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.remote_model, "stream": True,
                                "options": self._options(request.max_tokens, request.stop)}
        if self.settings.fim != "prompt" and request.prefix is not None:
            body["prompt"], body["suffix"] = request.prefix, request.suffix or ""  # the model's template does FIM
        else:
            body["prompt"], body["raw"] = request.prompt, True  # our rendered FIM template, no chat template
        return "/api/generate", body

    def completion_delta(self, event: dict) -> tuple[str, str | None]:
        piece = event.get("response", "")
        if not isinstance(piece, str):
            raise RemoteError(f"unexpected Ollama event: {event!r:.120}")
        return piece, (_finish(event.get("done_reason") or "stop") if event.get("done") else None)

    def event_stats(self, event: dict, stats: dict[str, Any]) -> None:
        if event.get("done"):
            stats["prompt_tokens"] = event.get("prompt_eval_count", 0)
            stats["generated_tokens"] = event.get("eval_count", 0)
            stats["prompt_ms"] = event.get("prompt_eval_duration", 0) / 1e6
            stats["generate_ms"] = event.get("eval_duration", 0) / 1e6

    def chat_call(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        return "/api/chat", {"model": self.remote_model, "messages": list(request.messages), "stream": True,
                             "options": self._options(request.max_tokens, request.stop)}

    def chat_delta(self, event: dict) -> tuple[str, str | None]:
        message = event.get("message") or {}
        return message.get("content") or "", (_finish(event.get("done_reason") or "stop") if event.get("done") else None)


def create_http_backend(settings: ModelSettings):
    """(backend, catalog entry or None). `model` names a local catalog model or GGUF used only for exact token
    counts and the FIM template (and, in managed mode, the model llama-server loads); it may be absent."""
    from lsp_server.catalog import resolve_model_file

    path = entry = None
    try:
        path, entry = resolve_model_file(settings.model or "default")
    except (ModelError, KeyError, OSError):
        pass
    local = str(path) if path is not None and path.exists() else None
    if settings.backend == "llama_server":
        return LlamaServerBackend(settings, local, managed_model=str(path) if path is not None else None), entry
    if settings.backend == "openai":
        return OpenAIBackend(settings, local), entry
    if settings.backend == "ollama":
        return OllamaBackend(settings, local), entry
    raise ModelError(f"unknown backend {settings.backend!r}")
