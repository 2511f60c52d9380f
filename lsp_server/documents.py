"""Open documents: uri -> text, version, language and an incrementally updated syntax tree.

The server keeps its own mirror of each document (pygls' workspace applies the same edits) because the
tree-sitter tree must be edited with the exact byte ranges of every change before it is reparsed.
Requests work on a `Snapshot`: immutable text and version, so a result computed for an old version can
be recognised and dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from lsp_server.context import DocumentTree, grammar_for, position_to_offset


@dataclass(frozen=True)
class Snapshot:
    uri: str
    version: int
    text: str
    language_id: str
    grammar: str | None
    tree: Any  # tree_sitter.Tree or None; valid until the next change to this document

    @property
    def path(self) -> str:
        return uri_to_path(self.uri)


def uri_to_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return uri


MAX_PARSED_CHARS = 1_000_000  # larger documents are completed without a syntax tree


class Document:
    def __init__(self, uri: str, language_id: str, version: int, text: str):
        self.uri = uri
        self.language_id = language_id
        self.version = version
        grammar = grammar_for(language_id, uri_to_path(uri))
        self.tree = DocumentTree(text, grammar)

    @property
    def text(self) -> str:
        return self.tree.text

    def apply(self, version: int, changes: list[Any]) -> None:
        """Apply LSP content changes in order (each range refers to the text after the previous one)."""
        for change in changes:
            rng = getattr(change, "range", None)
            if rng is None:
                self.tree.replace_all(change.text)
                continue
            text = self.tree.text
            start = position_to_offset(text, rng.start.line, rng.start.character)
            end = position_to_offset(text, rng.end.line, rng.end.character)
            if end < start:
                start, end = end, start
            self.tree.apply_change(start, end, change.text)
        self.version = version

    def snapshot(self) -> Snapshot:
        text = self.tree.text
        if len(text) > MAX_PARSED_CHARS:
            # Parsing a 10 MB file takes tree-sitter 8-25 s here (a broken one the longest), on every
            # first request after a change: such files get plain-text context instead (tests/fuzz).
            return Snapshot(self.uri, self.version, text, self.language_id, None, None)
        return Snapshot(self.uri, self.version, text, self.language_id, self.tree.grammar, self.tree.tree)


class DocumentStore:
    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self.recent: list[str] = []  # most recently edited last; feeds other-file context

    def open(self, uri: str, language_id: str, version: int, text: str) -> Document:
        doc = Document(uri, language_id, version, text)
        self._docs[uri] = doc
        self._touch(uri)
        return doc

    def change(self, uri: str, version: int, changes: list[Any]) -> Document | None:
        doc = self._docs.get(uri)
        if doc is None:
            return None
        doc.apply(version, changes)
        self._touch(uri)
        return doc

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def others(self, uri: str, limit: int = 8) -> list[Document]:
        """Other open documents, most recently edited first."""
        out = []
        for other in reversed(self.recent):
            if other != uri and other in self._docs:
                out.append(self._docs[other])
            if len(out) >= limit:
                break
        return out

    def _touch(self, uri: str) -> None:
        if self.recent and self.recent[-1] == uri:
            return
        if uri in self.recent:
            self.recent.remove(uri)
        self.recent.append(uri)
        del self.recent[:-64]


def workspace_root_from(uri_or_path: str | None) -> str | None:
    if not uri_or_path:
        return None
    path = uri_to_path(uri_or_path)
    return path if os.path.isdir(path) else None
