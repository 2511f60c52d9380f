"""UTF-16 / str / byte / point conversions (lsp_server.context.positions)."""

import pytest

from lsp_server.context.positions import (
    byte_to_offset,
    offset_to_byte,
    offset_to_position,
    point_for_offset,
    position_to_offset,
)


def test_ascii_roundtrip():
    text = "abc\ndef\n\nxyz"
    for off in range(len(text) + 1):
        line, ch = offset_to_position(text, off)
        assert position_to_offset(text, line, ch) == off
    assert position_to_offset(text, 1, 2) == 6
    assert offset_to_position(text, 9) == (3, 0)


def test_non_ascii_bmp_counts_one_unit():
    text = "héllo wörld\nñ"
    assert position_to_offset(text, 0, 2) == 2
    assert offset_to_position(text, 11) == (0, 11)
    assert position_to_offset(text, 1, 1) == 13


def test_surrogate_pairs():
    text = "a😀b\n😀😀x"
    # 😀 is two UTF-16 units: 'b' is at character 3.
    assert position_to_offset(text, 0, 3) == 2
    assert offset_to_position(text, 2) == (0, 3)
    # character 2 is inside the pair -> start of the emoji
    assert position_to_offset(text, 0, 2) == 1
    assert position_to_offset(text, 1, 1) == 4
    assert position_to_offset(text, 1, 4) == 6
    assert position_to_offset(text, 1, 5) == 7
    assert offset_to_position(text, 7) == (1, 5)


@pytest.mark.parametrize("nl", ["\r\n", "\r", "\n"])
def test_line_endings(nl):
    text = nl.join(["first", "sécond", "", "😀end"])
    starts = [0, 5 + len(nl), 5 + len(nl) + 6 + len(nl), 5 + 6 + 3 * len(nl)]
    for i, s in enumerate(starts):
        assert position_to_offset(text, i, 0) == s
        assert offset_to_position(text, s) == (i, 0)
    # past the line end clamps to before the line break
    assert position_to_offset(text, 0, 99) == 5
    assert position_to_offset(text, 1, 99) == starts[1] + 6


def test_crlf_offset_between_cr_and_lf():
    text = "ab\r\ncd"
    assert offset_to_position(text, 3) == (0, 2)


def test_out_of_range():
    text = "one\ntwo"
    assert position_to_offset(text, 5, 0) == len(text)
    assert position_to_offset(text, -1, 3) == 0
    assert position_to_offset(text, 0, -4) == 0
    assert position_to_offset("", 0, 0) == 0
    assert position_to_offset("", 3, 3) == 0
    assert offset_to_position(text, 100) == (1, 3)
    assert offset_to_position(text, -5) == (0, 0)


def test_bytes_and_points():
    text = "aé😀\nx\r\ny"
    assert offset_to_byte(text, 0) == 0
    assert offset_to_byte(text, 2) == 3
    assert offset_to_byte(text, 3) == 7
    assert byte_to_offset(text, 7) == 3
    assert byte_to_offset(text, 5) == 2  # inside the emoji -> its start
    assert byte_to_offset(text, 10_000) == len(text)
    for off in range(len(text) + 1):
        assert byte_to_offset(text, offset_to_byte(text, off)) == off
    assert point_for_offset(text, 4) == (1, 0)
    assert point_for_offset(text, 3) == (0, 7)
    # tree-sitter rows break on \n only
    assert point_for_offset(text, 6) == (1, 2)
    assert point_for_offset(text, 7) == (2, 0)
    assert point_for_offset("a\rb", 2) == (0, 2)


def test_large_document_is_fast():
    import time

    text = "x = 1  # é\n" * 20000
    t0 = time.perf_counter()
    for i in range(0, 20000, 97):
        off = position_to_offset(text, i, 5)
        assert offset_to_position(text, off) == (i, 5)
    assert time.perf_counter() - t0 < 1.0
