"""The one backend interface that the completion engine talks to.

A backend turns a finished prompt string into generated text. Its `generate` is blocking and runs on
the engine's single model worker thread; it checks `cancel` between tokens (and between prompt chunks)
so that a superseded or cancelled request stops within one token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int
    stop: Sequence[str] = ()
    deadline: float | None = None  # time.monotonic() after which generation ends at the next line end
    stop_at_newline: bool = False  # single-line mode: the first newline ends generation
    # multi-line mode: called with the text so far at each line end; True ends generation ("block")
    # because post-processing would drop everything after it (postprocess.block_finished)
    stop_check: Callable[[str], bool] | None = None
    # Optional raw parts of a FIM prompt, for backends with a native infill API (llama-server /infill,
    # OpenAI/Ollama `suffix`). None: the backend uses `prompt`, the rendered template.
    prefix: str | None = None
    suffix: str | None = None
    extra: tuple = ()  # prompts.ExtraFile(path, text) from other files
    # A short stand-in prompt for a file whose context is not evaluated yet (engine: completion.cold_prompt_ms):
    # backends that can keep their evaluated prompt (`supports_scratch`) evaluate this one beside it, so the
    # full prompt's KV cache survives; others treat it as any prompt.
    scratch: bool = False


def cut_at_deadline(request: GenerationRequest, text: str) -> str | None:
    """The text to return when the request's time budget is spent: up to the last whole line (the
    partial line after it is dropped), or None to go on (the budget is not spent, or no line is whole
    yet: the first line is always finished)."""
    if request.deadline is None or time.monotonic() <= request.deadline:
        return None
    end = text.rfind("\n")
    if end < 0 or not text[:end].strip():
        return None
    return text[: end + 1]


@dataclass(frozen=True)
class ChatRequest:
    """A chat-style request (code actions). Messages are {"role": system|user|assistant, "content": str}."""

    messages: Sequence[dict[str, str]]
    max_tokens: int = 512
    stop: Sequence[str] = ()


OnText = Callable[[str], None]  # streaming: called with the text generated so far


@dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length | deadline | cancelled | newline
    prompt_tokens: int = 0
    evaluated_tokens: int = 0  # prompt tokens not found in the KV cache, i.e. actually computed
    generated_tokens: int = 0
    prompt_ms: float = 0.0
    generate_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def load(self) -> None:
        """Load the model (blocking). Raises ModelError with a user-facing message."""

    def count_tokens(self, text: str) -> int: ...

    def is_single_token(self, text: str) -> bool: ...

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation: ...

    def chat(self, request: ChatRequest, cancel: threading.Event, on_text: OnText | None = None) -> Generation:
        """Instruct models: the model's own chat template; base models: a plain instruction prompt."""

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        """Evaluate a prompt into the KV cache without generating; returns tokens evaluated."""

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
