"""In-process llama.cpp backend (llama-cpp-python), the default.

Latency on a CPU is dominated by prompt evaluation, so this backend manages the KV cache itself: it
finds the longest common token prefix with what is already evaluated, drops the rest, and evaluates the
new tokens in small chunks so that cancellation is noticed within one chunk instead of after the whole
prompt. Generation is greedy and checked for cancel, stop strings and the time budget after every token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from lsp_server.adapters import AdapterStatus, LlamaLoras
from lsp_server.backends.base import ChatRequest, Generation, GenerationRequest, OnText, cut_at_deadline
from lsp_server.config import AdapterSettings
from lsp_server.errors import Cancelled, ContextOverflow, ModelError

log = logging.getLogger(__name__)

PREFILL_CHUNK = 64  # tokens per decode call while evaluating a prompt: ~0.3 s on 2 cores, the cancel granularity
# a warm-up (prefill) runs in the background and gives way to requests, and a cold file's short prompts are
# superseded key after key: smaller chunks, so a request waits ~0.1 s for the chunk in progress instead of ~0.3 s
# (2 cores: 162 tok/s in 16-token chunks against 206 in 64-token ones)
WARMUP_CHUNK = 16
MIN_REUSED_TAIL = 8  # shifting a shorter tail saves less than it risks


native_log = logging.getLogger(__name__ + ".native")  # llama.cpp's own log lines


@lru_cache(maxsize=1)
def _route_llama_logs() -> object:
    """Send llama.cpp's log (ggml, model loading) to our logger: stderr or --log-file, never stdout.
    INFILL_LS_LLAMA_VERBOSE=1 shows all of it at info level; otherwise only warnings and errors."""
    import ctypes

    import llama_cpp

    levels = {3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error
    verbose = bool(os.environ.get("INFILL_LS_LLAMA_VERBOSE"))
    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        try:
            lvl = last[0] if level == 5 else levels.get(level, logging.DEBUG)  # 5: continues the last line
            last[0] = lvl
            native_log.log(max(lvl, logging.INFO) if verbose else lvl, "%s", text.decode("utf-8", "replace").rstrip())
        except Exception:  # noqa: BLE001 - never raise into C
            pass

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback  # the cache keeps the C callback alive


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, and the room left under an address-space limit."""
    import resource

    have = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status", encoding="ascii") as fh:
                used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
            room = max(0, soft - used)
            have = room if have is None else min(have, room)
    except (OSError, ValueError, StopIteration):
        pass
    return have


def usable_cpus() -> int:
    """CPUs this process may run on: the thread count for both generation and prompt evaluation.

    llama-cpp-python's own default is half the CPUs for generation, which on a 2-core machine generated
    13.8 tok/s with the default model where 2 threads gave 24.7 tok/s (measured 2026-11-27)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _overflow_message(n_tokens: int, n_ctx: int) -> str:
    return (f"the prompt ({n_tokens} tokens) does not fit the model's context ({n_ctx} tokens): raise the model's "
            "n_ctx or lower completion.prefix_tokens / suffix_tokens / extra_tokens")


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}  # enum ggml_backend_dev_type


def backend_devices() -> list[dict[str, Any]]:
    """llama.cpp's backend device registry (CPU, CUDA0, ...), with free/total memory.

    llama-cpp-python 0.3.36 does not bind `ggml_backend_dev_*`, so they are declared here with ctypes on the
    libggml that the binding itself loaded (the registry and the devices live there).
    """
    import ctypes

    from llama_cpp._ggml import libggml as lib

    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    lib.ggml_backend_dev_memory.restype = None
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append({"name": (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                        "description": (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                        "type": DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "?"),
                        "memory_free": free.value, "memory_total": total.value})
    return devices


def gpu_free_bytes(devices: list[dict[str, Any]]) -> int | None:
    """Free memory over the GPU devices (llama.cpp splits layers across them); None without a GPU device."""
    gpus = [d for d in devices if d["type"] in ("gpu", "igpu")]
    return sum(d["memory_free"] for d in gpus) if gpus else None


def system_info() -> dict[str, Any]:
    """What the loaded llama.cpp build can do (for `infill-ls doctor`)."""
    try:
        import llama_cpp
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    info: dict[str, Any] = {
        "available": True,
        "version": getattr(llama_cpp, "__version__", "?"),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "mmap": bool(llama_cpp.llama_supports_mmap()),
        "max_devices": int(llama_cpp.llama_max_devices()),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }
    try:
        info["devices"] = backend_devices()
    except (AttributeError, OSError, ImportError) as exc:  # a build without the device registry
        info["devices_error"] = str(exc)
    return info


class LlamaCppBackend:
    name = "llama_cpp"

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_gpu_layers: int = -1, n_threads: int = 0,
                 kv_reuse: bool = False, draft_tokens: int = 0, prefix_reuse: bool = True,
                 adapters: Sequence[AdapterSettings] = ()):
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.requested_gpu_layers = n_gpu_layers
        self.n_threads = n_threads or usable_cpus()
        self.kv_reuse = kv_reuse
        self.prefix_reuse = prefix_reuse  # False only to measure the naive configuration
        self.draft_tokens = draft_tokens
        self.adapters = tuple(adapters)  # LoRA adapters (lsp_server/adapters.py)
        self._loras: LlamaLoras | None = None
        self.reused_tail_tokens = 0
        self._can_shift = False
        self._n_vocab = 0
        self.llm = None
        self.n_gpu_layers = 0
        self.gpu_layers_offloaded = 0
        self.gpu_layers_total = 0
        self.gpu_plan = None
        self.load_seconds = 0.0
        self._lock = threading.Lock()  # the llama context is not thread-safe
        # Sequence 0 holds the prompt of the last request; sequence 1 is a scratch sequence: the kept tail
        # waits there during a shifted prefill, and short stand-in prompts (request.scratch) live there,
        # so that a quick answer for a cold file leaves sequence 0 (and its warm-up) alone.
        self._seq = 0  # the sequence that _decode and the decode loop work on
        self._scratch: list[int] = []  # the tokens evaluated in sequence 1 (a scratch prompt)
        self.prompt_rate: float | None = None  # measured prompt evaluation, tokens/s (prefills of >= 64 tokens)
        # The context engine asks for the same lines' counts on every keystroke: memoise them.
        self._count = lru_cache(maxsize=65536)(self._count_uncached)

    # -- loading ---------------------------------------------------------------------------------------
    def load(self) -> None:
        from lsp_server.catalog import check_gguf

        check_gguf(self.model_path)
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelError(f"llama-cpp-python is not installed: {exc}") from exc
        layers = self._choose_gpu_layers()
        if layers == 0:
            self._check_host_memory()
        started = time.monotonic()
        _route_llama_logs()
        printed = io.StringIO()
        try:
            # verbose=False would make llama-cpp-python point fds 1 and 2 at /dev/null while it loads
            # (suppress_stdout_stderr): on a stdio server that can swallow replies written meanwhile. So
            # verbose=True: llama.cpp's own log goes through _route_llama_logs, and the Python-level
            # prints of llama-cpp-python are collected here and logged at debug level.
            with contextlib.redirect_stderr(printed):
                self.llm = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_gpu_layers=layers,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    n_batch=512,
                    verbose=True,
                )
        except Exception as exc:  # llama.cpp reports most load failures as ValueError/RuntimeError
            raise ModelError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        finally:
            if printed.getvalue():
                native_log.debug("%s", printed.getvalue().rstrip()[:20000])
        self.n_gpu_layers = layers
        n_layer = int(llama_cpp.llama_model_n_layer(self.llm._model.model))
        # llama.cpp offloads the last k repeating layers, and the output layer as "layer n_layer + 1"
        self.gpu_layers_total = n_layer + 1
        self.gpu_layers_offloaded = 0 if layers == 0 else n_layer + 1 if layers < 0 else min(layers, n_layer + 1)
        self.load_seconds = time.monotonic() - started
        self._eog = self._make_eog()
        self._n_vocab = self.llm.n_vocab()
        self._enable_two_sequences()  # the tail's parking place (kv_reuse) and scratch prompts
        mem = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        self._can_shift = self.kv_reuse and bool(mem is not None and llama_cpp.llama_memory_can_shift(mem))
        self._loras = LlamaLoras(self.model_path)
        if self.adapters:  # on the final context: _enable_two_sequences replaces the first one
            self._loras.apply(self.llm._model.model, self.llm._ctx.ctx, self.adapters)
        log.info("loaded %s in %.2fs (n_ctx=%d, gpu_layers=%d)", self.model_path.name,
                 self.load_seconds, self.n_ctx, layers)

    def _choose_gpu_layers(self) -> int:
        """n_gpu_layers for llama.cpp: 0 without a GPU backend; with one, the setting checked against the
        GPU's free memory (estimate from the GGUF header, lsp_server/gpu.py)."""
        from lsp_server import gpu

        requested = self.requested_gpu_layers
        if not gpu_offload_supported():
            return 0
        try:
            free = gpu_free_bytes(backend_devices())
            shape = gpu.read_model_shape(self.model_path)
        except (OSError, AttributeError, ImportError, gpu.GgufError) as exc:
            log.warning("GPU fit check skipped (%s): n_gpu_layers=%d", exc, requested)
            return requested
        if free is None or requested == 0:
            return requested
        plan = gpu.plan_gpu_layers(shape, self.n_ctx, free, requested)
        self.gpu_plan = plan
        if plan.fits:
            return requested
        if requested < 0:  # auto: run with what fits rather than fail
            log.warning("%s; using n_gpu_layers=%d", plan.message, plan.n_gpu_layers)
            return plan.n_gpu_layers
        raise ModelError(f"{self.model_path.name}: {plan.message}. Set n_gpu_layers to {plan.fit_layers} "
                         "or less, or -1 to choose automatically")

    def _check_host_memory(self) -> None:
        """Refuse a CPU load that cannot fit, with the numbers, instead of letting llama.cpp abort the whole
        process when an allocation fails (seen: n_ctx 131072 under a 2.5 GB address-space limit killed the
        server with SIGABRT). Estimate from the GGUF header: the file (mapped) + f16 KV cache + compute buffer."""
        from lsp_server import gpu

        try:
            shape = gpu.read_model_shape(self.model_path)
            need = (self.model_path.stat().st_size + self.n_ctx * sum(shape.kv_bytes_per_token)
                    + gpu.compute_buffer_bytes(shape.n_vocab))
        except (OSError, AttributeError, gpu.GgufError):
            return  # no estimate: let llama.cpp try
        have = available_memory()
        if have is None or need <= have:
            return
        per_token = sum(shape.kv_bytes_per_token) or 1
        fit = (have - (need - self.n_ctx * per_token)) // per_token
        hint = (f"set n_ctx to {int(fit) // 256 * 256} or less" if fit >= 512
                else "choose a smaller model or free memory")
        raise ModelError(f"{self.model_path.name} with n_ctx={self.n_ctx} needs about {need / 2**30:.1f} GiB of "
                         f"memory, {have / 2**30:.1f} GiB is available: {hint}")

    def _make_eog(self):
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        return lambda tok: bool(llama_cpp.llama_vocab_is_eog(vocab, tok))

    def _require(self):
        if self.llm is None:
            raise ModelError("the model is not loaded")
        return self.llm

    # -- tokens ----------------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self._require().tokenize(text.encode("utf-8"), add_bos=True, special=special)

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def _count_uncached(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, so it runs without the context lock, beside generation.
        return len(self._require().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def is_single_token(self, text: str) -> bool:
        return len(self._require().tokenize(text.encode("utf-8"), add_bos=False, special=True)) == 1

    def metadata(self) -> dict[str, str]:
        return dict(self._require().metadata)

    # -- evaluation ------------------------------------------------------------------------------------
    # llama-cpp-python's own generate() only reuses the longest common token PREFIX. While the user types
    # at the end of the FIM prefix, everything after the cursor (the suffix, and the FIM markers) is
    # unchanged but sits after the edit, so a prefix match alone re-evaluates it on every keystroke. Here
    # the unchanged tail is kept too: its KV entries are shifted to their new positions (the same
    # approximation as llama-server's --cache-reuse) and only the edited middle is evaluated.

    def _decode(self, tokens: list[int], pos: int, all_logits: bool = False) -> None:
        llm = self.llm
        llm._batch.set_batch(batch=tokens, n_past=pos, logits_all=all_logits)
        if self._seq:
            seq_id = llm._batch.batch.seq_id
            for i in range(len(tokens)):
                seq_id[i][0] = self._seq
        llm._ctx.decode(llm._batch)

    def _argmax(self, index: int) -> int:
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, index)
        return int(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).argmax())

    def _set_cached(self, tokens: list[int]) -> None:
        llm = self.llm
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)

    def _prefill_tokens(self, tokens: list[int], cancel: threading.Event, chunk_size: int = 0) -> int:
        """Bring the KV cache to `tokens` with fresh logits for the last one; returns tokens evaluated.
        `chunk_size`: tokens per decode call (default PREFILL_CHUNK; cancel is checked between chunks)."""
        step = chunk_size or PREFILL_CHUNK
        llm = self._require()
        if len(tokens) >= self.n_ctx:
            raise ContextOverflow(_overflow_message(len(tokens), self.n_ctx))
        if self._scratch and len(tokens) + len(self._scratch) + 1024 > self.n_ctx:
            self._drop_scratch()  # the KV buffer is shared: room for this prompt and its generation first
        cached, common, tail = self._reuse(tokens)
        if common == len(tokens):
            common -= 1  # re-evaluate the last token so that fresh logits exist (no tail is left to reuse then)
        ctx = llm._ctx
        t0 = time.monotonic()
        if tail:
            self._drop_scratch()  # sequence 1 parks the tail
            # llama.cpp requires each sequence's positions to grow by one per decode, so the kept tail
            # waits in sequence 1 while the edited middle is evaluated in sequence 0, then moves back.
            old_end, new_end = len(cached) - tail, len(tokens) - tail
            ctx.kv_cache_seq_cp(0, 1, old_end, len(cached) - 1)  # the tail, less its last token
            ctx.kv_cache_seq_rm(0, common, -1)
            middle = tokens[common:new_end]
            for start in range(0, len(middle), step):
                if cancel.is_set():
                    self._invalidate()
                    raise Cancelled("cancelled during prompt evaluation")
                self._decode(middle[start : start + step], common + start)
            ctx.kv_cache_seq_shift(1, old_end, len(cached) - 1, new_end - old_end)
            ctx.kv_cache_seq_cp(1, 0, new_end, len(tokens) - 1)
            ctx.kv_cache_seq_rm(1, -1, -1)
            self._decode(tokens[-1:], len(tokens) - 1)  # fresh logits, attending to the new middle
            self._set_cached(tokens)
            self.reused_tail_tokens += tail - 1
            self._note_rate(len(middle) + 1, t0)
            return len(middle) + 1
        ctx.kv_cache_seq_rm(0, common, -1)
        self._set_cached(tokens[:common])
        for start in range(common, len(tokens), step):
            if cancel.is_set():
                self._note_rate(start - common, t0)
                raise Cancelled("cancelled during prompt evaluation")
            chunk = tokens[start : start + step]
            self._decode(chunk, start)
            self._set_cached(tokens[: start + len(chunk)])
        self._note_rate(len(tokens) - common, t0)
        return len(tokens) - common

    def _note_rate(self, evaluated: int, t0: float) -> None:
        """Keep a running figure of prompt evaluation speed (the engine's cold-file check reads it)."""
        elapsed = time.monotonic() - t0
        if evaluated >= 64 and elapsed > 0:
            rate = evaluated / elapsed
            self.prompt_rate = rate if self.prompt_rate is None else 0.7 * self.prompt_rate + 0.3 * rate

    def uncached_tokens(self, prompt: str) -> int:
        """How many of `prompt`'s tokens a generation would evaluate now (sequence 0's prompt reused as
        prefix and shifted tail). Reads the cache without the lock: an estimate while a request runs."""
        self._require()
        tokens = self.tokenize(prompt)
        _cached, common, tail = self._reuse(tokens)
        return max(1, len(tokens) - common - tail)

    def _reuse(self, tokens: list[int]) -> tuple[list[int], int, int]:
        """(cached, common, tail): sequence 0's tokens, how many of them start `tokens` too (0 without
        prefix_reuse), and how many at the end of both can be shifted into place (kv_reuse)."""
        llm = self.llm
        cached = list(llm.input_ids[: llm.n_tokens])
        common = _common_prefix(cached, tokens) if self.prefix_reuse else 0
        tail = self._reusable_tail(cached, tokens, common) if self.kv_reuse else 0
        return cached, common, tail

    @property
    def supports_scratch(self) -> bool:
        """Whether a scratch prompt can live beside sequence 0's prompt (two sequences in the context)."""
        return self.llm is not None and self.llm.context_params.n_seq_max >= 2

    def _drop_scratch(self) -> None:
        if self._scratch:
            self.llm._ctx.kv_cache_seq_rm(1, -1, -1)
            self._scratch = []

    def _generate_scratch(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        """Generate from a short stand-in prompt in sequence 1, leaving sequence 0 (the full prompt, or the
        part of it a warm-up has evaluated) as it is. Its own prefix is reused from the last scratch prompt."""
        llm = self._require()
        tokens = self.tokenize(request.prompt)
        room = self.n_ctx - llm.n_tokens - len(tokens) - 8
        if room < min(request.max_tokens, 16):  # no room beside sequence 0: an ordinary generation
            return self._generate(dataclasses.replace(request, scratch=False), cancel)
        t0 = time.monotonic()
        common = _common_prefix(self._scratch, tokens[:-1])  # the last token again: fresh logits
        ctx = llm._ctx
        ctx.kv_cache_seq_rm(1, common, -1)
        self._scratch = tokens[:common]
        self._seq = 1
        try:
            # small chunks: a cold file's first keys come fast, and each request supersedes the one before
            for start in range(common, len(tokens), WARMUP_CHUNK):
                if cancel.is_set():
                    raise Cancelled("cancelled during prompt evaluation")
                chunk = tokens[start : start + WARMUP_CHUNK]
                self._decode(chunk, start)
                self._scratch = tokens[: start + len(chunk)]
            t1 = time.monotonic()
            try:
                text, n_gen, reason, drafted, accepted = self._decode_loop(tokens, request, cancel, None,
                                                                           min(request.max_tokens, room))
            finally:
                ctx.kv_cache_seq_rm(1, len(tokens), -1)  # keep only the scratch prompt
        finally:
            self._seq = 0
        t2 = time.monotonic()
        if reason == "cancelled":
            raise Cancelled("cancelled during generation")
        return Generation(
            text=text, finish_reason=reason, prompt_tokens=len(tokens), evaluated_tokens=len(tokens) - common,
            generated_tokens=n_gen, prompt_ms=(t1 - t0) * 1000, generate_ms=(t2 - t1) * 1000,
            extra={"scratch": True, **({"drafted": drafted, "draft_accepted": accepted} if drafted else {})},
        )

    def _reusable_tail(self, cached: list[int], tokens: list[int], common: int) -> int:
        """Tokens at the end of both prompts that are equal and lie after the common prefix."""
        if not self._can_shift:
            return 0
        room = min(len(cached), len(tokens)) - common
        tail = 0
        while tail < room and cached[-1 - tail] == tokens[-1 - tail]:
            tail += 1
        return tail if tail >= MIN_REUSED_TAIL else 0

    def _invalidate(self) -> None:
        # A half-done shifted prefill leaves a hole in the positions: start clean next time.
        self.llm._ctx.kv_cache_seq_rm(-1, -1, -1)
        self.llm.n_tokens = 0
        self._scratch = []

    def _enable_two_sequences(self) -> None:
        """Recreate the context with a second sequence over one shared (unified) KV buffer.

        llama-cpp-python offers no n_seq_max argument. Sequence 1 is the kept tail's parking place (kv_reuse)
        and holds scratch prompts (_generate_scratch); the buffer is shared, so it costs no memory.
        """
        import llama_cpp._internals as internals

        llm = self.llm
        params = llm.context_params
        params.n_seq_max = 2
        params.kv_unified = True
        old = llm._ctx
        llm._ctx = internals.LlamaContext(model=llm._model, params=params, verbose=llm.verbose)
        old.close()
        llm.n_tokens = 0
        self._scratch = []

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        """A warm-up: small chunks (WARMUP_CHUNK), so that a request arriving meanwhile waits little."""
        with self._lock:
            return self._prefill_tokens(self.tokenize(prompt), cancel, WARMUP_CHUNK)

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        with self._lock:
            if request.scratch and self.supports_scratch:
                return self._generate_scratch(request, cancel)
            return self._generate(request, cancel)

    def chat_prompt(self, messages) -> tuple[str, list[str]]:
        """Render messages with the GGUF's own chat template, or a plain instruction prompt without one."""
        llm = self._require()
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return plain_instruction_prompt(messages), ["\n### Instruction", "\n### Request"]
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = llm._model
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(template=template,
                                        eos_token=model.token_get_text(eos) if eos != -1 else "",
                                        bos_token=model.token_get_text(bos) if bos != -1 else "")
        rendered = formatter(messages=list(messages))
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return rendered.prompt, stop

    def chat(self, request: ChatRequest, cancel: threading.Event, on_text: OnText | None = None) -> Generation:
        with self._lock:
            prompt, stop = self.chat_prompt(request.messages)
            gen = GenerationRequest(prompt=prompt, max_tokens=request.max_tokens, stop=(*request.stop, *stop))
            return self._generate(gen, cancel, on_text)

    def _generate(self, request: GenerationRequest, cancel: threading.Event, on_text: OnText | None = None) -> Generation:
        llm = self._require()
        tokens = self.tokenize(request.prompt)
        room = self.n_ctx - len(tokens) - 1
        if room <= 0:
            raise ContextOverflow(_overflow_message(len(tokens), self.n_ctx))
        t0 = time.monotonic()
        evaluated = self._prefill_tokens(tokens, cancel)
        t1 = time.monotonic()
        try:
            text, n_gen, reason, drafted, accepted = self._decode_loop(tokens, request, cancel, on_text,
                                                                       min(request.max_tokens, room))
        finally:
            # Keep only the prompt in the KV cache: the next prompt shares its tail, not our output.
            llm._ctx.kv_cache_seq_rm(0, len(tokens), -1)
            self._set_cached(tokens)
        t2 = time.monotonic()
        if reason == "cancelled":
            raise Cancelled("cancelled during generation")
        return Generation(
            text=text,
            finish_reason=reason,
            prompt_tokens=len(tokens),
            evaluated_tokens=evaluated,
            generated_tokens=n_gen,
            prompt_ms=(t1 - t0) * 1000,
            generate_ms=(t2 - t1) * 1000,
            extra={"drafted": drafted, "draft_accepted": accepted} if drafted else {},
        )

    def _decode_loop(self, prompt: list[int], request: GenerationRequest, cancel: threading.Event,
                     on_text: OnText | None, max_tokens: int) -> tuple[str, int, str, int, int]:
        """Greedy decoding, optionally with prompt-lookup drafts verified in one batch per step."""
        llm = self.llm
        stops = [s for s in request.stop if s]
        history = list(prompt)
        pos = len(prompt)
        out = bytearray()
        text, n_gen, drafted, accepted_total = "", 0, 0, 0
        nxt = self._argmax(-1)
        while True:
            draft = _lookup_draft(history + [nxt], self.draft_tokens) if self.draft_tokens else []
            # emit `nxt` and then each accepted draft token; every emitted token is checked the same way
            pending = [nxt]
            if draft:
                batch = [nxt, *draft]
                self._decode(batch, pos, all_logits=True)
                preds = [self._argmax(i) for i in range(len(batch))]
                n_ok = 0
                while n_ok < len(draft) and draft[n_ok] == preds[n_ok]:
                    n_ok += 1
                drafted += len(draft)
                accepted_total += n_ok
                pending += draft[:n_ok]
                following = preds[n_ok]
                llm._ctx.kv_cache_seq_rm(self._seq, pos + 1 + n_ok, -1)  # rejected drafts
            else:
                following = None
            for i, tok in enumerate(pending):
                if cancel.is_set():
                    return text, n_gen, "cancelled", drafted, accepted_total
                if self._eog(tok):
                    return text, n_gen, "stop", drafted, accepted_total
                n_gen += 1
                out += llm.detokenize([tok], special=True)
                text = out.decode("utf-8", errors="ignore")
                hit = _first_stop(text, stops)
                if hit is not None:
                    return text[:hit], n_gen, "stop", drafted, accepted_total
                if on_text is not None:
                    on_text(text)
                if request.stop_at_newline and "\n" in text.lstrip("\n"):
                    return text, n_gen, "newline", drafted, accepted_total
                if n_gen >= max_tokens:
                    return text, n_gen, "length", drafted, accepted_total
                cut = cut_at_deadline(request, text)
                if cut is not None:
                    return cut, n_gen, "deadline", drafted, accepted_total
                if request.stop_check is not None and text.endswith("\n") and request.stop_check(text):
                    return text, n_gen, "block", drafted, accepted_total
            history += pending
            if following is None:
                self._decode([nxt], pos)
                pos += 1
                nxt = self._argmax(-1)
            else:
                pos += len(pending)
                nxt = following

    # -- LoRA adapters -----------------------------------------------------------------------------------
    @property
    def adapter_statuses(self) -> list[AdapterStatus]:
        return list(self._loras.statuses) if self._loras is not None else []

    def set_adapters(self, adapters: Sequence[AdapterSettings]) -> list[AdapterStatus]:
        """Swap the LoRA adapters without reloading the model; the KV cache is dropped when they changed."""
        with self._lock:
            self._require()
            self.adapters = tuple(adapters)
            assert self._loras is not None
            if self._loras.apply(self.llm._model.model, self.llm._ctx.ctx, self.adapters):
                self._invalidate()  # keys and values computed with other weights would leak into the output
            return self.adapter_statuses

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model_path": str(self.model_path),
            "loaded": self.llm is not None,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "gpu_layers_offloaded": self.gpu_layers_offloaded,
            "gpu_layers_total": self.gpu_layers_total,
            "load_seconds": round(self.load_seconds, 2),
            "kv_reuse": self.kv_reuse and self._can_shift,
            "draft_tokens": self.draft_tokens,
            "reused_tail_tokens": self.reused_tail_tokens,
            "prompt_rate": round(self.prompt_rate, 1) if self.prompt_rate else None,
            "adapters": [s.as_dict() for s in self.adapter_statuses],
        }

    def close(self) -> None:
        with self._lock:
            if self.llm is not None:
                if self._loras is not None:  # adapter handles belong to the model: free them first
                    self._loras.free(self.llm._ctx.ctx)
                self.llm.close()
                self.llm = None


def _lookup_draft(history: list[int], n: int, ngram: int = 3) -> list[int]:
    """Prompt-lookup drafting: find the latest earlier occurrence of the last n-gram and propose what
    followed it. Code repeats its own context (names, argument lists), which is what this catches."""
    for size in range(ngram, 0, -1):
        if len(history) <= size:
            continue
        key = history[-size:]
        for start in range(len(history) - size - 1, -1, -1):
            if history[start : start + size] == key:
                follow = history[start + size : start + size + n]
                if follow:
                    return follow
                break
    return []


def plain_instruction_prompt(messages) -> str:
    """For base models without a chat template: an instruction/response layout they continue well."""
    parts = []
    for m in messages:
        head = {"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"}.get(m["role"], "")
        parts.append(head + m["content"].strip() + "\n")
    return "\n".join(parts) + "\n### Response:\n"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens at the start of `a` and `b` are the same."""
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    return min(found) if found else None

