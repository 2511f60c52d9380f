"""Tree-sitter context engine: what goes into a FIM prompt, and whether to ask at all.

Modules: ``positions`` (LSP/str/byte/point conversions), ``languages`` (grammar
lookup, parsers, per-language node knowledge), ``tree`` (incremental document
trees), ``mode`` (skip / single-line / multi-line decision), ``budget`` (prefix
and suffix windows within token budgets) and ``extra`` (snippets from other
files and local import resolution).
"""

from .budget import Budgets, FimContext, build_context
from .extra import Chunk, local_imports, select_chunks
from .languages import get_parser, grammar_for
from .mode import Mode, decide_mode, mode_limits
from .positions import (
    byte_to_offset,
    offset_to_byte,
    offset_to_position,
    point_for_offset,
    position_to_offset,
)
from .tree import DocumentTree

__all__ = [
    "Budgets", "FimContext", "build_context",
    "Chunk", "local_imports", "select_chunks",
    "get_parser", "grammar_for",
    "Mode", "decide_mode", "mode_limits",
    "byte_to_offset", "offset_to_byte", "offset_to_position", "point_for_offset", "position_to_offset",
    "DocumentTree",
]
