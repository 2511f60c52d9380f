"""Incrementally maintained tree-sitter tree for one open document.

The server feeds LSP content changes (already converted to str offsets) into
``apply_change``; we edit the old tree with byte offsets and points and let
tree-sitter reuse unchanged subtrees.  Reparsing is deferred until ``tree`` is
read, so a batch of changes from one didChange costs a single parse.
"""

from __future__ import annotations

import logging
import threading

from .languages import get_parser
from .positions import point_for_offset

log = logging.getLogger(__name__)


def _encode(text: str) -> bytes:
    # surrogatepass: a lone surrogate from a broken client must not kill parsing.
    return text.encode("utf-8", "surrogatepass")


def _advance_point(point: tuple[int, int], inserted: str) -> tuple[int, int]:
    """Point reached after inserting ``inserted`` at ``point`` (rows on \\n only)."""
    newlines = inserted.count("\n")
    if not newlines:
        return point[0], point[1] + len(_encode(inserted))
    tail = inserted[inserted.rfind("\n") + 1:]
    return point[0] + newlines, len(_encode(tail))


class DocumentTree:
    """Text plus its (lazily reparsed) syntax tree; ``tree`` is None without a grammar."""

    def __init__(self, text: str, grammar: str | None):
        self.grammar = grammar
        self._text = text
        self._data: bytes | None = None
        self._tree = None
        self._dirty = True
        self._lock = threading.RLock()

    # -- accessors -------------------------------------------------------
    @property
    def text(self) -> str:
        return self._text

    @property
    def data(self) -> bytes:
        """UTF-8 encoding of ``text`` (cached; tree-sitter byte offsets index it)."""
        with self._lock:
            if self._data is None:
                self._data = _encode(self._text)
            return self._data

    @property
    def tree(self):
        with self._lock:
            if self._dirty:
                self._reparse()
            return self._tree

    # -- updates ---------------------------------------------------------
    def replace_all(self, text: str) -> None:
        with self._lock:
            self._text = text
            self._data = None
            self._tree = None  # a full replacement shares nothing worth reusing
            self._dirty = True

    def apply_change(self, start: int, end: int, new_text: str) -> None:
        """Replace ``text[start:end]`` with ``new_text`` (str offsets, clamped)."""
        with self._lock:
            old = self._text
            start = max(0, min(start, len(old)))
            end = max(start, min(end, len(old)))
            if self._tree is not None:
                # Snapshots hold the current tree while a request awaits the model: edit a copy (O(1) in
                # tree-sitter), never the tree a snapshot reads. Editing it in place let a completion walk
                # nodes whose offsets no longer matched its text: a segfault (found by tests/fuzz).
                self._tree = self._tree.copy()
                start_point = point_for_offset(old, start)
                old_end_point = point_for_offset(old, end)
                start_byte = self._byte_of(old, start, start_point)
                old_end_byte = self._byte_of(old, end, old_end_point)
                self._tree.edit(
                    start_byte=start_byte,
                    old_end_byte=old_end_byte,
                    new_end_byte=start_byte + len(_encode(new_text)),
                    start_point=start_point,
                    old_end_point=old_end_point,
                    new_end_point=_advance_point(start_point, new_text),
                )
            self._text = old[:start] + new_text + old[end:]
            self._data = None
            self._dirty = True

    # -- internals -------------------------------------------------------
    @staticmethod
    def _byte_of(text: str, offset: int, point: tuple[int, int]) -> int:
        prefix = text[:offset]
        return offset if prefix.isascii() else len(_encode(prefix))

    def _reparse(self) -> None:
        self._dirty = False
        if not self.grammar:
            self._tree = None
            return
        parser = get_parser(self.grammar)
        if parser is None:
            self._tree = None
            return
        try:
            if self._tree is not None:
                self._tree = parser.parse(self.data, self._tree)
            else:
                self._tree = parser.parse(self.data)
        except Exception as exc:  # never let a parser bug break completions
            log.warning("tree-sitter parse failed for %s: %s", self.grammar, exc)
            self._tree = None
