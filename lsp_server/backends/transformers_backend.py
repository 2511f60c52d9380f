"""Hugging Face transformers backend (optional extra `[transformers]`): torch in-process.

Serves the same requests as the llama.cpp backend for models that exist as a Hugging Face checkpoint
directory, or for a GGUF file, which transformers dequantizes at load time (float32 on a CPU). The FIM
prompt arrives rendered from prompts/fim.toml; its marker strings are added tokens of the tokenizer, so
encoding the text yields the single special tokens the model was trained with.

Like llama_cpp.py it runs its own greedy token loop on the engine's model worker, so cancel, stop
strings, single-line mode and the time budget are checked after every token, and prompt evaluation goes
in chunks so that a superseded request stops within one chunk. The KV cache (a DynamicCache) is kept
between requests and cropped to the longest common token prefix with the previous prompt: while the user
types at the end of the FIM prefix only the tokens after the edit are evaluated again.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from lsp_server.backends.base import ChatRequest, Generation, GenerationRequest, OnText, cut_at_deadline
from lsp_server.backends.llama_cpp import _first_stop, plain_instruction_prompt
from lsp_server.errors import BackendError, Cancelled, ModelError

log = logging.getLogger(__name__)

PREFILL_CHUNK = 64  # prompt tokens per forward pass: the cancel granularity while a prompt is evaluated
# End-of-generation tokens that llama.cpp also treats as EOG (its vocab.cpp list), when the vocabulary has
# them as added tokens: FIM models end a middle with one of these rather than with their chat EOS.
EOG_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|EOT|>", "<EOT>", "<|end|>",
             "<end_of_turn>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "</s>",
             "<｜end▁of▁sentence｜>")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def system_info() -> dict[str, Any]:
    """What this environment offers the transformers backend (for `infill-ls doctor`)."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        return {"available": False, "error": f"{exc} (pip install 'infill-ls[transformers]')"}
    return {"available": True, "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads()}


def split_model_source(path: Path) -> tuple[Path, str | None]:
    """(directory for from_pretrained, GGUF file name inside it or None for a checkpoint directory)."""
    if not path.exists():
        raise ModelError(f"model not found: {path} (a Hugging Face checkpoint directory or a .gguf file; "
                         "run `infill-ls models pull` for catalog models)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
        return path, None
    from lsp_server.catalog import check_gguf

    check_gguf(path)
    return path.parent, path.name


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_path: Path, *, device: str = "auto", dtype: str = "auto", n_ctx: int = 4096,
                 n_threads: int = 0, prefix_reuse: bool = True, adapters: Sequence[Mapping[str, Any]] = ()):
        self.model_path = Path(model_path)
        self.requested_device = device or "auto"
        self.requested_dtype = dtype or "auto"
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.prefix_reuse = prefix_reuse
        # config.AdapterSettings (or plain {path, scale} mappings), applied in _apply_adapters
        self.adapters = [dict(a) if isinstance(a, Mapping) else {"path": a.path, "scale": a.scale} for a in adapters]
        self.adapter_statuses: list = []  # lsp_server.adapters.AdapterStatus per adapter, after load
        self.model = None
        self.tokenizer = None
        self.device = "cpu"
        self.dtype = ""
        self.load_seconds = 0.0
        self.reused_tokens = 0  # prompt tokens served from the KV cache, over all requests
        self._cache = None  # DynamicCache holding the KV entries of self._cached
        self._cached: list[int] = []
        self._eog: set[int] = set()
        self._cache_arg = "cache"
        self._lock = threading.Lock()  # one forward pass at a time; the cache belongs to the last prompt
        self._count = lru_cache(maxsize=65536)(self._count_uncached)

    # -- loading ---------------------------------------------------------------------------------------
    def load(self) -> None:
        if self.requested_dtype not in DTYPES:
            raise ModelError(f"dtype {self.requested_dtype!r} is not one of {', '.join(DTYPES)}")
        directory, gguf_file = split_model_source(self.model_path)
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelError(f"the transformers backend needs torch and transformers: {exc} "
                             "(pip install 'infill-ls[transformers]')") from exc
        if self.n_threads > 0:
            torch.set_num_threads(self.n_threads)
        transformers.utils.logging.disable_progress_bar()  # stderr is the server's log: no progress bars
        device = self._pick_device(torch)
        dtype = self._pick_dtype(torch, device)
        started = time.monotonic()
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **kwargs)
            model = self._apply_adapters(model)
            model.to(device)
            model.eval()
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers reports load failures with many types
            raise ModelError(f"transformers {transformers.__version__} could not load {self.model_path}: "
                             f"{type(exc).__name__}: {exc}") from exc
        self.model, self.tokenizer = model, tokenizer
        self.device, self.dtype = str(device), str(dtype).removeprefix("torch.")
        self.load_seconds = time.monotonic() - started
        self._eog = self._eog_ids()
        # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name still works, with a warning)
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._reset_cache()
        log.info("loaded %s with transformers in %.2fs (device=%s, dtype=%s)", self.model_path.name,
                 self.load_seconds, self.device, self.dtype)

    def _pick_device(self, torch) -> "torch.device":
        want = self.requested_device
        if want == "auto":
            if torch.cuda.is_available():
                want = "cuda"
            elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                want = "mps"
            else:
                want = "cpu"
        try:
            device = torch.device(want)
        except RuntimeError as exc:
            raise ModelError(f"device {want!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {want!r} requested but torch {torch.__version__} sees no CUDA device")
        return device

    def _pick_dtype(self, torch, device) -> "torch.dtype":
        if self.requested_dtype != "auto":
            return getattr(torch, self.requested_dtype)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32  # CPU half precision is slow and less exact

    def _apply_adapters(self, model):
        """PEFT LoRA adapter directories ({path, scale}), checked, scaled and merged into the base weights
        (lsp_server/adapters.py). A bad adapter is reported (adapter_statuses) and the model loads without it."""
        self.adapter_statuses = []
        if not self.adapters:
            return model
        try:
            import peft  # noqa: F401
        except ImportError:
            from lsp_server.adapters import AdapterStatus

            self.adapter_statuses = [AdapterStatus(a["path"], a["scale"], "error", "the transformers backend needs "
                                                   "`peft` for adapters (pip install peft)") for a in self.adapters]
            return model
        from lsp_server.adapters import apply_peft

        model, self.adapter_statuses = apply_peft(model, self.adapters)
        return model

    def _eog_ids(self) -> set[int]:
        tok = self.tokenizer
        ids: set[int] = set()
        candidates = [tok.eos_token_id]
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        candidates += gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
        added = getattr(tok, "added_tokens_encoder", {}) or {}  # special tokens, not ordinary words
        candidates += [added[t] for t in EOG_TEXTS if t in added]
        ids.update(int(i) for i in candidates if i is not None)
        return ids

    def _require(self):
        if self.model is None or self.tokenizer is None:
            raise ModelError("the model is not loaded")
        return self.model

    # -- tokens ----------------------------------------------------------------------------------------
    # The Rust tokenizer underneath a fast tokenizer is used directly: its encode/decode only read the
    # vocabulary (count_tokens runs on the event loop beside generation), and its decode does no
    # "clean up tokenization spaces", which would change code (" ." -> ".").
    def _rust(self):
        return getattr(self.tokenizer, "backend_tokenizer", None)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Special-token strings in `text` (FIM markers, chat markers) become their single tokens."""
        self._require()
        rust = self._rust()
        if rust is not None:
            return list(rust.encode(text, add_special_tokens=add_special).ids)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, ids: list[int]) -> str:
        rust = self._rust()
        if rust is not None:
            return rust.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def _count_uncached(self, text: str) -> int:
        return len(self.tokenize(text, add_special=False))

    def is_single_token(self, text: str) -> bool:
        return len(self.tokenize(text, add_special=False)) == 1

    # -- evaluation ------------------------------------------------------------------------------------
    def _reset_cache(self) -> None:
        from transformers import DynamicCache

        try:
            self._cache = DynamicCache(config=self.model.config)
        except TypeError:  # older transformers: no config argument
            self._cache = DynamicCache()
        self._cached = []

    def _crop(self, keep: int) -> None:
        """Drop cached KV entries after the first `keep` tokens (a fresh cache where cropping is unsafe)."""
        drop = len(self._cached) - keep
        if drop <= 0:
            return
        if keep == 0 or not getattr(self._cache, "is_croppable", True):
            self._reset_cache()
            return
        self._cache.crop(-drop)  # negative: remove this many (the same meaning in transformers 4.x and 5.x)
        del self._cached[keep:]

    def _forward(self, tokens: list[int]):
        """One forward pass of `tokens` after the cached ones; returns the logits of the last token."""
        import torch

        ids = torch.tensor([tokens], dtype=torch.long, device=self.model.device)
        # the DynamicCache is updated in place
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: self._cache})
        self._cached.extend(tokens)
        return out.logits[0, -1]

    def _prefill_tokens(self, tokens: list[int], cancel: threading.Event):
        """Bring the KV cache to `tokens`; returns (logits after the last token, tokens evaluated)."""
        if len(tokens) >= self.n_ctx:
            raise BackendError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        common = 0
        if self.prefix_reuse:
            limit = min(len(self._cached), len(tokens))
            while common < limit and self._cached[common] == tokens[common]:
                common += 1
            if common == len(tokens):
                common -= 1  # re-evaluate the last token so that fresh logits exist
        self._crop(common)
        if not self.prefix_reuse:
            self._reset_cache()
        self.reused_tokens += len(self._cached)
        start = len(self._cached)
        logits = None
        for pos in range(start, len(tokens), PREFILL_CHUNK):
            if cancel.is_set():
                raise Cancelled("cancelled during prompt evaluation")
            logits = self._forward(tokens[pos : pos + PREFILL_CHUNK])
        return logits, len(tokens) - start

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        with self._lock:
            self._require()
            return self._guarded(lambda: self._prefill_tokens(self.tokenize(prompt), cancel)[1])

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        with self._lock:
            self._require()
            return self._guarded(lambda: self._generate(self.tokenize(request.prompt), request, cancel))

    def chat_prompt(self, messages) -> tuple[str, list[str]]:
        """Render messages with the tokenizer's chat template, or a plain instruction prompt without one."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return plain_instruction_prompt(messages), ["\n### Instruction", "\n### Request"]
        prompt = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return prompt, [tok.eos_token] if tok.eos_token else []

    def chat(self, request: ChatRequest, cancel: threading.Event, on_text: OnText | None = None) -> Generation:
        with self._lock:
            self._require()
            prompt, stop = self.chat_prompt(request.messages)
            gen = GenerationRequest(prompt=prompt, max_tokens=request.max_tokens, stop=(*request.stop, *stop))
            # the rendered template already holds any BOS text it wants
            return self._guarded(lambda: self._generate(self.tokenize(prompt, add_special=False), gen, cancel, on_text))

    def _guarded(self, work):
        import torch

        with torch.inference_mode():
            try:
                return work()
            except (Cancelled, BackendError, ModelError):
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report it, keep the server up
                self._reset_cache()  # its state after a failed forward pass is unknown
                raise BackendError(f"transformers generation failed: {type(exc).__name__}: {exc}") from exc

    def _generate(self, tokens: list[int], request: GenerationRequest, cancel: threading.Event,
                  on_text: OnText | None = None) -> Generation:
        room = self.n_ctx - len(tokens) - 1
        if room <= 0:
            raise BackendError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        t0 = time.monotonic()
        logits, evaluated = self._prefill_tokens(tokens, cancel)
        t1 = time.monotonic()
        try:
            text, n_gen, reason = self._decode_loop(int(logits.argmax()), request, cancel, on_text,
                                                    min(request.max_tokens, room))
        finally:
            # Keep only the prompt in the KV cache: the next prompt shares its prefix, not our output.
            self._crop(len(tokens))
        t2 = time.monotonic()
        if reason == "cancelled":
            raise Cancelled("cancelled during generation")
        return Generation(text=text, finish_reason=reason, prompt_tokens=len(tokens), evaluated_tokens=evaluated,
                          generated_tokens=n_gen, prompt_ms=(t1 - t0) * 1000, generate_ms=(t2 - t1) * 1000)

    def _decode_loop(self, nxt: int, request: GenerationRequest, cancel: threading.Event, on_text: OnText | None,
                     max_tokens: int) -> tuple[str, int, str]:
        """Greedy decoding; the same checks, in the same order, as the llama.cpp backend."""
        stops = [s for s in request.stop if s]
        generated: list[int] = []
        text = ""
        while True:
            if cancel.is_set():
                return text, len(generated), "cancelled"
            if nxt in self._eog:
                return text, len(generated), "stop"
            generated.append(nxt)
            # A token may end inside a UTF-8 character: decode shows it as U+FFFD until the rest arrives.
            text = self.detokenize(generated).rstrip("\ufffd")
            hit = _first_stop(text, stops)
            if hit is not None:
                return text[:hit], len(generated), "stop"
            if on_text is not None:
                on_text(text)
            if request.stop_at_newline and "\n" in text.lstrip("\n"):
                return text, len(generated), "newline"
            if len(generated) >= max_tokens:
                return text, len(generated), "length"
            cut = cut_at_deadline(request, text)
            if cut is not None:
                return cut, len(generated), "deadline"
            if request.stop_check is not None and text.endswith("\n") and request.stop_check(text):
                return text, len(generated), "block"
            nxt = int(self._forward([nxt]).argmax())

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "model_path": str(self.model_path),
            "loaded": self.model is not None,
            "device": self.device,
            "dtype": self.dtype,
            "n_ctx": self.n_ctx,
            "load_seconds": round(self.load_seconds, 2),
            "prefix_reuse": self.prefix_reuse,
            "cached_tokens": len(self._cached),
            "reused_tokens": self.reused_tokens,
            "adapters": [s.as_dict() for s in self.adapter_statuses],
        }
        info.update({k: v for k, v in system_info().items() if k in ("torch", "transformers")})
        return info

    def close(self) -> None:
        with self._lock:
            self.model = self.tokenizer = self._cache = None
            self._cached = []
