"""cut_at_deadline: what a generation returns once its time budget is spent."""

import time

from lsp_server.backends.base import GenerationRequest, cut_at_deadline


def request(deadline):
    return GenerationRequest(prompt="", max_tokens=10, deadline=deadline)


def test_before_the_deadline_or_without_one_generation_goes_on():
    assert cut_at_deadline(request(None), "a\nb\nc") is None
    assert cut_at_deadline(request(time.monotonic() + 60), "a\nb\nc") is None


def test_after_the_deadline_the_partial_line_is_dropped():
    past = time.monotonic() - 1
    assert cut_at_deadline(request(past), "x = 1\ny = 2\nz = f(") == "x = 1\ny = 2\n"
    assert cut_at_deadline(request(past), "x = 1\n") == "x = 1\n"


def test_the_first_line_is_always_finished():
    past = time.monotonic() - 1
    assert cut_at_deadline(request(past), "x = compute(a,") is None
    assert cut_at_deadline(request(past), "\n\n    x = compute(") is None  # only blank lines are whole
