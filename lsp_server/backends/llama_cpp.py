"""In-process llama.cpp backend (llama-cpp-python), the default.

Latency on a CPU is dominated by prompt evaluation, so this backend manages the KV cache itself: it
finds the longest common token prefix with what is already evaluated, drops the rest, and evaluates the
new tokens in small chunks so that cancellation is noticed within one chunk instead of after the whole
prompt. Generation is greedy and checked for cancel, stop strings and the time budget after every token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from lsp_server.backends.base import ChatRequest, Generation, GenerationRequest, OnText
from lsp_server.errors import BackendError, Cancelled, ModelError

log = logging.getLogger(__name__)

PREFILL_CHUNK = 64  # tokens per decode call while evaluating a prompt: ~0.7 s on 2 cores, the cancel granularity


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


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
        devices = []
        for i in range(llama_cpp.ggml_backend_dev_count()):
            dev = llama_cpp.ggml_backend_dev_get(i)
            devices.append(llama_cpp.ggml_backend_dev_name(dev).decode() + ": "
                           + llama_cpp.ggml_backend_dev_description(dev).decode())
        info["devices"] = devices
    except (AttributeError, OSError):  # older bindings lack the device API
        pass
    return info


class LlamaCppBackend:
    name = "llama_cpp"

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_gpu_layers: int = -1, n_threads: int = 0):
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.requested_gpu_layers = n_gpu_layers
        self.n_threads = n_threads or None
        self.llm = None
        self.n_gpu_layers = 0
        self.load_seconds = 0.0
        self._lock = threading.Lock()  # the llama context is not thread-safe
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
        layers = self.requested_gpu_layers
        if layers < 0:
            layers = -1 if gpu_offload_supported() else 0
        started = time.monotonic()
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_gpu_layers=layers,
                n_threads=self.n_threads,
                n_batch=512,
                verbose=bool(os.environ.get("INFILL_LS_LLAMA_VERBOSE")),
            )
        except Exception as exc:  # llama.cpp reports most load failures as ValueError/RuntimeError
            raise ModelError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        self.n_gpu_layers = layers
        self.load_seconds = time.monotonic() - started
        self._eog = self._make_eog()
        log.info("loaded %s in %.2fs (n_ctx=%d, gpu_layers=%d)", self.model_path.name,
                 self.load_seconds, self.n_ctx, layers)

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
    def _prefill_tokens(self, tokens: list[int], cancel: threading.Event) -> int:
        """Bring the KV cache to `tokens`, reusing the longest common prefix; returns tokens evaluated."""
        llm = self._require()
        if len(tokens) >= self.n_ctx:
            raise BackendError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        cached = llm.n_tokens
        common = 0
        ids = llm.input_ids
        limit = min(cached, len(tokens))
        while common < limit and ids[common] == tokens[common]:
            common += 1
        if common == len(tokens):
            common -= 1  # re-evaluate the last token so that fresh logits exist for sampling
        llm.n_tokens = common
        llm._ctx.kv_cache_seq_rm(-1, common, -1)
        for start in range(common, len(tokens), PREFILL_CHUNK):
            if cancel.is_set():
                raise Cancelled("cancelled during prompt evaluation")
            llm.eval(tokens[start : start + PREFILL_CHUNK])
        return len(tokens) - common

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        with self._lock:
            return self._prefill_tokens(self.tokenize(prompt), cancel)

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        with self._lock:
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
            raise BackendError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        t0 = time.monotonic()
        evaluated = self._prefill_tokens(tokens, cancel)
        t1 = time.monotonic()
        out = bytearray()
        text = ""
        n_gen = 0
        reason = "length"
        max_tokens = min(request.max_tokens, room)
        stops = [s for s in request.stop if s]
        # generate() sees the whole prompt already cached and starts sampling at once
        for tok in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if cancel.is_set():
                reason = "cancelled"
                break
            if self._eog(tok):
                reason = "stop"
                break
            n_gen += 1
            out += llm.detokenize([tok], special=True)
            text = out.decode("utf-8", errors="ignore")
            hit = _first_stop(text, stops)
            if hit is not None:
                text, reason = text[:hit], "stop"
                break
            if on_text is not None:
                on_text(text)
            if request.stop_at_newline and "\n" in text.lstrip("\n"):
                reason = "newline"
                break
            if n_gen >= max_tokens:
                break
            if request.deadline is not None and time.monotonic() > request.deadline and text.endswith("\n"):
                reason = "deadline"
                break
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
        )

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model_path": str(self.model_path),
            "loaded": self.llm is not None,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "load_seconds": round(self.load_seconds, 2),
        }

    def close(self) -> None:
        with self._lock:
            if self.llm is not None:
                self.llm.close()
                self.llm = None


def plain_instruction_prompt(messages) -> str:
    """For base models without a chat template: an instruction/response layout they continue well."""
    parts = []
    for m in messages:
        head = {"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"}.get(m["role"], "")
        parts.append(head + m["content"].strip() + "\n")
    return "\n".join(parts) + "\n### Response:\n"


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    return min(found) if found else None

