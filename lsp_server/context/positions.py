"""Position conversions between the three coordinate systems the server juggles.

* LSP positions: (line, character) where lines end at ``\\n``, ``\\r\\n`` or ``\\r``
  and ``character`` counts UTF-16 code units.
* Python ``str`` offsets: what all context code slices with.
* tree-sitter coordinates: UTF-8 byte offsets, and Points ``(row, byte column)``
  where tree-sitter only counts ``\\n`` as a row break.

All functions are pure and never raise on out-of-range input: they clamp.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_right
from itertools import accumulate

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# The last few texts' line-start tables, keyed by object identity.  Requests
# for the same document version arrive back to back (change + completion),
# so a tiny identity cache avoids rescanning a large file for each conversion.
_CACHE_SIZE = 4
_cache: list[tuple[str, list[int]]] = []
_cache_lock = threading.Lock()


def _compute_line_starts(text: str) -> list[int]:
    if "\r" not in text:
        # split/accumulate run in C: far faster than a regex scan on big files.
        starts = [0]
        starts.extend(accumulate(len(part) + 1 for part in text.split("\n")[:-1]))
        return starts
    return [0] + [m.end() for m in _LINE_BREAK.finditer(text)]


def line_starts(text: str) -> list[int]:
    """Offsets where each LSP line starts (cached for recently seen texts)."""
    with _cache_lock:
        for cached_text, starts in _cache:
            if cached_text is text:
                return starts
    starts = _compute_line_starts(text)
    with _cache_lock:
        _cache.insert(0, (text, starts))
        del _cache[_CACHE_SIZE:]
    return starts


def _line_content_end(text: str, starts: list[int], line: int) -> int:
    """Offset of the end of ``line``'s content (before its line break)."""
    if line + 1 < len(starts):
        end = starts[line + 1]
        if end > 0 and text[end - 1] == "\n":
            end -= 1
            if end > starts[line] and text[end - 1] == "\r":
                end -= 1
        elif end > 0 and text[end - 1] == "\r":
            end -= 1
        return end
    return len(text)


def position_to_offset(text: str, line: int, character: int) -> int:
    """LSP (line, UTF-16 character) -> str offset, clamped, never raising.

    A line past the end maps to the document end; a character past the line
    end maps to the line end; a character inside a surrogate pair snaps to the
    start of that code point.
    """
    if line < 0:
        return 0
    starts = line_starts(text)
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = _line_content_end(text, starts, line)
    if character <= 0:
        return start
    segment = text[start:end]
    if segment.isascii():
        return start + min(character, len(segment))
    units = 0
    for i, ch in enumerate(segment):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > character:
            return start + i
        units += width
        if units == character:
            return start + i + 1
    return end


def offset_to_position(text: str, offset: int) -> tuple[int, int]:
    """str offset -> LSP (line, UTF-16 character)."""
    offset = max(0, min(offset, len(text)))
    starts = line_starts(text)
    line = bisect_right(starts, offset) - 1
    start = starts[line]
    # An offset between the \r and \n of a CRLF belongs to the line end.
    end = min(offset, _line_content_end(text, starts, line))
    segment = text[start:end]
    if segment.isascii():
        return line, len(segment)
    return line, len(segment) + sum(1 for ch in segment if ord(ch) > 0xFFFF)


def offset_to_byte(text: str, offset: int) -> int:
    """str offset -> UTF-8 byte offset (what tree-sitter uses)."""
    offset = max(0, min(offset, len(text)))
    prefix = text[:offset]
    if prefix.isascii():
        return offset
    return len(prefix.encode("utf-8", "surrogatepass"))


def byte_to_offset(text: str, byte: int) -> int:
    """UTF-8 byte offset -> str offset; a byte inside a character maps to its start."""
    if byte <= 0:
        return 0
    if text.isascii():
        return min(byte, len(text))
    data = text.encode("utf-8", "surrogatepass")
    if byte >= len(data):
        return len(text)
    return len(data[:byte].decode("utf-8", "ignore"))


def point_for_offset(text: str, offset: int) -> tuple[int, int]:
    """str offset -> tree-sitter Point (row, byte column).

    tree-sitter's lexer only advances rows on ``\\n``, so a lone ``\\r`` does not
    start a new row here even though it starts a new LSP line.
    """
    offset = max(0, min(offset, len(text)))
    row = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    segment = text[line_start:offset]
    column = len(segment) if segment.isascii() else len(segment.encode("utf-8", "surrogatepass"))
    return row, column
