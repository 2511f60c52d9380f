"""Build the FIM prefix/suffix for a cursor within token budgets.

The prefix is ``header + window``:

* ``window`` is the document text from ``prefix_start`` up to the cursor.  Its
  start is aligned to multiples of ``window_step_lines`` lines so it does not
  move while the user types: consecutive prompts then share a long common
  prefix and the model server can reuse its KV cache.
* ``header`` keeps what matters from before the window: the file's imports,
  the header lines of definitions enclosing the window start, and far-away
  definitions collapsed to their signatures (nearest first).  It depends only
  on the window start and the text before it, so it is as stable as the window.

The suffix is the rest of the cursor line plus following lines up to the end
of the enclosing scope, capped by ``suffix_tokens`` and cut at line boundaries.

Everything works without a tree (plain lines and indentation).  Token counts
go through ``count_tokens`` once per distinct line (memoised), never on whole
windows, because the real counter runs the model tokenizer.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .languages import LanguageSpec, get_parser, spec_for
from .mode import Mode, decide_mode

# The header (imports, scope headers, signatures) may use at most this share
# of the prefix budget; the rest always goes to nearby code.
_HEADER_SHARE = 4
# A container (class, impl, namespace) collapsed far away lists at most this
# many member signatures.
_MAX_MEMBERS = 24
# At most this many far-away definitions are considered for signatures, and
# the import scan stops this many top-level nodes after the last import:
# bounds the work on huge files (the budget is spent long before anyway).
_MAX_SIG_TRIES = 48
_IMPORT_SCAN = 64
# Long-line fallback: when the cursor line alone exceeds the budget its cut
# point moves in steps of this many characters (stability again).
_CHAR_STEP = 64
# A rest-of-line longer than this may be cut when it is over the suffix budget.
_LONG_REST_CHARS = 2000
# Plain-text mode only looks for imports in the first lines of a file.
_PLAIN_IMPORT_LINES = 300
# Plain-text enclosing-header search gives up after this many lines.
_PLAIN_SCOPE_LINES = 2000

_PLAIN_IMPORT = re.compile(
    r"^(import\s|from\s+\S+\s+import\s|#\s*include\b|using\s|require(_relative)?\b|use\s|package\s"
    r"|local\s+\w+\s*=\s*require\b|source\s|const\s+\w+\s*=\s*require\b)"
)
_CLOSER = re.compile(r"^\s*(\}|\)|\]|end\b|fi\b|done\b|esac\b)")
_INDENT_SENSITIVE = frozenset({"python"})


@dataclass(frozen=True)
class Budgets:
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    extra_tokens: int = 512
    window_step_lines: int = 32


@dataclass(frozen=True)
class FimContext:
    prefix: str
    suffix: str
    mode: Mode
    prefix_start: int  # doc offset where the window (after the header) starts
    suffix_end: int  # doc offset where the suffix ends
    header: str  # far-away text kept; already at the start of ``prefix``


# -- token counting ---------------------------------------------------------

@lru_cache(maxsize=1 << 16)
def _memo_count(count_tokens: Callable[[str], int], segment: str) -> int:
    return count_tokens(segment)


def _counter(count_tokens: Callable[[str], int]) -> Callable[[str], int]:
    try:
        hash(count_tokens)
    except TypeError:
        return count_tokens
    return lambda s: _memo_count(count_tokens, s) if s else 0


# -- text helpers -----------------------------------------------------------

class _Text:
    """LSP-line navigation over a str without indexing the whole document."""

    __slots__ = ("text", "cr")

    def __init__(self, text: str):
        self.text = text
        self.cr = "\r" in text

    def line_start(self, pos: int) -> int:
        t = self.text
        if not self.cr:
            return t.rfind("\n", 0, pos) + 1
        start = max(t.rfind("\n", 0, pos), t.rfind("\r", 0, pos)) + 1
        if 0 < start < len(t) and start == pos and t[start - 1] == "\r" and t[start:start + 1] == "\n":
            return self.line_start(pos - 1)  # pos sits inside a CRLF
        return start

    def content_end(self, pos: int) -> int:
        t = self.text
        end = t.find("\n", pos)
        end = len(t) if end == -1 else end
        if self.cr:
            cr = t.find("\r", pos, end)
            if cr != -1:
                end = cr
        return end

    def next_line(self, content_end: int) -> int:
        """Start of the line after the one whose content ends at ``content_end``."""
        t = self.text
        if t.startswith("\r\n", content_end):
            return content_end + 2
        return min(content_end + 1, len(t))

    def prev_line(self, line_start: int) -> int:
        """Start of the line before the one starting at ``line_start`` (> 0)."""
        end = line_start - 1
        if end > 0 and self.text[end] == "\n" and self.text[end - 1] == "\r":
            end -= 1
        return self.line_start(end)

    def line_number(self, pos: int) -> int:
        t = self.text
        n = t.count("\n", 0, pos)
        if self.cr:
            n += t.count("\r", 0, pos) - t.count("\r\n", 0, pos)
        return n


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _normalise(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n") if "\r" in s else s


# Encoded documents, keyed by identity: a 10k-line file should not be
# re-encoded for each of the several requests made for one version.
_data_cache: list[tuple[str, bytes]] = []
_data_lock = threading.Lock()


def _encoded(text: str) -> bytes:
    with _data_lock:
        for t, d in _data_cache:
            if t is text:
                return d
    data = text.encode("utf-8", "surrogatepass")
    with _data_lock:
        _data_cache.insert(0, (text, data))
        del _data_cache[4:]
    return data


def _resolve_tree(tree, text: str):
    """(root node, utf-8 bytes) from a DocumentTree, a Tree, or None."""
    if tree is None:
        return None, None
    if hasattr(tree, "root_node"):
        return tree.root_node, _encoded(text)
    inner = getattr(tree, "tree", None)
    if inner is None or getattr(tree, "text", None) != text:
        # A DocumentTree for another version of the text would mislead us.
        return None, None
    return inner.root_node, tree.data


def _byte_at(text: str, offset: int) -> int:
    prefix = text[:offset]
    return offset if prefix.isascii() else len(prefix.encode("utf-8", "surrogatepass"))


# -- syntax helpers ---------------------------------------------------------

class _Syntax:
    """Tree-backed queries used by both the header and the suffix."""

    def __init__(self, root, data: bytes, spec: LanguageSpec, grammar: str):
        self.root = root
        self.data = data
        self.spec = spec
        self.grammar = grammar
        self.cr = b"\r" in data

    # byte-level line helpers (headers are sliced straight out of the bytes)
    def line_start(self, pos: int) -> int:
        d = self.data
        s = d.rfind(b"\n", 0, pos)
        if self.cr:
            s = max(s, d.rfind(b"\r", 0, pos))
        return s + 1

    def content_end(self, pos: int) -> int:
        d = self.data
        e = d.find(b"\n", pos)
        e = len(d) if e == -1 else e
        if self.cr:
            c = d.find(b"\r", pos, e)
            if c != -1:
                e = c
        return e

    def lines(self, start: int, end: int) -> str:
        """Full lines covering bytes [start, end), normalised, newline-terminated."""
        a = self.line_start(start)
        b = self.content_end(max(end - 1, start))
        return _normalise(self.data[a:b].decode("utf-8", "replace")).rstrip() + "\n"

    def unwrap(self, node, depth: int = 0):
        """The definition a top-level/member node is or wraps, else None."""
        spec = self.spec
        if node.type in spec.definitions:
            return node
        if node.type in spec.wrappers and depth < 3:
            for child in node.named_children:
                found = self.unwrap(child, depth + 1)
                if found is not None:
                    return found
        return None

    def header_end(self, node) -> int:
        """Byte where ``node``'s signature ends (just past `{` for brace bodies)."""
        body = node.child_by_field_name("body")
        if body is not None:
            if self.data[body.start_byte:body.start_byte + 1] == b"{":
                return body.start_byte + 1
            prev = body.prev_sibling
            while prev is not None and prev.type in self.spec.comments:
                prev = prev.prev_sibling
            if prev is not None:
                return prev.end_byte
            return body.start_byte
        for name in ("parameters", "superclass", "name"):
            part = node.child_by_field_name(name)
            if part is not None:
                return part.end_byte
        return min(node.end_byte, self.content_end(node.start_byte))

    def header_text(self, node, start=None) -> str:
        return self.lines(node.start_byte if start is None else start, self.header_end(node))

    def enclosing(self, lookup: int, before: int | None = None, max_column: int | None = None):
        """Definitions containing byte ``lookup``, outermost first.

        ``before``: keep only those starting before this byte.  ``max_column``:
        for indentation-scoped languages, keep only definitions indented less
        than the cursor column (a blank line after a body is outside it).
        """
        target = self.root.descendant_for_byte_range(lookup, lookup)
        chain = []
        # Root to target with child_with_descendant, not target to root with .parent: tree-sitter finds a
        # parent by walking down from the root, so the upward walk is quadratic in depth, and error recovery
        # on a broken file nests thousands of levels deep (a 10 MB file hung for minutes: tests/fuzz).
        node = self.root
        while node is not None:
            if node.type in self.spec.definitions:
                ok = before is None or node.start_byte < before
                if max_column is not None and node.start_point[1] >= max_column:
                    ok = False
                if ok:
                    chain.append(node)
            if target is None or node.id == target.id:
                break
            node = node.child_with_descendant(target)
        return chain

    def collapse(self, node, start, with_members: bool) -> str:
        """``node`` reduced to its signature (plus member signatures for containers)."""
        head = self.header_text(node, start)
        style = self.spec.collapse
        if with_members and node.type in self.spec.containers:
            members = []
            body = node.child_by_field_name("body")
            for child in (body.named_children if body is not None else ()):
                inner = self.unwrap(child)
                if inner is not None and inner.id != node.id:
                    members.append(self.collapse(inner, child.start_byte, False))
                    if len(members) >= _MAX_MEMBERS:
                        break
            if members:
                tail = ""
                if style != "python":
                    last = self.lines(node.end_byte - 1, node.end_byte)
                    if _CLOSER.match(last) and len(last.strip()) <= 8:
                        tail = last
                return head + "".join(members) + tail
        line = head.rstrip("\n")
        if style == "python":
            return line + (" ...\n" if line.endswith(":") else "\n")
        if line.endswith("{"):
            return line + " ... }\n"
        if style == "end":
            return line + " ... end\n"
        return line + " ...\n"


# -- header -----------------------------------------------------------------

def _tree_header(syn: _Syntax, text: str, start: int, start_byte: int, cursor_byte: int,
                 cap: int, count: Callable[[str], int]) -> tuple[str, int]:
    data = syn.data
    # Definitions enclosing the first code of the window are what the window lacks.
    probe = start_byte
    while probe < cursor_byte and data[probe:probe + 1].isspace():
        probe += 1
    chain = syn.enclosing(probe, before=start_byte)

    pieces: list[tuple[int, str]] = []
    used = 0

    # 1. Enclosing headers, innermost first when they do not all fit.
    heads = [(d.start_byte, syn.header_text(d)) for d in chain]
    kept = []
    for pos, h in reversed(heads):
        t = _count_lines(h, count)
        if used + t > cap:
            break
        used += t
        kept.append((pos, h))
    pieces.extend(kept)
    chain = [d for d in chain if any(d.start_byte == p for p, _ in kept)]

    # 2. Imports: top level, file order, scanning forward from the top; stop
    # well after the last import seen so a huge file is not walked end to end.
    spec = syn.spec
    child = syn.root.child(0) if syn.root.child_count else None
    since_import = 0
    while child is not None and child.start_byte < start_byte and since_import < _IMPORT_SCAN:
        if child.type in spec.imports or (
            child.type in spec.import_calls and spec.import_pattern is not None
            and spec.import_pattern.match(data[child.start_byte:child.start_byte + 200].decode("utf-8", "ignore"))
        ):
            since_import = 0
            if child.end_byte <= start_byte:
                h = syn.lines(child.start_byte, child.end_byte)
                t = _count_lines(h, count)
                if used + t > cap:
                    break  # keep a contiguous run of imports: stable and readable
                used += t
                pieces.append((child.start_byte, h))
        else:
            since_import += 1
        child = child.next_sibling

    # Top-level definitions before the window, nearest first (walk backwards).
    candidates = []
    # py-tree-sitter segfaults in first_child_for_byte when no child ends after the byte (a cursor past
    # the last node, found by tests/fuzz): ask only when one does.
    last = syn.root.child(syn.root.child_count - 1) if syn.root.child_count else None
    child = syn.root.first_child_for_byte(start_byte) if last is not None and last.end_byte > start_byte else None
    child = child.prev_sibling if child is not None else (
        syn.root.child(syn.root.child_count - 1) if syn.root.child_count else None)
    while child is not None and len(candidates) < _MAX_SIG_TRIES:
        if child.end_byte <= start_byte:
            inner = syn.unwrap(child)
            if inner is not None:
                candidates.append((child, inner, True))
        child = child.prev_sibling

    # 3. Members of each enclosing definition that lie before the window.
    for d in chain:
        body = d.child_by_field_name("body")
        if body is None:
            continue
        head_end = syn.header_end(d)
        for child in body.named_children:
            if child.start_byte >= start_byte:
                break
            if child.start_byte >= head_end and child.end_byte <= start_byte:
                inner = syn.unwrap(child)
                if inner is not None:
                    candidates.append((child, inner, True))

    # Nearest definitions first: they are the likeliest to be referenced.
    candidates.sort(key=lambda c: c[0].start_byte, reverse=True)
    for outer, inner, members in candidates[:_MAX_SIG_TRIES]:
        if cap - used < 4:
            break
        sig = syn.collapse(inner, outer.start_byte, members)
        t = _count_lines(sig, count)
        if used + t > cap and members:
            sig = syn.collapse(inner, outer.start_byte, False)
            t = _count_lines(sig, count)
        if used + t > cap:
            continue
        used += t
        pieces.append((outer.start_byte, sig))

    pieces.sort(key=lambda p: p[0])
    return "".join(p for _, p in pieces), used


def _plain_header(tx: _Text, start: int, cursor: int, cap: int,
                  count: Callable[[str], int]) -> tuple[str, int]:
    text = tx.text
    pieces: list[tuple[int, str]] = []
    used = 0
    # Enclosing headers by indentation: lines above with less indentation.
    pos = start
    while pos < cursor:
        end = tx.content_end(pos)
        if text[pos:end].strip():
            break
        pos = tx.next_line(end)
    first = text[pos:tx.content_end(pos)] if pos < cursor else ""
    level = _indent(first)
    heads = []
    line = start
    steps = 0
    while level > 0 and line > 0 and steps < _PLAIN_SCOPE_LINES:
        line = tx.prev_line(line)
        steps += 1
        content = text[line:tx.content_end(line)]
        if content.strip() and _indent(content) < level and not _CLOSER.match(content):
            heads.append((line, content.rstrip() + "\n"))
            level = _indent(content)
    for pos_, h in heads:  # innermost first
        t = _count_lines(h, count)
        if used + t > cap:
            break
        used += t
        pieces.append((pos_, h))
    # Imports near the top of the file.
    line = 0
    for _ in range(_PLAIN_IMPORT_LINES):
        if line >= start:
            break
        end = tx.content_end(line)
        content = text[line:end]
        if _PLAIN_IMPORT.match(content):
            h = content.rstrip() + "\n"
            t = _count_lines(h, count)
            if used + t > cap:
                break
            used += t
            pieces.append((line, h))
        if end >= len(text):
            break
        line = tx.next_line(end)
    pieces.sort(key=lambda p: p[0])
    return "".join(p for _, p in pieces), used


def _count_lines(s: str, count: Callable[[str], int]) -> int:
    return sum(count(line) for line in s.splitlines(keepends=True))


# -- prefix window ----------------------------------------------------------

def _window(tx: _Text, offset: int, cur_start: int, cur_tokens: int, budget: int,
            count: Callable[[str], int]) -> tuple[list[tuple[int, int]], bool]:
    """Walk lines up from the cursor while they fit in ``budget``.

    Returns [(line start, cumulative tokens from it to the cursor)] nearest
    first, and whether the walk reached the top of the file.
    """
    text = tx.text
    walked = []
    total = cur_tokens
    pos = cur_start
    while pos > 0:
        prev = tx.prev_line(pos)
        t = count(text[prev:pos])
        if total + t > budget:
            return walked, False
        total += t
        pos = prev
        walked.append((pos, total))
    return walked, True


def _aligned_start(walked, cur_start: int, cur_line: int, budget: int, step: int) -> tuple[int, int]:
    """Earliest step-aligned line start within ``budget``: (offset, line number)."""
    best = None
    for i, (pos, total) in enumerate(walked):
        if total > budget:
            break
        line = cur_line - 1 - i
        if line % step == 0:
            best = (pos, line)
    if best is not None:
        return best
    # No aligned line fits: take what fits (rare; small budgets or long lines).
    fitting = [(p, cur_line - 1 - i) for i, (p, t) in enumerate(walked) if t <= budget]
    return fitting[-1] if fitting else (cur_start, cur_line)


def _tokens_from(walked, start: int, cur_tokens: int) -> int:
    for pos, total in walked:
        if pos == start:
            return total
    return cur_tokens


def _long_line_prefix(text: str, cur_start: int, offset: int, budget: int,
                      count_tokens: Callable[[str], int]) -> int:
    """Start of the longest tail of the cursor line that fits (64-char aligned)."""
    lo, hi = 0, (offset - cur_start) // _CHAR_STEP + 1  # steps to skip
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[min(cur_start + mid * _CHAR_STEP, offset):offset]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return min(cur_start + lo * _CHAR_STEP, offset)


# -- suffix -----------------------------------------------------------------

def _scope_end_tree(syn: _Syntax, text: str, tx: _Text, offset: int, cursor_byte: int,
                    left: str) -> int | None:
    """Document offset where the cursor's enclosing scope ends (tree-based)."""
    data = syn.data
    lookup, max_col = cursor_byte, None
    if left.strip():
        # The character before the cursor: at a line end the cursor byte itself
        # may already be past the end of the innermost scope.
        lookup = max(cursor_byte - 1, 0)
    elif syn.grammar in _INDENT_SENSITIVE:
        # On a blank/indent-only line the block may have ended above; look at
        # the last code before the cursor and judge scope by indentation.
        q = cursor_byte
        while q > 0 and data[q - 1:q].isspace():
            q -= 1
        lookup, max_col = max(q - 1, 0), len(left)
    chain = syn.enclosing(lookup, max_column=max_col)
    if chain:
        end_byte = chain[-1].end_byte
    else:
        # Node.first_child_for_byte segfaults in py-tree-sitter 0.26 when no child qualifies: scan instead.
        child = next((c for c in syn.root.children if c.end_byte > cursor_byte), None)
        if child is None:
            return None
        end_byte = child.end_byte
    if end_byte <= cursor_byte:
        return None
    return offset + len(data[cursor_byte:end_byte].decode("utf-8", "ignore"))


def _scope_end_plain(tx: _Text, offset: int, cur_start: int, left: str) -> int | None:
    text = tx.text
    cur_end = tx.content_end(offset)
    line_text = text[cur_start:cur_end]
    level = _indent(line_text) if line_text.strip() else len(left)
    if level == 0:
        return None
    pos = cur_end
    while pos < len(text):
        nxt = tx.next_line(pos)
        end = tx.content_end(nxt)
        content = text[nxt:end]
        if content.strip() and _indent(content) < level:
            return end if _CLOSER.match(content) else pos
        pos = end
        if nxt >= len(text):
            break
    return None


def _suffix(tx: _Text, offset: int, limit: int | None, budget: int,
            count: Callable[[str], int], count_tokens: Callable[[str], int]) -> int:
    """End offset of the suffix: rest of line, then whole lines up to ``limit``."""
    text = tx.text
    end = tx.content_end(offset)
    rest = text[offset:end]
    used = count_tokens(rest) if rest else 0
    if used > budget and len(rest) > _LONG_REST_CHARS:
        # Pathological (minified) line: keep its start, in whole steps.  Any
        # normal rest of line is kept whole, even over budget.
        keep = _CHAR_STEP
        while keep * 2 < len(rest) and count_tokens(rest[:keep * 2]) <= budget:
            keep *= 2
        return offset + keep
    limit = len(text) if limit is None else limit
    while end < limit and end < len(text):
        nxt = tx.next_line(end)
        line_end = tx.content_end(nxt)
        t = count(text[end:line_end])  # the line with its leading line break
        if used + t > budget:
            break
        used += t
        end = line_end
        if nxt >= len(text):
            break
    return end


# -- entry point ------------------------------------------------------------

def build_context(text: str, offset: int, grammar: str | None, count_tokens: Callable[[str], int],
                  budgets: Budgets = Budgets(), tree=None, mode: Mode | None = None) -> FimContext:
    offset = max(0, min(offset, len(text)))
    count = _counter(count_tokens)
    tx = _Text(text)
    spec = spec_for(grammar)
    if spec is not None and tree is None:
        # No maintained tree (one-off request): a fresh parse still beats
        # guessing from indentation.  Callers wanting plain text pass grammar=None.
        parser = get_parser(grammar)
        if parser is not None:
            try:
                tree = parser.parse(_encoded(text))
            except Exception:
                tree = None
    root, data = _resolve_tree(tree, text) if spec is not None else (None, None)
    syn = _Syntax(root, data, spec, grammar) if root is not None else None
    if mode is None:
        mode = decide_mode(text, offset, grammar, tree if root is not None else None)

    cur_start = tx.line_start(offset)
    left = text[cur_start:offset]
    cursor_byte = _byte_at(text, offset) if syn is not None else 0

    # ---- prefix
    P = max(budgets.prefix_tokens, 1)
    cur_tokens = count_tokens(left) if left else 0
    header, start = "", 0
    if cur_tokens > P:
        start = _long_line_prefix(text, cur_start, offset, P, count_tokens)
    else:
        walked, reached_top = _window(tx, offset, cur_start, cur_tokens, P, count)
        if not reached_top:
            step = max(budgets.window_step_lines, 1)
            cur_line = tx.line_number(cur_start)
            cap = min(P // _HEADER_SHARE, P - cur_tokens)

            def make_header(s: int) -> tuple[str, int]:
                if syn is not None:
                    return _tree_header(syn, text, s, _byte_at(text, s), cursor_byte, cap, count)
                return _plain_header(tx, s, offset, cap, count)

            # Pass 1: reserve the whole header share; pass 2: give what the
            # header did not use back to the window, if the result still fits.
            start, _ = _aligned_start(walked, cur_start, cur_line, P - cap, step)
            header, used = make_header(start)
            start2, _ = _aligned_start(walked, cur_start, cur_line, P - used, step)
            if start2 < start:
                header2, used2 = make_header(start2)
                if used2 + _tokens_from(walked, start2, cur_tokens) <= P:
                    start, header = start2, header2
    prefix = header + text[start:offset]

    # ---- suffix
    limit = None
    if syn is not None:
        limit = _scope_end_tree(syn, text, tx, offset, cursor_byte, left)
    if limit is None:
        limit = _scope_end_plain(tx, offset, cur_start, left)
    suffix_end = _suffix(tx, offset, limit, max(budgets.suffix_tokens, 0), count, count_tokens)

    return FimContext(
        prefix=prefix,
        suffix=text[offset:suffix_end],
        mode=mode,
        prefix_start=start,
        suffix_end=suffix_end,
        header=header,
    )
