"""TEST BACKEND ONLY: replays recorded raw model outputs.

Selected with a model setting `"backend": "fake"` and `"fake_outputs": "recorded.json"`. It exists so
that protocol edge cases (cancellation, supersede, post-processing of exact raw outputs) can be tested
end to end through the real server process with deterministic text. Benchmarks and the product always
use a real model.

The JSON file is a list of {"prompt_contains": str, "output": str, "delay_ms": int}: the LAST entry whose
`prompt_contains` occurs in the prompt (and whose optional `prompt_endswith` ends it) answers (so specific
entries go after general ones). `delay_ms`
simulates a slow model, in 10 ms steps that check for cancellation like a real token loop.
`raise_after_ms` (fault tests) makes the model worker raise an unexpected RuntimeError after that long,
as a crashing native library would in the middle of a generation. Code actions go through `chat`, which
answers the same way from the messages' text and streams the output in a few pieces.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from lsp_server.backends.base import ChatRequest, Generation, GenerationRequest, OnText
from lsp_server.errors import Cancelled, ModelError


class FakeBackend:
    name = "fake"

    def __init__(self, outputs_file: str):
        self.outputs_file = outputs_file
        self.entries: list[dict[str, Any]] = []
        self.calls = 0

    def load(self) -> None:
        try:
            self.entries = json.loads(Path(self.outputs_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"fake backend: cannot read recorded outputs {self.outputs_file!r}: {exc}") from exc

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    def is_single_token(self, text: str) -> bool:
        return False

    def _entry(self, prompt: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for entry in self.entries:
            if entry.get("prompt_contains", "") in prompt and prompt.endswith(entry.get("prompt_endswith", "")):
                found = entry
        return found

    def _replay(self, entry: dict[str, Any], cancel: threading.Event) -> None:
        started = time.monotonic()
        deadline = started + entry.get("delay_ms", 0) / 1000
        crash_at = started + entry["raise_after_ms"] / 1000 if "raise_after_ms" in entry else None
        while True:
            now = time.monotonic()
            if crash_at is not None and now >= crash_at:
                raise RuntimeError("fake backend: simulated crash in the middle of a generation")
            if now >= deadline:
                return
            if cancel.wait(0.01):
                raise Cancelled("cancelled")

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Generation:
        self.calls += 1
        entry = self._entry(request.prompt)
        self._replay(entry, cancel)
        text = entry.get("output", "")
        return Generation(text=text, finish_reason="stop", prompt_tokens=self.count_tokens(request.prompt),
                          evaluated_tokens=0, generated_tokens=self.count_tokens(text),
                          extra={"calls": self.calls})

    def chat(self, request: ChatRequest, cancel: threading.Event, on_text: OnText | None = None) -> Generation:
        self.calls += 1
        prompt = "\n".join(m.get("content", "") for m in request.messages)
        entry = self._entry(prompt)
        self._replay(entry, cancel)
        text = entry.get("output", "")
        if on_text is not None:
            for end in range(0, len(text), max(1, len(text) // 4)):
                on_text(text[: end + 1])
            on_text(text)
        return Generation(text=text, finish_reason="stop", prompt_tokens=self.count_tokens(prompt),
                          generated_tokens=self.count_tokens(text), extra={"calls": self.calls})

    def prefill(self, prompt: str, cancel: threading.Event) -> int:
        return 0

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "outputs": self.outputs_file, "test_only": True, "calls": self.calls}

    def close(self) -> None:
        pass
