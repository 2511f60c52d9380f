"""The llama.cpp backend's scratch sequence, on the real default model: a short stand-in prompt (the engine's
answer for a cold file, completion.cold_prompt_ms) is evaluated in sequence 1, beside the prompt that sequence 0
holds, so the full prompt's KV cache, or the part of it a warm-up has evaluated, survives the quick answer."""

from __future__ import annotations

import threading

import pytest

from lsp_server.backends.base import GenerationRequest

pytestmark = pytest.mark.model

FULL = ("<|fim_prefix|># shapes.py\nimport math\n\n\nclass Circle:\n    def __init__(self, radius: float) -> None:\n"
        "        self.radius = radius\n\n    def area(self) -> float:\n        return <|fim_suffix|>\n\n"
        "    def perimeter(self) -> float:\n        return 2 * math.pi * self.radius\n<|fim_middle|>")
SHORT = ("<|fim_prefix|>def add(a: int, b: int) -> int:\n    return <|fim_suffix|>\n\n\nprint(add(1, 2))\n"
         "<|fim_middle|>")


@pytest.fixture(scope="module")
def backend(model_path):
    from lsp_server.backends.llama_cpp import LlamaCppBackend

    b = LlamaCppBackend(model_path, n_ctx=2048, draft_tokens=4)  # the server's default settings
    b.load()
    yield b
    b.close()


def gen(backend, prompt: str, scratch: bool = False):
    request = GenerationRequest(prompt=prompt, max_tokens=16, stop=("<|endoftext|>", "<|file_sep|>"),
                                stop_at_newline=True, scratch=scratch)
    return backend.generate(request, threading.Event())


def test_a_scratch_prompt_leaves_sequence_0_in_place(backend):
    assert backend.supports_scratch
    full = gen(backend, FULL)
    assert full.evaluated_tokens == full.prompt_tokens and "pi" in full.text, full
    assert backend.uncached_tokens(FULL) == 1
    assert backend.uncached_tokens(SHORT) > 20  # what the cold check sees: most of SHORT is new

    short = gen(backend, SHORT, scratch=True)
    assert short.extra.get("scratch") is True, short
    assert short.text.strip().startswith("a + b"), short

    # sequence 0 still holds FULL: only its last token is evaluated again, and the answer is the same
    again = gen(backend, FULL)
    assert again.evaluated_tokens == 1 and again.text == full.text, (again, full)
    # sequence 1 still holds SHORT: its own prefix is reused
    short_again = gen(backend, SHORT, scratch=True)
    assert short_again.evaluated_tokens == 1 and short_again.text == short.text, short_again

    # the same prompt in sequence 0 gives the same text: the scratch sequence is an ordinary context
    plain = gen(backend, SHORT)
    assert plain.text == short.text and plain.evaluated_tokens >= plain.prompt_tokens - 2, (plain, short)


def test_prompt_rate_is_measured(backend):
    long = FULL.replace("import math\n", "import math\n" + "# a comment line to make it longer\n" * 12)
    gen(backend, long)
    assert backend.prompt_rate is not None and backend.prompt_rate > 1
