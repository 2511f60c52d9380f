"""Decide whether (and how much) to complete at a cursor position.

SKIP avoids spending a model call where a suggestion would only get in the way
(mid-identifier, mid-word in prose, a line with plenty of code to the right).
MULTI is for an empty line that opens an empty block or function body, where a
whole body is wanted; everything else is SINGLE (finish the current line).
Works with a tree-sitter tree when there is one, and on plain text otherwise.
"""

from __future__ import annotations

import enum
import re

from .languages import spec_for
from .positions import offset_to_byte


class Mode(str, enum.Enum):
    SKIP = "skip"
    SINGLE = "single"
    MULTI = "multi"


_LIMITS = {
    Mode.SKIP: {"max_tokens": 0, "stop": []},
    Mode.SINGLE: {"max_tokens": 48, "stop": ["\n"]},
    Mode.MULTI: {"max_tokens": 160, "stop": []},
}


def mode_limits(mode: Mode) -> dict:
    """Generation limits for a mode (a fresh dict, callers may mutate it)."""
    limits = _LIMITS[Mode(mode)]
    return {"max_tokens": limits["max_tokens"], "stop": list(limits["stop"])}


# Characters allowed right of the cursor without counting as "code to the right":
# auto-inserted closers and separators the completion is expected to sit before.
_CLOSERS = set(")]}>'\"`;:,")
_MAX_RIGHT_CHARS = 4

_BRACE = ("javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "csharp", "php")
_HEADER_RES: dict[str | None, re.Pattern] = {
    "python": re.compile(r":\s*$"),
    "lua": re.compile(r"(\b(do|then|else|repeat)|\bfunction\b.*\))\s*$"),
    "ruby": re.compile(
        r"(\b(do|then|else|begin)(\s*\|[^|]*\|)?|\{(\s*\|[^|]*\|)?)\s*$"
        r"|^\s*(def|class|module|if|unless|while|until|case|begin)\b(?!.*\bend\s*$)"
    ),
    "bash": re.compile(r"(\b(then|do|else)|\{)\s*$"),
    None: re.compile(r"(:|\{|\bdo|\bthen)\s*$"),
}
for _g in _BRACE:
    _HEADER_RES[_g] = re.compile(r"\{\s*$")
_PY_COMPOUND = re.compile(r"\s*(?:async\s+)?(?:def|class|if|elif|else|for|while|try|except|finally|with|match|case)\b")
_CLOSING_LINE = re.compile(r"^\s*(\}|\)|\]|end\b|fi\b|done\b|esac\b|else\b|elif\b|elsif\b|except\b|finally\b)")

# Line-comment markers for the plain-text string/comment scan.
_LINE_COMMENTS = {
    "python": ("#",), "ruby": ("#",), "bash": ("#",), "lua": ("--",), "php": ("//", "#"),
    None: ("#", "//"),
}


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _line_bounds(text: str, offset: int) -> tuple[int, int]:
    """(start, content end) of the LSP line containing ``offset``."""
    if "\r" not in text:  # the common case: avoid scanning for a \r that is not there
        start = text.rfind("\n", 0, offset) + 1
        end = text.find("\n", offset)
        return start, len(text) if end == -1 else end
    start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    ends = [p for p in (text.find("\n", offset), text.find("\r", offset)) if p != -1]
    return start, min(ends) if ends else len(text)


def _root(tree):
    # Accept a DocumentTree or a tree_sitter.Tree.
    if tree is None:
        return None
    inner = getattr(tree, "tree", None)
    if inner is not None and not hasattr(tree, "root_node"):
        tree = inner
    return getattr(tree, "root_node", None)


def _tree_prose(root, byte: int, grammar: str | None) -> bool | None:
    """True if the cursor is inside a string/comment per the tree; None = unsure."""
    spec = spec_for(grammar)
    if spec is None or root is None:
        return None
    node = root.descendant_for_byte_range(max(byte - 1, 0), byte)
    unsure = False
    depth = 0
    while node is not None and depth < 6:
        if node.type in spec.comments and node.start_byte < byte <= node.end_byte:
            return True
        if node.type in spec.strings and node.start_byte < byte < node.end_byte:
            return True
        if node.is_error or node.is_missing:
            unsure = True
        node = node.parent
        depth += 1
    return None if unsure else False


def _scan_prose(left: str, grammar: str | None) -> bool:
    """Plain-text guess: is the end of ``left`` inside a string or a line comment?"""
    markers = _LINE_COMMENTS.get(grammar, ("//",))
    quote = None
    i = 0
    n = len(left)
    while i < n:
        ch = left[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"`" or (ch == "'" and grammar != "rust"):
            quote = ch
        elif any(left.startswith(m, i) for m in markers):
            return True
        i += 1
    return quote is not None


def _prev_line_end(text: str, line_start: int) -> int:
    """End of the content of the line before the one starting at ``line_start``."""
    end = line_start - 1
    if end > 0 and text[end] == "\n" and text[end - 1] == "\r":
        end -= 1
    return end


def _block_header_line(text: str, line_start: int) -> tuple[str, int] | None:
    """The previous non-empty line and its indentation width, if there is one."""
    while line_start > 0:
        end = _prev_line_end(text, line_start)
        start, _ = _line_bounds(text, end)
        line = text[start:end]
        if line.strip():
            return line, len(line) - len(line.lstrip())
        line_start = start
    return None


def _next_nonempty(text: str, line_end: int) -> str | None:
    pos = line_end
    while pos < len(text):
        pos += 2 if text.startswith("\r\n", pos) else 1
        start, end = _line_bounds(text, pos)
        line = text[start:end]
        if line.strip():
            return line
        pos = end
    return None


def _strip_trailing_comment(line: str, grammar: str | None) -> str:
    markers = _LINE_COMMENTS.get(grammar, ("//",))
    for m in markers:
        idx = line.find(m)
        # Only strip when the marker is not inside a string (cheap check: no quotes after it).
        if idx > 0 and not any(q in line[idx:] for q in "\"'`"):
            line = line[:idx]
    return line.rstrip()


def _empty_block(root, byte: int, grammar: str | None) -> bool:
    spec = spec_for(grammar)
    if spec is None or root is None:
        return False
    node = root.descendant_for_byte_range(byte, byte)
    depth = 0
    while node is not None and depth < 3:
        if node.type in spec.blocks and node.start_byte < byte < node.end_byte:
            return not any(c.type not in spec.comments for c in node.named_children)
        node = node.parent
        depth += 1
    return False


def decide_mode(text: str, offset: int, grammar: str | None, tree=None) -> Mode:
    offset = max(0, min(offset, len(text)))
    line_start, line_end = _line_bounds(text, offset)
    left = text[line_start:offset]
    right = text[offset:line_end]

    root = _root(tree)
    byte = offset_to_byte(text, offset) if root is not None else 0
    code_right = (right and _is_word(right[0])) or \
        sum(1 for c in right if not c.isspace() and c not in _CLOSERS) > _MAX_RIGHT_CHARS
    if code_right and not left.strip():
        # In the indentation before a line of code: whole lines are inserted above it (how many is
        # unknown; post-processing stops where the model rejoins the code below). Skip only in
        # strings and comments (a docstring's text), where that would be prose.
        prose = _tree_prose(root, byte, grammar) if root is not None else None
        if prose:
            return Mode.SKIP
        return Mode.MULTI
    # Mid-identifier: completing would splice into an existing word.
    if right and _is_word(right[0]):
        return Mode.SKIP
    # Real code to the right: an insertion is unlikely to be wanted.
    if code_right:
        return Mode.SKIP

    prose = _tree_prose(root, byte, grammar) if root is not None else None
    if prose is None:
        prose = _scan_prose(left, grammar)
    if prose:
        # In strings and comments a suggestion mid-word is noise; after a space,
        # an opening quote or punctuation, a short continuation can help.
        return Mode.SKIP if left and _is_word(left[-1]) else Mode.SINGLE

    if not left.strip() and not right.strip():
        if _opens_empty_block(text, line_start, grammar, _next_nonempty(text, line_end)):
            return Mode.MULTI
        if root is not None and _empty_block(root, byte, grammar):
            return Mode.MULTI
    elif left.strip() and not right.strip():
        # At the end of a block header whose body is still empty (``for x in xs:|``): the body is wanted.
        # In Python whatever follows a header's colon is the next line(s) (a single-line completion
        # would be empty: its first character is a line break), so the same holds with a body below.
        pattern = _HEADER_RES.get(grammar, _HEADER_RES[None])
        if pattern.search(_strip_trailing_comment(left, grammar)):
            if grammar == "python":
                return Mode.MULTI if _PY_COMPOUND.match(left) else Mode.SINGLE
            nxt = _next_nonempty(text, line_end)
            indent = len(left) - len(left.lstrip())
            if nxt is None or _CLOSING_LINE.match(nxt) or len(nxt) - len(nxt.lstrip()) <= indent:
                return Mode.MULTI
    return Mode.SINGLE


def _opens_empty_block(text: str, line_start: int, grammar: str | None, nxt: str | None) -> bool:
    """The previous non-empty line opens a block and ``nxt`` (the next code line) is not in its body."""
    header = _block_header_line(text, line_start)
    if header is None:
        return False
    line, indent = header
    pattern = _HEADER_RES.get(grammar, _HEADER_RES[None])
    if not pattern.search(_strip_trailing_comment(line, grammar)):
        return False
    # The block is empty unless the next code line is indented deeper.
    return nxt is None or bool(_CLOSING_LINE.match(nxt)) or len(nxt) - len(nxt.lstrip()) <= indent
