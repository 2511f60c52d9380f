"""The completion engine: snapshot -> mode -> context -> prompt -> cache -> backend -> post-processing.

One model worker thread runs every model call in order. Per document, a newer request supersedes the
older one: the older request's cancel event is set and the backend stops within one token (or one
prompt chunk). Identical prompts in flight are computed once. A result for a document version that has
moved on is never returned. Type-through: when the user types the first characters of the suggestion
being shown, the rest of it is returned without calling the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lsp_server.backends import Backend, GenerationRequest, create_backend
from lsp_server.cache import CompletionCache, cache_key
from lsp_server.catalog import CatalogModel
from lsp_server.config import Settings, cache_home
from lsp_server.context import (Budgets, FimContext, Mode, build_context, decide_mode, mode_limits, offset_to_position,
                                position_to_offset)
from lsp_server.context.extra import local_imports, select_chunks
from lsp_server.documents import Snapshot
from lsp_server.errors import Cancelled, InfillError, ModelError
from lsp_server.postprocess import block_finished, postprocess
from lsp_server.prompts import ExtraFile, FimTemplate, detect_template, get_template, render

log = logging.getLogger(__name__)

MAX_EXTRA_FILES = 8  # imported files read per request window
ASSUMED_PROMPT_RATE = 200.0  # tokens/s for the cold-file check until the backend has measured its own
MAX_EXTRA_FILE_BYTES = 512 * 1024


@dataclass
class Suggestion:
    """What a completion request produced, plus where it came from (for stats and the status request)."""

    text: str
    source: str = "model"  # model | cache | type-through | dedup | skip | empty | stale | error
    mode: str = ""
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Shown:
    """The last suggestion per document, for type-through."""

    before: str  # document text before the cursor when it was computed
    after: str  # document text after the cursor
    text: str


class _Flight:
    def __init__(self, future: asyncio.Future, cancel: threading.Event):
        self.future = future
        self.cancel = cancel
        self.waiters = 0


class ModelState:
    IDLE, LOADING, READY, ERROR = "idle", "loading", "ready", "error"


class Engine:
    def __init__(self, settings: Settings, notify: Callable[[str, str], None] | None = None):
        self.settings = settings
        self.notify = notify or (lambda level, msg: None)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infill-model")
        self.backend: Backend | None = None
        self.catalog_entry: CatalogModel | None = None
        self.template: FimTemplate | None = None
        self.model_id = ""
        self.state = ModelState.IDLE
        self.error = ""
        self._load_task: asyncio.Future | None = None
        self._other_backends: dict[str, asyncio.Future] = {}
        self._flights: dict[str, _Flight] = {}
        self._current: dict[str, _Flight] = {}  # uri -> the flight serving its latest request
        self._shown: dict[str, _Shown] = {}
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.cache = self._make_cache(settings)
        self.on_state: Callable[[str, str], None] = lambda state, detail: None
        # Other-file context: the server sets these (open documents, workspace root).
        self.open_documents: Callable[[str], list[tuple[str, str, str | None]]] = lambda uri: []
        self.workspace_root: str | None = None
        self._extra: dict[str, tuple[Any, list[ExtraFile]]] = {}  # uri -> (selection key, chosen chunks)
        self._disk_files: dict[str, tuple[float, int, str]] = {}  # path -> (mtime, size, text)
        self._prefetches: set[asyncio.Task] = set()
        self._warm_timers: dict[str, asyncio.TimerHandle] = {}
        # per document: its current snapshot and the cursor after the last change
        self._latest: dict[str, tuple[Callable[[], Snapshot | None], int]] = {}
        # the cancel events of the warm-ups started and not finished (at most one at a time): a request sets them
        self._warm_events: set[threading.Event] = set()
        self.warmups = 0
        self.last_warmup: dict[str, Any] = {}
        self._anchors: dict[str, tuple[int, str, int, bytes, str, bytes]] = {}  # uri -> _prefill_head's state

    # -- configuration and model lifecycle ---------------------------------------------------------------
    @staticmethod
    def _make_cache(settings: Settings) -> CompletionCache:
        disk_dir = None
        if settings.cache.disk:
            disk_dir = Path(settings.cache.dir) if settings.cache.dir else cache_home() / "completions"
        return CompletionCache(memory_entries=settings.cache.memory_entries, disk_dir=disk_dir,
                               size_mb=settings.cache.size_mb)

    def reconfigure(self, settings: Settings) -> None:
        """New settings; the model is reloaded (lazily) only when its own settings changed."""
        old = self.settings.model_settings()
        self.settings = settings
        if settings.cache != getattr(self, "_cache_settings", None):
            self.cache.close()
            self.cache = self._make_cache(settings)
        self._cache_settings = settings.cache
        self._watch_cache()
        if settings.model_settings() != old or self.state == ModelState.ERROR:
            if not self._swap_adapters(old, settings.model_settings()):
                self._unload()

    def _watch_cache(self) -> None:
        """A disk cache that cannot be used (unwritable, full, corrupt) is said once per cache; completions
        go on with the memory cache."""
        cache = self.cache

        def failed(error: str) -> None:
            if not getattr(cache, "_told", False):
                cache._told = True
                self.notify("warning", f"infill-ls: disk cache off, using memory only: {error}")

        cache.on_disk_error = failed
        if cache.disk_error:
            failed(cache.disk_error)

    def _swap_adapters(self, old: tuple[str, Any], new: tuple[str, Any]) -> bool:
        """When only a model's LoRA adapters changed, swap them on the loaded model instead of reloading it.

        The swap runs on the model worker, after the generations already queued; requests made meanwhile
        wait for it (ensure_loaded), so no cache entry is ever stored under the wrong adapter set.
        """
        backend = self.backend
        if (backend is None or self.state != ModelState.READY or not hasattr(backend, "set_adapters")
                or old[0] != new[0] or dataclasses.replace(old[1], adapters=()) != dataclasses.replace(new[1], adapters=())):
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._adapter_task = loop.run_in_executor(self.worker, backend.set_adapters, new[1].adapters)
        return True

    async def _adapters_swapped(self) -> None:
        task = self._adapter_task
        try:
            statuses = await asyncio.shield(task)
        except Exception as exc:  # noqa: BLE001 - the base model (or the previous set) keeps serving
            log.warning("LoRA adapter swap failed: %s", exc)
            statuses = getattr(self.backend, "adapter_statuses", [])
        if task is self._adapter_task:
            self._adapter_task = None
            self.model_id = _with_adapters(self.model_id, statuses)
            self._report_adapters(statuses)

    def _report_adapters(self, statuses: list[Any] | None) -> None:
        """One message per adapter that could not be applied; the model serves without it."""
        _name, ms = self.settings.model_settings()
        if statuses is None and ms.adapters:
            self.notify("warning", f"infill-ls: backend {ms.backend!r} does not apply LoRA adapters; "
                                   f"{len(ms.adapters)} configured adapter(s) ignored")
        for st in statuses or []:
            if st.status != "loaded":
                self.notify("error", f"infill-ls: LoRA adapter not applied, the model serves without it: {st.error}")
            else:
                log.info("LoRA adapter %s applied (scale %s)", st.path, st.scale)

    def _unload(self) -> None:
        backend, self.backend = self.backend, None
        self._load_task = None
        self._adapter_task = None  # a pending swap belongs to the old backend
        self.state, self.error = ModelState.IDLE, ""
        if backend is not None:
            self.worker.submit(backend.close)

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self.on_state(state, detail)

    def _load_blocking(self) -> tuple[Backend, CatalogModel | None, FimTemplate, str]:
        name, ms = self.settings.model_settings()
        backend, entry = create_backend(ms)
        backend.load()
        if ms.template:
            template = get_template(ms.template)
        elif entry is not None:
            template = get_template(entry.template)
        else:
            template = detect_template(backend.is_single_token)
        model_id = f"{name}|{ms.model}|{getattr(backend, 'model_path', '')}|{ms.backend}"
        model_id = _with_adapters(model_id, getattr(backend, "adapter_statuses", []))
        return backend, entry, template, model_id

    async def ensure_loaded(self) -> Backend:
        if getattr(self, "_adapter_task", None) is not None:
            await self._adapters_swapped()
        if self.backend is not None and self.state == ModelState.READY:
            return self.backend
        if self.state == ModelState.ERROR:
            raise ModelError(self.error)
        if self._load_task is None:
            self._set_state(ModelState.LOADING)
            loop = asyncio.get_running_loop()
            self._load_task = loop.run_in_executor(self.worker, self._load_blocking)
        task = self._load_task
        try:
            backend, entry, template, model_id = await asyncio.shield(task)
        except InfillError as exc:
            if task is not self._load_task:
                return await self.ensure_loaded()  # superseded by a configuration change: use the new one
            if task is self._load_task:
                self.error = str(exc)
                self._set_state(ModelState.ERROR, self.error)
                self.notify("error", f"infill-ls: completions disabled: {exc}")
            raise ModelError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - an unexpected load failure must not kill the server
            if task is self._load_task:
                self.error = f"{type(exc).__name__}: {exc}"
                self._set_state(ModelState.ERROR, self.error)
                self.notify("error", f"infill-ls: model failed to load: {self.error}")
            raise ModelError(self.error) from exc
        if task is not self._load_task:
            # The settings changed while this model loaded (reconfigure dropped its task): free it and serve
            # the current settings; returning self.backend here handed callers None. close() is idempotent.
            self.worker.submit(backend.close)
            return await self.ensure_loaded()
        if self.backend is None:
            self.backend, self.catalog_entry, self.template, self.model_id = backend, entry, template, model_id
            self._report_adapters(getattr(backend, "adapter_statuses", None))
            self._set_state(ModelState.READY, getattr(backend, "model_path", backend.name).__str__())
        return self.backend

    async def backend_for(self, name: str | None) -> Backend:
        """The backend of a named model (code actions may use another model than completion)."""
        if not name or name == self.settings.model:
            return await self.ensure_loaded()
        key = repr(self.settings.model_settings(name))
        if key not in self._other_backends:
            loop = asyncio.get_running_loop()

            def load() -> Backend:
                backend, _entry = create_backend(self.settings.model_settings(name)[1])
                backend.load()
                return backend

            self._other_backends[key] = loop.run_in_executor(self.worker, load)
        try:
            return await asyncio.shield(self._other_backends[key])
        except Exception:
            self._other_backends.pop(key, None)  # let a later request retry after the user fixes it
            raise

    async def run_on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking model work on the one model worker, in order with completions."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    # -- completion ------------------------------------------------------------------------------------------
    def language_enabled(self, language_id: str) -> bool:
        c = self.settings.completion
        if not c.enable:
            return False
        return c.languages.get(language_id, c.languages.get("*", True))

    def _type_through(self, snap: Snapshot, offset: int) -> str | None:
        shown = self._shown.get(snap.uri)
        if shown is None or not self.settings.completion.type_through:
            return None
        text = snap.text
        if not text.endswith(shown.after) or len(text) - len(shown.after) != offset:
            return None
        if not text.startswith(shown.before):
            return None
        typed = text[len(shown.before) : offset]
        if typed and shown.text.startswith(typed) and len(typed) < len(shown.text):
            return shown.text[len(typed) :]
        return None

    def _budgets(self) -> Budgets:
        c = self.settings.completion
        return Budgets(prefix_tokens=c.prefix_tokens, suffix_tokens=c.suffix_tokens, extra_tokens=c.extra_tokens,
                       window_step_lines=c.window_step_lines)

    # -- other-file context ------------------------------------------------------------------------------
    def _read_disk_file(self, path: str) -> str | None:
        try:
            st = os.stat(path)
            if st.st_size > MAX_EXTRA_FILE_BYTES:
                return None
            known = self._disk_files.get(path)
            if known and known[0] == st.st_mtime and known[1] == st.st_size:
                return known[2]
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        self._disk_files[path] = (st.st_mtime, st.st_size, text)
        if len(self._disk_files) > 256:
            self._disk_files.pop(next(iter(self._disk_files)))
        return text

    def _extra_files(self, snap: Snapshot, offset: int, prefix_start: int, count: Callable[[str], int]) -> list[ExtraFile]:
        """Chunks of related files (imported workspace files, other open documents of the same language).

        The choice is kept while the prefix window start stays where it is, so that the start of the
        prompt, and with it the model's KV cache, does not change while the user types."""
        budget = self.settings.completion.extra_tokens
        if not self.settings.completion.extra_files or budget <= 0:
            return []
        # Only files of the same project: open documents inside the workspace root (none without a root).
        home = os.path.join(self.workspace_root, "") if self.workspace_root else None
        open_docs = [(p, t) for p, t, g in self.open_documents(snap.uri)
                     if home and g == snap.grammar and t and p.startswith(home)]
        signature = (prefix_start, budget, tuple((p, len(t), hash(t)) for p, t in open_docs))
        known = self._extra.get(snap.uri)
        if known is not None and known[0] == signature:
            return known[1]
        files: dict[str, str] = {}
        try:
            for path in local_imports(snap.text, snap.path, snap.grammar, self.workspace_root)[:MAX_EXTRA_FILES]:
                text = self._read_disk_file(path)
                if text:
                    files[path] = text
        except Exception as exc:  # noqa: BLE001 - other-file context is best effort
            log.debug("local imports failed: %s", exc)
        for path, text in open_docs:
            files[path] = text  # the editor's buffer beats the file on disk
        allowed = [(p, t) for p, t in files.items() if self._context_allowed(p)]
        line_start = snap.text.rfind("\n", 0, offset) + 1
        query = snap.text[prefix_start:line_start][-4000:] or snap.text[max(0, offset - 2000):offset]
        chunks = select_chunks(query, allowed, count, budget)
        extra = [ExtraFile(path=self._display_path(c.path), text=c.text) for c in chunks]
        self._extra[snap.uri] = (signature, extra)
        return extra

    def _context_allowed(self, path: str) -> bool:
        """Whether a file may enter the prompt (privacy settings and .gitignore, see lsp_server/privacy.py)."""
        from lsp_server.privacy import allowed_context_file

        return allowed_context_file(path, self.settings, self.workspace_root)

    def _display_path(self, path: str) -> str:
        root = self.workspace_root
        if root and path.startswith(os.path.join(root, "")):
            return os.path.relpath(path, root)
        return os.path.basename(path)

    # -- prefetch --------------------------------------------------------------------------------------------
    def document_changed(self, snap: Snapshot, current_version: Callable[[], int | None],
                         cursor: int | None = None, latest: Callable[[], Snapshot | None] | None = None) -> None:
        """Called after each didChange: when the user has just accepted the suggestion shown for this
        document (whole, or by typing the last of it), the next one is computed before it is asked for.
        Otherwise, once the user pauses, the stable start of the next prompt is evaluated (idle warm-up)."""
        if cursor is not None and latest is not None:
            self._schedule_warmup(snap.uri, cursor, latest)
        shown = self._shown.get(snap.uri)
        if shown is None or not self.settings.completion.prefetch or self.state != ModelState.READY:
            return
        if snap.text != shown.before + shown.text + shown.after:
            return
        from lsp_server.privacy import completion_allowed

        if completion_allowed(snap.path, self.settings, self.workspace_root):
            return  # the file is excluded from completion (privacy settings)
        self._shown.pop(snap.uri, None)
        line, character = offset_to_position(snap.text, len(shown.before) + len(shown.text))
        task = asyncio.get_running_loop().create_task(
            self.complete(snap, line, character, current_version, prefetch=True))
        self._prefetches.add(task)
        task.add_done_callback(self._prefetches.discard)

    # -- idle warm-up -----------------------------------------------------------------------------------------
    def _schedule_warmup(self, uri: str, cursor: int, latest: Callable[[], Snapshot | None]) -> None:
        self._latest[uri] = (latest, cursor)
        delay = self.settings.completion.warmup_ms
        old = self._warm_timers.pop(uri, None)
        if old is not None:
            old.cancel()
        if delay <= 0 or self.state != ModelState.READY:
            return
        loop = asyncio.get_running_loop()
        self._warm_timers[uri] = loop.call_later(delay / 1000, lambda: self._start_warmup(uri, cursor, latest))

    def _start_warmup(self, uri: str, cursor: int, latest: Callable[[], Snapshot | None]) -> None:
        self._warm_timers.pop(uri, None)
        self._begin_warmup(uri, cursor, latest)

    def _begin_warmup(self, uri: str, cursor: int, latest: Callable[[], Snapshot | None]) -> None:
        snap = latest()
        current = self._current.get(uri)
        busy = current is not None and not current.future.done()
        if snap is None or busy or self.backend is None or self.template is None or self._flights:
            return  # a request is running or queued: it warms the cache itself
        if self._warm_events:
            return  # one warm-up at a time: a second one queued behind it would not be cancelled with it
        from lsp_server.privacy import completion_allowed

        if completion_allowed(snap.path, self.settings, self.workspace_root):
            return
        cancel = threading.Event()
        self._warm_events.add(cancel)
        task = asyncio.get_running_loop().create_task(self._warmup(snap, min(cursor, len(snap.text)), cancel))
        self._prefetches.add(task)
        task.add_done_callback(self._prefetches.discard)
        task.add_done_callback(lambda _t: self._warm_events.discard(cancel))

    async def _warmup(self, snap: Snapshot, offset: int, cancel: threading.Event) -> None:
        """Evaluate the prompt the next request at `offset` will share, up to the start of the cursor line
        (that line and the suffix change as the user types), into the KV cache; nothing is generated."""
        backend, template = self.backend, self.template
        mode = decide_mode(snap.text, offset, snap.grammar, snap.tree)
        if mode == Mode.SKIP:
            mode = Mode.SINGLE
        prompt, _ctx, _extra, _healed = self._render_prompt(snap, offset, mode, backend, template, stable_only=True)
        if not prompt.strip() or cancel.is_set():
            return
        t0 = time.perf_counter()
        try:
            evaluated = await self.run_on_worker(backend.prefill, prompt, cancel)
        except (Cancelled, InfillError) as exc:
            log.debug("warm-up stopped: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - a warm-up is an optimisation, never an error for the user
            log.warning("warm-up failed: %s", exc)
            return
        self.warmups += 1
        self.last_warmup = {"uri": snap.uri, "version": snap.version, "evaluated_tokens": evaluated,
                            "ms": round((time.perf_counter() - t0) * 1000, 1)}
        log.info("warm-up evaluated=%s ms=%s", evaluated, self.last_warmup["ms"])

    def _prefill_head(self, snap: Snapshot, offset: int, ctx: FimContext, template: FimTemplate,
                      extra: list[ExtraFile]) -> tuple[int, str] | None:
        """(anchor, head): the prompt is `head + text[anchor:offset]`, where head is the rendered prompt up to
        and including the middle marker, and the text typed since the anchor is the start of the middle.

        Why: in PSM order the suffix follows the prefix, so a key typed at the end of the prefix changed the
        prompt before the whole suffix, which was evaluated again on every key. The document the model sees
        is the same either way (the middle is any span between prefix and suffix); with the typed text in
        the middle, llama.cpp reuses the KV cache up to the new key. The anchor and its head (window,
        header, extra files, suffix) stay as they were for up to `completion.prefill_lines` lines while the
        user edits at the cursor: the context engine's choices flap while the code under the cursor is
        half typed (the suffix's scope end, the collapsed header), and each flap would re-evaluate
        everything after it. The anchor moves to the cursor line's start (a fresh head) when the cursor
        leaves that range, the text above the anchor or below the cursor changes, or the user goes on
        elsewhere. None: plain layout (the setting is 0, not a PSM template, or a huge cursor line)."""
        lines = self.settings.completion.prefill_lines
        if lines <= 0 or template.order != "psm":
            return None
        text = snap.text
        line_start = text.rfind("\n", 0, offset) + 1
        if line_start < ctx.prefix_start or not ctx.prefix.endswith(text[line_start:offset]):
            return None  # the window starts inside the cursor line (a huge line)
        # the text after the cursor as the previous request saw it after its cursor: unchanged means the
        # user edited only at the cursor (typed, deleted, accepted) and did not go on elsewhere
        tail = _digest(text[offset:offset + _PREFILL_TAIL_CHARS])
        old = self._anchors.get(snap.uri)
        if old is not None:
            anchor, head, start, before, suffix, prev_tail = old
            if (start <= anchor <= line_start and offset - anchor <= _PREFILL_MAX_CHARS
                    and text.count("\n", anchor, offset) < lines and prev_tail == tail
                    and text.startswith(suffix, offset) and before == _digest(text[start:anchor])):
                self._anchors[snap.uri] = (anchor, head, start, before, suffix, tail)
                return anchor, head
        prefix = ctx.prefix[: len(ctx.prefix) - (offset - line_start)]
        head = render(template, prefix, ctx.suffix, path=self._display_path(snap.path), grammar=snap.grammar,
                      extra=extra)
        self._anchors[snap.uri] = (line_start, head, ctx.prefix_start, _digest(text[ctx.prefix_start:line_start]),
                                   ctx.suffix, tail)
        return line_start, head

    def _render_prompt(self, snap: Snapshot, offset: int, mode: Mode, backend: Backend, template: FimTemplate,
                       stable_only: bool = False) -> tuple[str, FimContext, list[ExtraFile], str]:
        """(prompt, context, extra files, healed) for a request at `offset`; healed: the spaces typed last
        that the prompt leaves out (the model writes them). `stable_only`: only the part that stays the
        same while the user types on (for the idle warm-up): the head up to the middle marker
        (`_prefill_head`), else up to the start of the cursor line."""
        ctx = build_context(snap.text, offset, snap.grammar, backend.count_tokens, self._budgets(), tree=snap.tree, mode=mode)
        extra = self._extra_files(snap, offset, ctx.prefix_start, backend.count_tokens)
        split = self._prefill_head(snap, offset, ctx, template, extra) if template.fim else None
        if split is not None:
            anchor, head = split
            if stable_only:
                return head, ctx, extra, ""
            # Spaces typed last stay out of the prompt (whitespace healing): after `<|fim_middle|>`, a prompt
            # ending in a lone " " token is off the training distribution ("3.14 * " gave "3.14 * r",
            # "a " gave " +  b"); without it the model writes the space itself (" r ** 2", " + b").
            middle = snap.text[anchor:offset]
            kept = middle.rstrip(" \t")
            return head + kept, ctx, extra, middle[len(kept):]
        prefix = ctx.prefix
        marker = "\x00INFILL-CUT\x00"
        if stable_only:
            line_start = snap.text.rfind("\n", 0, offset) + 1
            prefix = prefix[: max(0, len(prefix) - (offset - line_start))] + marker
        prompt = render(template, prefix, ctx.suffix if template.fim else "", path=self._display_path(snap.path),
                        grammar=snap.grammar, extra=extra)
        return (prompt[: prompt.find(marker)] if stable_only else prompt), ctx, extra, ""

    async def complete(self, snap: Snapshot, line: int, character: int, current_version: Callable[[], int | None],
                       prefetch: bool = False, invoked: bool = False) -> Suggestion:
        """The suggestion for one position; never raises for model trouble (empty text + log instead)."""
        t0 = time.perf_counter()
        offset = position_to_offset(snap.text, line, character)
        timings: dict[str, Any] = {"uri": snap.uri, "version": snap.version}
        if prefetch:
            timings["prefetch"] = True
        if invoked:
            timings["invoked"] = True

        def done(s: Suggestion) -> Suggestion:
            timings["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            timings["source"] = s.source
            timings["mode"] = s.mode
            s.timings = timings
            if not prefetch:
                self.last = timings
            self.history.append(timings)
            del self.history[:-1000]
            log.info("completion %s", " ".join(f"{k}={v}" for k, v in timings.items() if k != "uri"))
            return s

        if not self.language_enabled(snap.language_id):
            return done(Suggestion("", "disabled"))
        rest = self._type_through(snap, offset)
        if rest is not None:
            self._shown[snap.uri] = _Shown(snap.text[:offset], snap.text[offset:], rest)
            return done(Suggestion(rest, "type-through"))
        mode = decide_mode(snap.text, offset, snap.grammar, snap.tree)
        if mode == Mode.SKIP:
            return done(Suggestion("", "skip", mode.value))
        try:
            backend = await self.ensure_loaded()
        except ModelError:
            return done(Suggestion("", "error", mode.value))
        template = self.template
        assert template is not None
        c0 = time.perf_counter()
        prompt, ctx, extra, healed = self._render_prompt(snap, offset, mode, backend, template)
        if extra:
            timings["extra_chunks"] = len(extra)
        timings["context_ms"] = round((time.perf_counter() - c0) * 1000, 3)
        limits = mode_limits(mode)
        max_tokens = self.settings.completion.max_tokens_single if mode == Mode.SINGLE else self.settings.completion.max_tokens_multi
        max_tokens = min(max_tokens, limits.get("max_tokens", max_tokens))
        stop = list(template.stop) + list(limits.get("stop", ()))
        stop_check = None
        if mode == Mode.MULTI and self.settings.completion.block_stop:
            doc_prefix, doc_suffix = snap.text[:offset], snap.text[offset:]

            def stop_check(text: str) -> bool:
                return block_finished(_unheal(text, healed), prefix=doc_prefix, suffix=doc_suffix, stop=stop)
        request = GenerationRequest(prompt=prompt, max_tokens=max_tokens, stop=tuple(stop),
                                    deadline=None, stop_at_newline=mode == Mode.SINGLE,
                                    prefix=ctx.prefix, suffix=ctx.suffix, stop_check=stop_check)

        def lookup(prompt: str, healed: str) -> tuple[str, str | None]:
            key = cache_key(self.model_id, template.name, prompt, max_tokens,
                            mode.value + (f"|{healed!r}" if healed else ""))
            # a generation the automatic time budget cut short is kept apart: an explicit request wants all of it
            raw = self.cache.get(key)
            return key, raw if raw is not None or invoked else self.cache.get(key + ":cut")

        key, raw = lookup(prompt, healed)
        cold = None
        if raw is None and not invoked and not prefetch:
            cold = self._cold_prompt(snap, offset, mode, backend, template, prompt)
            if cold is not None:  # stop_check reads `healed` when it is called: the short prompt's
                prompt, ctx, healed, timings["cold_tokens"] = cold
                request = dataclasses.replace(request, prompt=prompt, prefix=ctx.prefix, suffix=ctx.suffix,
                                              scratch=True)
                key, raw = lookup(prompt, healed)
        cut_key = key + ":cut"
        source = "cache"
        if raw is None:
            try:
                raw, gen_stats, source = await self._run(snap.uri, key, request, invoked)
            except Cancelled:
                return done(Suggestion("", "cancelled", mode.value))
            except InfillError as exc:
                log.warning("completion failed: %s", exc)
                self._backend_failed(exc)
                return done(Suggestion("", "error", mode.value))
            except Exception:  # noqa: BLE001 - a backend bug costs this one suggestion, not the server or the worker
                log.exception("completion failed in the model worker")
                return done(Suggestion("", "error", mode.value))
            self._backend_ok()
            timings.update(gen_stats)
            self.cache.put(cut_key if gen_stats.get("finish_reason") == "deadline" else key, raw)
        if cold is not None:
            self._warm_now(snap, offset)  # the full prompt, into the KV cache beside the short one
        if current_version() != snap.version:
            return done(Suggestion("", "stale", mode.value))
        p0 = time.perf_counter()
        text = postprocess(_unheal(raw, healed), prefix=snap.text[:offset], suffix=snap.text[offset:], mode=mode.value,
                           grammar=snap.grammar, stop=stop)
        timings["postprocess_ms"] = round((time.perf_counter() - p0) * 1000, 3)
        if text:
            self._shown[snap.uri] = _Shown(snap.text[:offset], snap.text[offset:], text)
        return done(Suggestion(text, source if text else "empty", mode.value))

    def _cold_prompt(self, snap: Snapshot, offset: int, mode: Mode, backend: Backend, template: FimTemplate,
                     prompt: str) -> tuple[str, FimContext, str, int] | None:
        """A short stand-in for `prompt` when its new tokens would take longer than completion.cold_prompt_ms
        to evaluate (a file just opened, a jump elsewhere): (short prompt, its context, healed, the full
        prompt's new tokens), or None to use the full prompt. The short prompt has the cursor's nearest
        completion.cold_context_tokens of context and no other files; the backend evaluates it beside the
        full prompt's KV cache, and the full prompt is then warmed up (_warm_now)."""
        c = self.settings.completion
        if c.cold_prompt_ms <= 0 or c.cold_context_tokens <= 0 or not getattr(backend, "supports_scratch", False):
            return None
        try:
            new = backend.uncached_tokens(prompt)
        except InfillError:
            return None
        rate = getattr(backend, "prompt_rate", None) or ASSUMED_PROMPT_RATE
        if new * 1000 / rate <= c.cold_prompt_ms:
            return None
        n = c.cold_context_tokens
        budgets = Budgets(prefix_tokens=n - n // 4, suffix_tokens=n // 4, extra_tokens=0,
                          window_step_lines=min(8, c.window_step_lines))
        ctx = build_context(snap.text, offset, snap.grammar, backend.count_tokens, budgets, tree=snap.tree, mode=mode)
        # the spaces typed last stay out of the prompt, as in _render_prompt (whitespace healing)
        line = ctx.prefix[ctx.prefix.rfind("\n") + 1:]
        kept = ctx.prefix[: len(ctx.prefix) - (len(line) - len(line.rstrip(" \t")))]
        short = render(template, kept, ctx.suffix if template.fim else "", path=self._display_path(snap.path),
                       grammar=snap.grammar, extra=[])
        if backend.count_tokens(short) * 2 > new:
            return None  # not much shorter: the full prompt is worth its time
        return short, ctx, ctx.prefix[len(kept):], new

    def _warm_now(self, snap: Snapshot, offset: int) -> None:
        """After an answer from a short stand-in prompt: evaluate the full prompt's stable head now, in
        chunks that give way to the next request (progress is kept, so typing does not undo it)."""
        latest, cursor = self._latest.get(snap.uri) or ((lambda: snap), offset)
        self._begin_warmup(snap.uri, cursor, latest)  # a pending idle warm-up still runs: it finds little to do

    async def _run(self, uri: str, key: str, request: GenerationRequest,
                   invoked: bool = False) -> tuple[str, dict[str, Any], str]:
        flight = self._flights.get(key)
        source = "dedup"
        if flight is None or flight.cancel.is_set():
            source = "model"
            for event in self._warm_events:
                event.set()  # a warm-up still evaluating gives way to the request
            previous = self._current.get(uri)
            if previous is not None and previous.waiters <= 1:
                previous.cancel.set()  # superseded: the user has moved on
            cancel = threading.Event()
            c = self.settings.completion
            budget = (c.time_budget_invoked_ms if invoked else c.time_budget_ms) / 1000
            loop = asyncio.get_running_loop()
            backend = self.backend
            assert backend is not None

            def work():
                if cancel.is_set():
                    raise Cancelled("superseded before it started")
                deadline = time.monotonic() + budget
                return backend.generate(dataclasses.replace(request, deadline=deadline), cancel)

            flight = _Flight(loop.run_in_executor(self.worker, work), cancel)
            self._flights[key] = flight
            flight.future.add_done_callback(lambda _f, k=key, fl=flight: self._flights.get(k) is fl and self._flights.pop(k))
            # A generation everyone stopped waiting for still ends (often in Cancelled): retrieve its outcome, or
            # asyncio logs "Future exception was never retrieved" at ERROR level for each one (bench/soak.py).
            flight.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._current[uri] = flight
        flight.waiters += 1
        try:
            gen = await asyncio.shield(flight.future)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters <= 0:
                flight.cancel.set()  # $/cancelRequest: nobody wants this generation any more
            raise
        flight.waiters -= 1
        stats = {k: v for k, v in asdict(gen).items() if k not in ("text", "extra")}
        stats["prompt_ms"] = round(stats["prompt_ms"], 1)
        stats["generate_ms"] = round(stats["generate_ms"], 1)
        return gen.text, stats, source

    def _backend_failed(self, exc: Exception) -> None:
        """A remote server down or refusing (exc.notify_once): shown once, not per keystroke, until it recovers."""
        if getattr(exc, "notify_once", False) and not getattr(self, "_failing", ""):
            self._failing = str(exc)
            self.notify("error", f"infill-ls: {exc}")

    def _backend_ok(self) -> None:
        if getattr(self, "_failing", ""):
            self._failing = ""
            self.notify("info", "infill-ls: the model answers again; completions work again")

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)
        self._extra.pop(uri, None)
        self._anchors.pop(uri, None)
        self._latest.pop(uri, None)
        flight = self._current.pop(uri, None)
        if flight is not None:
            flight.cancel.set()

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error or None,
            "model": self.settings.model,
            "template": self.template.name if self.template else None,
            "backend": self.backend.info() if self.backend else None,
            "cache": self.cache.info(),
            "warmups": self.warmups,
            "last_warmup": self.last_warmup or None,
            "last": self.last,
        }

    def shutdown(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel.set()
        if self.backend is not None:
            # close() stops a managed llama-server, so it gets its chance; but the in-process backend's close
            # waits for the decode running on the worker, which under load took over 10 s after the editor
            # had gone (tests/e2e/test_faults.py). The process exits next: wait at most 2 s.
            closer = threading.Thread(target=self.backend.close, name="infill-close", daemon=True)
            closer.start()
            closer.join(2.0)
        self.cache.close()
        self.worker.shutdown(wait=False, cancel_futures=True)


_PREFILL_MAX_CHARS = 4000  # a pre-filled middle longer than this moves its anchor to the cursor line
_PREFILL_TAIL_CHARS = 2000  # how much of the text after the cursor tells that the user stayed there


def _unheal(raw: str, healed: str) -> str:
    """The model's text as seen from the cursor, when the prompt left out the spaces typed last
    (`healed`): the model wrote them itself, or went on without them."""
    if healed and raw.startswith(healed):
        return raw[len(healed):]
    return raw


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.digest()


def _with_adapters(model_id: str, statuses) -> str:
    """The model id (part of every cache key) with the LoRA adapters applied; no adapters: the base id."""
    from lsp_server.adapters import adapters_key

    base = model_id.split("|lora=", 1)[0]
    key = adapters_key(statuses or [])
    return f"{base}|lora={key!r}" if key else base
