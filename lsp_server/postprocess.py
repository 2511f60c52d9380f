"""Post-processing of raw fill-in-the-middle output into an insertable completion.

The engine hands us whatever a small local model produced for the hole between
``prefix`` and ``suffix``; this module turns it into the text the editor shows as
an inline suggestion.  Small instruct models in FIM mode are noisy: they leak
special tokens, wrap code in markdown fences with chatter around it, repeat the
line or function header the user already typed, run past the block into the
next function, and re-emit what already follows the cursor.  Each cleanup is a
pure function so it can be tested on its own; :func:`postprocess` composes them.

Everything here is deterministic and works on bounded windows of the document
(the engine passes the whole text) so a call stays in the low milliseconds.
"""

from __future__ import annotations

import ast
import re
import threading
from collections import Counter
from math import gcd
from typing import Sequence

__all__ = [
    "postprocess",
    "strip_special_tokens",
    "strip_chat_noise",
    "remove_prefix_echo",
    "detect_indentation",
    "normalize_indentation",
    "align_first_line",
    "drop_leading_newlines",
    "truncate_single_line",
    "truncate_block",
    "truncate_at_enclosing_close",
    "remove_suffix_overlap",
    "balance_brackets",
    "syntax_check",
    "count_syntax_errors",
]

PREFIX_WINDOW_LINES = 200
SUFFIX_WINDOW_LINES = 100

# --------------------------------------------------------------------------
# 1. special tokens and stop strings
# --------------------------------------------------------------------------

# Tokens after which nothing the model says belongs to the middle: end of turn,
# end of text, or the start of another FIM section / file.
END_TOKENS = (
    "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|file_sep|>", "<|repo_name|>",
    "<|fim_pad|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|eot_id|>", "<|end_of_text|>",
    "<|end|>", "<|eom_id|>", "<|start_header_id|>", "<|cursor|>",
    "<EOT>", "<EOS>", "</s>", "<PRE>", "<SUF>", "<PAD>",
    "<fim_prefix>", "<fim_suffix>", "<fim_pad>", "<file_sep>", "<filename>", "<reponame>",
    "<gh_stars>", "<issue_start>", "<jupyter_start>",
    "<｜fim▁end｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜end▁of▁sentence｜>",
    "<|fim▁end|>", "<|fim▁begin|>", "<|fim▁hole|>", "<|end▁of▁sentence|>",
    "<start_of_turn>", "<end_of_turn>", "<|file_separator|>", "<|fim_end|>",
)
# Tokens that merely announce the middle; the text after them is the answer.
MIDDLE_TOKENS = ("<|fim_middle|>", "<fim_middle>", "<MID>", "<｜fim▁middle｜>", "<|fim▁middle|>")
# Unknown chat/FIM control tokens of the common ``<|...|>`` shape also end it.
_GENERIC_END_RE = re.compile(r"<\|(?:fim|im|end|eot|eos|file|repo|start|assistant|user|system)[^|<>\s]{0,30}\|>")
_PROMPT_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<fim_prefix>", "<fim_suffix>", "<PRE>", "<SUF>",
                  "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<|fim▁begin|>", "<|fim▁hole|>")


def strip_special_tokens(raw: str, stop: Sequence[str] = ()) -> str:
    """Remove FIM/chat control tokens and cut at the first one that ends generation or stop string."""
    text = raw
    # A middle token may follow an echo of the whole prompt; only what follows it is ours.
    last_mid = -1
    mid_len = 0
    for tok in MIDDLE_TOKENS:
        i = text.rfind(tok)
        if i > last_mid:
            last_mid, mid_len = i, len(tok)
    if last_mid >= 0:
        head = text[:last_mid]
        if not head.strip() or any(t in head for t in _PROMPT_TOKENS):
            text = text[last_mid + mid_len:]
    for tok in MIDDLE_TOKENS:
        text = text.replace(tok, "")
    cut = len(text)
    for tok in END_TOKENS:
        i = text.find(tok)
        if 0 <= i < cut:
            cut = i
    m = _GENERIC_END_RE.search(text)
    if m and m.start() < cut:
        cut = m.start()
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


# --------------------------------------------------------------------------
# 2. chat noise: fences, prose, echo of the prefix
# --------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^\s*(?:```|~~~)[\w+#.\-]*\s*$")
_PROSE_RE = re.compile(
    r"^\s*(?:here(?:'s|’s| is| are)\b|sure\b|certainly\b|of course\b|okay\b|ok[,.!]|absolutely\b|"
    r"the (?:completed?|missing|following|full|updated|corrected|rest|final|code|function|implementation)\b|"
    r"this (?:code|function|completes|completion|implementation|will|is|should)\b|below\b|"
    r"i(?:'ve|’ve| have| will|'ll|’ll| added| completed)\b|to complete\b|you can\b|note\b|explanation\b|"
    r"let me\b|let's\b|in this\b|the above\b|completion:|output:|answer:)",
    re.I,
)
# A line that starts with a word used as a value (``sure = 1``, ``note.x``) is code, not chat.
_CODEY_START_RE = re.compile(r"^\s*[\w$]+\s*(?:[=.(\[]|$)|[;{]\s*$")


def _is_prose(line: str) -> bool:
    s = line.strip()
    if not s:
        return False
    if _PROSE_RE.match(s) and not _CODEY_START_RE.match(s):
        return True
    # Plain English sentence introducing code: several words, ends like a sentence, no code punctuation.
    return (len(s.split()) >= 4 and s[-1] in ":.!" and s[0].isupper()
            and not re.search(r"[=;{}\[\]<>_$]|\w[(.]\w|\w\(|^(?:If|For|While|Return|Else|Elif)\b", s))


def strip_chat_noise(text: str) -> str:
    """Drop markdown fences and the prose an instruct model wraps around its code."""
    lines = text.split("\n")
    # A fence glued to the end of a code line closes an (implicit) code block.
    for i, line in enumerate(lines):
        if not _FENCE_RE.match(line) and re.search(r"\S\s*```\s*$", line):
            lines = lines[:i] + [re.sub(r"\s*```\s*$", "", line)]
            text = "\n".join(lines)
            break
    fences = [i for i, line in enumerate(lines) if _FENCE_RE.match(line)]
    if fences:
        first = fences[0]
        before = lines[:first]
        if any(l.strip() and not _is_prose(l) for l in before):
            # Code first, then a fence: the model closed a block it never opened.
            lines = before
        else:
            end = fences[1] if len(fences) > 1 else len(lines)
            lines = lines[first + 1:end]
    # Leading chat lines (only when code follows them).
    i = 0
    while i < len(lines) and (not lines[i].strip() or _is_prose(lines[i])):
        i += 1
    if i and any(_is_prose(l) for l in lines[:i]):
        lines = lines[i:]
    # Trailing explanation after the code, separated by a blank line.
    for j in range(1, len(lines)):
        if (not lines[j - 1].strip() and lines[j][:1].strip() and _is_prose(lines[j])
                and any(l.strip() for l in lines[:j])):
            lines = lines[:j]
            break
    return "\n".join(lines) if (fences or len(lines) != len(text.split("\n"))) else text


_IDENT = re.compile(r"[\w$]")
_DEF_RE = re.compile(
    r"^\s*(?:@\w|(?:export\s+(?:default\s+)?|pub(?:\([\w:]+\))?\s+|public\s+|private\s+|protected\s+|"
    r"internal\s+|static\s+|final\s+|abstract\s+|override\s+|virtual\s+|async\s+|unsafe\s+|extern\s+|"
    r"inline\s+|local\s+|sealed\s+|partial\s+|const\s+(?=fn))*"
    r"(?:def|class|fn|func|function|sub|module|interface|struct|enum|impl|trait|proc|type\s+\w+\s+(?:struct|interface))\b)"
)
# C-family function signature: ``int add(int a, int b) {``.
_C_SIG_RE = re.compile(
    r"^\s*(?!(?:if|for|while|switch|return|else|elif|catch|do|case|new|throw|sizeof|await|yield|raise|assert|"
    r"not|and|or|in|is|del|print|go|defer|delete|echo|local|puts|typeof|lambda|import|from|with|except)\b)"
    r"[A-Za-z_][\w:<>\[\],*&\s]*?[\s*&]\**[A-Za-z_][\w:~]*\s*\([^;]*\)\s*(?:const\s*)?(?:throws [\w., ]+)?\{?\s*$")
_SH_FUNC_RE = re.compile(r"^\s*[\w\-]+\s*\(\)\s*\{\s*$")


def _is_definition(line: str) -> bool:
    return bool(_DEF_RE.match(line) or _C_SIG_RE.match(line) or _SH_FUNC_RE.match(line))


def _current_line(prefix: str) -> str:
    return prefix[prefix.rfind("\n") + 1:]


def _nontrivial(s: str) -> bool:
    return sum(ch.isalnum() for ch in s) >= 3


def remove_prefix_echo(text: str, prefix: str) -> str:
    """Remove a re-emitted copy of the current line / previous lines / function header.

    The insertion must continue from the cursor, so e.g. prefix ``    return `` with
    raw ``return a + b`` gives ``a + b``.
    """
    if not text.strip():
        return text
    cur = _current_line(prefix)
    cur_l = cur.lstrip()
    plines = prefix[:len(prefix) - len(cur)].split("\n")[:-1][-60:]
    rlines = text.split("\n")
    start = None
    # Verbatim tail: the raw starts with the last m complete lines of the prefix.
    for m in range(min(len(plines), len(rlines) - 1, 30), 0, -1):
        if all(rlines[k].strip() == plines[len(plines) - m + k].strip() for k in range(m)):
            echoed = "".join(plines[-m:])
            # One line is an echo only if it is a header or repeated verbatim (indentation included).
            if _nontrivial(echoed) and (m > 1 or _is_definition(echoed) or len(echoed.strip()) >= 8 and (
                    rlines[0].rstrip() == plines[-1].rstrip() or echoed.rstrip().endswith(("{", ":")))):
                if rlines[m].lstrip().startswith(cur_l) or not rlines[m].strip():
                    start = m
                    break
    if start is None:
        # The model restarts from the enclosing definition header (chat models show the whole function).
        first = rlines[0].strip()
        if first and _is_definition(first):
            headers = [i for i, l in enumerate(plines) if _is_definition(l)]
            if headers and plines[headers[-1]].strip() == first:
                j = headers[-1] + 1
                k = 1
                while k < len(rlines) and j <= len(plines):
                    r = rlines[k].strip()
                    if not r:
                        k += 1
                        continue
                    try:
                        j = next(x for x in range(j, len(plines)) if plines[x].strip() == r) + 1
                    except StopIteration:
                        break
                    k += 1
                start = k
    if start is not None:
        rlines = rlines[start:]
        # Blank lines the prefix already ends with are not part of the echo's remainder.
        while len(rlines) > 1 and not rlines[0].strip() and not cur.strip():
            rlines = rlines[1:]
        text = "\n".join(rlines)
    # The current line itself, re-emitted (with or without its indentation).
    stripped = text.lstrip(" \t")
    if cur_l.strip() and len(cur_l.strip()) >= 2 and stripped.startswith(cur_l):
        rest = stripped[len(cur_l):]
        boundary = not (_IDENT.match(cur_l[-1]) and rest[:1] and _IDENT.match(rest[:1]))
        if boundary and (rest.strip() or start is not None or len(cur_l.strip()) >= 4):
            text = rest
    return text


# --------------------------------------------------------------------------
# 7. indentation style
# --------------------------------------------------------------------------

def detect_indentation(text: str) -> tuple[bool | None, int]:
    """Return (uses_tabs, width): tabs vs spaces and the space unit seen in ``text``.

    ``uses_tabs`` is None when no indented line tells.
    """
    tabs = spaces = 0
    widths: list[int] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        if line[0] == "\t":
            tabs += 1
        elif line[0] == " ":
            n = len(line) - len(line.lstrip(" "))
            # A lone space before ``*`` is a block-comment continuation, not indentation.
            if not (n % 2 == 1 and line.lstrip(" ").startswith("*")):
                spaces += 1
                widths.append(n)
        else:
            widths.append(0)
    if not tabs and not spaces:
        return None, 4
    if tabs > spaces:
        return True, 4
    deltas = Counter(b - a for a, b in zip(widths, widths[1:]) if 0 < b - a <= 8)
    width = deltas.most_common(1)[0][0] if deltas else 4
    return False, width


def _model_unit(lines: Sequence[str]) -> int:
    g = 0
    for line in lines:
        n = len(line) - len(line.lstrip(" "))
        if n and line.strip():
            g = gcd(g, n)
    return g if g in (2, 3) else 4


def normalize_indentation(text: str, *, prefix: str, suffix: str = "") -> str:
    """Convert the leading indentation of the completion's new lines to the file's tabs/spaces style."""
    if "\n" not in text and _current_line(prefix).strip():
        return text
    uses_tabs, width = detect_indentation(_window_prefix(prefix, 200) + "\n" + _window_suffix(suffix, 50))
    if uses_tabs is None:
        return text
    lines = text.split("\n")
    first_new = not _current_line(prefix).strip()
    idx = range(0 if first_new else 1, len(lines))
    if uses_tabs:
        unit = _model_unit([lines[i] for i in idx])
        for i in idx:
            line = lines[i]
            ws = line[:len(line) - len(line.lstrip(" \t"))]
            if " " in ws:
                t, s = ws.count("\t"), ws.count(" ")
                lines[i] = "\t" * (t + s // unit) + " " * (s % unit) + line[len(ws):]
    else:
        for i in idx:
            line = lines[i]
            ws = line[:len(line) - len(line.lstrip(" \t"))]
            if "\t" in ws:
                lines[i] = ws.replace("\t", " " * width) + line[len(ws):]
    return "\n".join(lines)


def _width(ws_line: str, tab: int = 4) -> int:
    ws = ws_line[:len(ws_line) - len(ws_line.lstrip(" \t"))]
    return len(ws.expandtabs(tab))


def align_first_line(text: str, prefix: str) -> str:
    """Drop indentation the model repeats when the cursor already sits after the line's indentation."""
    cur = _current_line(prefix)
    if not cur or cur.strip() or not text[:1] in (" ", "\t"):
        return text
    ws = text[:len(text) - len(text.lstrip(" \t"))]
    prev = [l for l in prefix[:len(prefix) - len(cur)].split("\n")[-30:] if l.strip()]
    p_ind = _width(prev[-1]) if prev else 0
    opens = bool(prev) and prev[-1].rstrip().endswith((":", "{", "(", "[", "do", "then", "->", "=>"))
    _, unit = detect_indentation("\n".join(prev))
    plausible = p_ind + (unit if opens else 0)
    if opens and _width(cur) > p_ind:
        plausible = _width(cur)  # the editor already indented the body; trust its unit
    if _width(cur) + _width(ws) > plausible:
        drop = min(len(ws), len(cur.expandtabs(4)) if ws[0] == " " else len(cur))
        return text[drop:] if ws[:drop].strip() == "" else text
    return text


# --------------------------------------------------------------------------
# 3./4. line and block extent
# --------------------------------------------------------------------------

def drop_leading_newlines(text: str, *, prefix: str, suffix: str, mode: str) -> str:
    """Handle output that starts with a line break.

    On a finished line, single mode has nothing to add ("").  On a blank line the
    leading empty lines are dropped so the code lands on the cursor's line.
    """
    cur = _current_line(prefix)
    rest = suffix.split("\n", 1)[0]
    if not text.lstrip(" \t").startswith("\n"):
        return text
    if mode == "single" and (cur.strip() or rest.strip()):
        return ""
    if cur.strip():
        return text
    lines = text.split("\n")
    k = 0
    while k < len(lines) - 1 and not lines[k].strip():
        k += 1
    return "\n".join(lines[k:])


def truncate_single_line(text: str) -> tuple[str, bool]:
    """Keep only the cursor's line; return (text, whether the model ended the line)."""
    line, nl, _ = text.partition("\n")
    return line, bool(nl) and bool(line.strip())


_CLOSER_LINE_RE = re.compile(r"^\s*(?:[)\]}]+[)\]};,.]*\s*(?://.*|#.*)?|end\b[)\]},;.]*.*|fi|done|esac|endif|endfunction)\s*$")
_CONTINUE_RE = re.compile(r"^\s*(?:\}\s*)?(?:else|elif|elsif|elseif|except|finally|catch|rescue|ensure|when|in)\b|^\s*\}\s*while\b")



def _enclosing_definition_indent(before: str, below: int) -> int:
    """Indentation of the nearest definition header above that is less indented than ``below`` (-1: none)."""
    for line in reversed(before.split("\n")[-PREFIX_WINDOW_LINES:]):
        if line.strip() and _width(line) < below and _is_definition(line):
            return _width(line)
    return -1


def _finishes_definition(line: str, before: str, suffix: str, base: int) -> bool:
    """``line`` dedents out of the block but stays in the enclosing definition, whose body has no
    more code after the cursor (the suffix goes on at the definition's level or below, or ends)."""
    floor = _enclosing_definition_indent(before, base)
    if floor < 0 or _width(line) <= floor or not line.strip() or _is_definition(line):
        return False
    nxt = next((l for l in _window_suffix(suffix, 50).split("\n") if l.strip()), None)
    return nxt is None or _width(nxt) <= floor


def _rejoins_suffix(rest: Sequence[str], before: str, suffix: str, base: int) -> bool:
    """The lines from a dedent on reach the suffix's first two code lines (spacing aside) while still
    inside the enclosing definition."""
    floor = _enclosing_definition_indent(before, base)
    if floor < 0:
        return False
    want = [_code_key(l) for l in _window_suffix(suffix, 20).split("\n") if l.strip()][:2]
    if not want or want[0][0] <= floor or len(re.sub(r"\W", "", "".join(k for _, k in want))) < 6:
        return False  # the suffix has no more of this definition's body, or nothing distinctive
    got = [l for l in rest if l.strip()]
    for k, l in enumerate(got):
        if _width(l) <= floor:
            return False
        if _code_key(l) == want[0]:
            nxt = got[k + 1] if k + 1 < len(got) else None
            if nxt is None or _width(nxt) <= floor or want[1:] == [_code_key(nxt)]:
                return True
    return False


def truncate_block(text: str, *, prefix: str, suffix: str = "") -> tuple[str, bool]:
    """Cut a multi-line completion at the end of the block being completed (indentation based).

    Returns (text, cut at a line boundary) — the second part tells the caller the
    completion ends a line, so the suffix's line stays on its own line.
    """
    cur = _current_line(prefix)
    lines = text.split("\n")
    full = [cur + lines[0]] + lines[1:]
    try:
        l0 = next(i for i, l in enumerate(full) if l.strip())
    except StopIteration:
        return "", False
    base = _width(full[l0])
    nxt = next((l for l in full[l0 + 1:] if l.strip()), None)
    opens = nxt is not None and _width(nxt) > base
    header_at_cursor = l0 == 0 and bool(cur.strip())
    if header_at_cursor and not lines[0].strip() and not opens and nxt is not None:
        # Cursor at the end of a finished statement: the model may close inner blocks, but
        # never leave the enclosing definition (that would be the next function).
        floor = _enclosing_definition_indent(prefix[:len(prefix) - len(cur)], base)
        l0 = next(i for i in range(1, len(full)) if full[i].strip())
        base = _width(full[l0])
        if base <= floor:
            return "", False
        nxt = next((l for l in full[l0 + 1:] if l.strip()), None)
        opens = nxt is not None and _width(nxt) > base
        header_at_cursor = False
    definition = _is_definition(full[l0])
    strict = opens and (header_at_cursor or definition)
    emitted = 0
    for i in range(l0 + 1, len(full)):
        line = full[i]
        if not line.strip():
            continue
        w = _width(line)
        if w < base or (strict and w == base):
            closer = bool(_CLOSER_LINE_RE.match(line))
            cont = bool(_CONTINUE_RE.match(line))
            if w == base and strict and not definition and cont:
                emitted += 1  # ``else:`` / ``} else {`` continues the statement the cursor opened
                continue
            if closer and not cont:
                return "\n".join(lines[:i + 1]).rstrip(), True
            if cont and w < base and not definition and not line.lstrip().startswith("}") and \
                    w > _enclosing_definition_indent(prefix[:len(prefix) - len(cur)], base):
                # ``elif``/``else``/``except`` of a statement around the cursor: finish that statement.
                base, strict = w + 1, False
                emitted += 1
                continue
            if w < base and not definition and not closer and (
                    _finishes_definition(line, prefix[:len(prefix) - len(cur)], suffix, base)
                    or _rejoins_suffix(full[i:], prefix[:len(prefix) - len(cur)], suffix, base)):
                # The enclosing function ends at the cursor (nothing of its body follows), or the
                # model goes on to write the code below the cursor: the hole spans more than this
                # block. It may finish the function (``return result`` after the loop), never leave it;
                # remove_suffix_overlap then cuts where it rejoins the code below.
                base, strict = w, False
                emitted += 1
                continue
            return "\n".join(lines[:i]).rstrip(), True
        if w == base and emitted and _is_definition(line) and not definition:
            return "\n".join(lines[:i]).rstrip(), True
        emitted += 1
    return text, text.endswith("\n") and bool(text.strip())


def _cleaned(raw: str, *, prefix: str, suffix: str, mode: str, stop: Sequence[str]) -> str:
    """The first steps of postprocess (shared with block_finished): special tokens, chat noise, an echo of
    the prefix, indentation, leading line breaks, the first line's alignment."""
    text = strip_special_tokens(raw, stop)
    text = strip_chat_noise(text)
    text = remove_prefix_echo(text, prefix)
    text = normalize_indentation(text, prefix=prefix, suffix=suffix)
    text = drop_leading_newlines(text, prefix=prefix, suffix=suffix, mode=mode)
    return align_first_line(text, prefix)


def block_finished(raw: str, *, prefix: str, suffix: str = "", stop: Sequence[str] = ()) -> bool:
    """Multi-line generation may stop here: the text so far already holds a whole line that leaves the
    definition enclosing the completion (a non-blank line at or left of its header's indentation).

    Post-processing never keeps anything after such a line: ``truncate_block`` ends the block there at
    the latest (a closing ``}`` on that line included) and ``_prefer_definition_end`` looks no further.
    So stopping the model there changes no suggestion and saves the tokens an instruct model spends on
    the next function, test calls or chat. Without an enclosing definition (top-level code) it is False.
    """
    if "\n" not in strip_special_tokens(raw, stop):
        return False
    text = _cleaned(raw, prefix=prefix, suffix=suffix, mode="multi", stop=stop)
    cur = _current_line(prefix)
    lines = text.split("\n")[:-1]  # whole lines only: the last one may still grow
    if not lines:
        return False
    full = [cur + lines[0]] + lines[1:]
    l0 = next((i for i, line in enumerate(full) if line.strip()), None)
    if l0 is None:
        return False
    floor = _enclosing_definition_indent(prefix[:len(prefix) - len(cur)], _width(full[l0]))
    if floor < 0:
        return False
    return any(line.strip() and _width(line) <= floor for line in full[l0 + 1:])


# --------------------------------------------------------------------------
# tree-sitter helpers
# --------------------------------------------------------------------------

_local = threading.local()


def _parser(grammar: str | None):
    if not grammar:
        return None
    cache = getattr(_local, "parsers", None)
    if cache is None:
        cache = _local.parsers = {}
    if grammar not in cache:
        try:
            from tree_sitter_language_pack import get_parser
            cache[grammar] = get_parser(grammar)
        except Exception:  # unknown grammar or missing package: fall back to indentation only
            cache[grammar] = None
    return cache[grammar]


def _window_prefix(prefix: str, n: int = PREFIX_WINDOW_LINES) -> str:
    i = len(prefix)
    for _ in range(n):
        i = prefix.rfind("\n", 0, i)
        if i < 0:
            return prefix
    return prefix[i + 1:]


def _window_suffix(suffix: str, n: int = SUFFIX_WINDOW_LINES) -> str:
    i = -1
    for _ in range(n):
        i = suffix.find("\n", i + 1)
        if i < 0:
            return suffix
    return suffix[:i + 1]


def count_syntax_errors(source: str, grammar: str | None) -> int | None:
    """Number of ERROR and MISSING nodes in ``source``; None without a usable grammar."""
    parser = _parser(grammar)
    if parser is None:
        return None
    tree = parser.parse(source.encode("utf-8"))
    count = 0
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error:
            stack.extend(node.children)
    if grammar == "python" and _python_fails(source):
        count += 1  # tree-sitter accepts what CPython rejects (an unexpected indent, a lost block body)
    return count


def _python_fails(source: str) -> bool:
    """Whether CPython's parser rejects ``source`` (from its first top-level line: windows start mid-file)."""
    m = re.search(r"^(?=[^\s#])", source, re.M)
    try:
        ast.parse(source[m.start():] if m else source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return True
    return False


_BLOCK_CLOSERS = {"}", "end", "fi", "done", "esac"}


def truncate_at_enclosing_close(text: str, *, prefix: str, grammar: str | None) -> str:
    """Cut after the line where the completion closes a block opened before the cursor (tree-sitter)."""
    parser = _parser(grammar)
    if parser is None or "\n" not in text:
        return text
    pw = _window_prefix(prefix).encode("utf-8")
    body = text.encode("utf-8")
    tree = parser.parse(pw + body)
    start = len(pw)
    best = None
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.end_byte <= start:
            continue
        if node.child_count == 0:
            if (node.type in _BLOCK_CLOSERS and not node.is_missing and node.start_byte >= start
                    and node.parent is not None and node.parent.start_byte < start
                    and (best is None or node.start_byte < best)):
                after = body[node.end_byte - start:].split(b"\n", 1)[0]
                if re.fullmatch(rb"[\s)\]};,.]*", after):
                    best = node.start_byte
            continue
        stack.extend(node.children)
    if best is None:
        return text
    nl = body.find(b"\n", best - start)
    if nl < 0:
        return text
    return body[:nl].decode("utf-8", "ignore")


# --------------------------------------------------------------------------
# bracket / string scanning
# --------------------------------------------------------------------------

_PAIRS = {")": "(", "]": "[", "}": "{"}
_CLIKE = {"javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "csharp", "php", "kotlin", "swift", "scala"}


def _comment_starts(grammar: str | None) -> tuple[tuple[str, ...], bool]:
    """Line-comment markers and whether ``/* */`` block comments exist."""
    if grammar in ("python", "ruby", "bash"):
        return ("#",), False
    if grammar == "lua":
        return ("--",), False
    if grammar == "php":
        return ("//", "#"), True
    if grammar in _CLIKE:
        return ("//",), True
    return ("//", "#"), True


class _Scan:
    """Incremental lexer that tracks brackets outside strings and comments."""

    def __init__(self, grammar: str | None):
        self.grammar = grammar
        self.line_comments, self.block_comments = _comment_starts(grammar)
        self.state: str | None = None  # None, "//", "/*", or a string delimiter
        self.stack: list[tuple[str, int]] = []  # (opener, position); position < 0 means prefix

    def feed(self, s: str, offset: int, on_event=None) -> None:
        i, n = 0, len(s)
        g = self.grammar
        while i < n:
            ch = s[i]
            st = self.state
            if st is not None:
                if st == "//":
                    if ch == "\n":
                        self.state = None
                    i += 1
                    continue
                if st == "/*":
                    if s.startswith("*/", i):
                        self.state = None
                        i += 2
                        continue
                    i += 1
                    continue
                if ch == "\\" and st not in ("]]",):
                    i += 2
                    continue
                if s.startswith(st, i):
                    self.state = None
                    if on_event:
                        on_event("qclose", offset + i, st)
                    i += len(st)
                    continue
                if ch == "\n" and st in ("'", '"') and g not in ("bash", "ruby", "php", "lua") and g is not None:
                    self.state = None  # unterminated one-line string: resync at the line end
                i += 1
                continue
            if self.block_comments and s.startswith("/*", i):
                self.state = "/*"
                i += 2
                continue
            lc = next((m for m in self.line_comments if s.startswith(m, i)), None)
            if lc is not None and (lc != "#" or g in ("python", "ruby", "php") or i == 0 or s[i - 1] in " \t\n"):
                if g == "lua" and s.startswith("--[[", i):
                    self.state = "]]"
                    i += 4
                    continue
                self.state = "//"
                i += len(lc)
                continue
            if ch in "\"'`":
                if g == "python" and s.startswith(ch * 3, i):
                    self.state = ch * 3
                    i += 3
                    continue
                if ch == "'" and g == "rust" and not re.match(r"'(?:\\.[^']*|[^\\'])'", s[i:i + 12]):
                    i += 1  # lifetime, not a char literal
                    continue
                if ch == "`" and g not in (None, "javascript", "typescript", "tsx", "go", "bash", "ruby"):
                    i += 1
                    continue
                self.state = ch
                i += 1
                continue
            if g == "lua" and s.startswith("[[", i):
                self.state = "]]"
                i += 2
                continue
            if ch in "([{":
                self.stack.append((ch, offset + i))
            elif ch in ")]}":
                if on_event:
                    on_event("close", offset + i, ch)
                elif self.stack and self.stack[-1][0] == _PAIRS[ch]:
                    self.stack.pop()
                elif self.stack:
                    # Prefix windows may start mid-construct; resync on the nearest matching opener.
                    for k in range(len(self.stack) - 1, -1, -1):
                        if self.stack[k][0] == _PAIRS[ch]:
                            del self.stack[k:]
                            break
            i += 1


def balance_brackets(text: str, *, prefix: str, suffix: str, mode: str, grammar: str | None) -> str:
    """Cut the completion before a bracket it cannot close, or one the suffix already closes."""
    if not text:
        return text
    scan = _Scan(grammar)
    pw = _window_prefix(prefix)
    scan.feed(pw, -len(pw))
    prefix_stack = list(scan.stack)
    prefix_state = scan.state
    rest = suffix.split("\n", 1)[0].lstrip(" \t")
    # Closers right after the cursor (often auto-paired by the editor) close brackets of
    # the cursor's line; the completion may only close the ones the suffix leaves open.
    suffix_closes = len(re.match(r"[)\]}]*", rest).group(0))
    line_open = sum(1 for _, pos in prefix_stack if pos >= -len(_current_line(prefix)))
    allowed = max(0, line_open - suffix_closes) if suffix_closes else len(prefix_stack)
    closed = [0]
    cut = [len(text)]
    # A string open at the cursor whose closing quote the suffix already supplies.
    open_string = [prefix_state if prefix_state not in (None, "//", "/*") and rest.startswith(prefix_state) else None]

    def on_event(kind: str, pos: int, ch: str) -> None:
        if pos >= cut[0]:
            return
        if kind == "qclose":
            if open_string[0] == ch:
                cut[0] = pos
            open_string[0] = None
            return
        stack = scan.stack
        if stack and stack[-1][0] == _PAIRS[ch]:
            if stack[-1][1] < 0:
                closed[0] += 1
                if closed[0] > allowed:
                    cut[0] = pos
                    return
            stack.pop()
        else:
            cut[0] = pos

    scan.feed(text, 0, on_event)
    out = text[:cut[0]]
    # Inside a string the spaces are content; before a closer they are noise.
    return out if cut[0] == len(text) or text[cut[0]] in "\"'`" else out.rstrip(" \t")


# --------------------------------------------------------------------------
# 5. overlap with the suffix
# --------------------------------------------------------------------------

def _code_key(line: str) -> tuple[int, str]:
    """A line compared as code: its indentation width and its text without any whitespace."""
    return _width(line), re.sub(r"\s+", "", line)


def remove_suffix_overlap(text: str, *, prefix: str, suffix: str) -> str:
    """Remove the part of the completion that the document already has after the cursor."""
    if not text:
        return text
    cur = _current_line(prefix)
    rest, _, after = suffix.partition("\n")
    # Lines the model wrote that are the lines right below the cursor: it ran into the suffix.
    lines = text.split("\n")
    full = [cur + lines[0]] + lines[1:]
    nxt = ([cur + rest] if not cur.strip() and rest.strip() else []) + \
        [l for l in _window_suffix(after, 20).split("\n") if l.strip()]
    nxt = [l.rstrip() for l in nxt if l.strip()][:3]
    first_full = 0 if not cur.strip() else 1
    if nxt:
        for i in range(first_full, len(full)):
            if not full[i].strip():
                continue
            seq = [l.rstrip() for l in full[i:] if l.strip()]
            n = min(len(seq), len(nxt))
            if n and seq[:n] == nxt[:n] and (n == len(seq) or n == len(nxt) and n >= 2):
                text = "\n".join(lines[:i]).rstrip()
                if i == 0:
                    return ""
                break
        else:
            # The model wrote new lines and then the next lines of the document (spacing aside): it
            # has rejoined the code below the cursor, whatever it invents after that.
            keys = [_code_key(l) for l in nxt[:2]]
            if len(nxt[0].strip()) >= 6 and _nontrivial(nxt[0]):
                for i in range(1, len(full)):
                    if _code_key(full[i]) != keys[0] or not any(l.strip() for l in full[:i]):
                        continue
                    after = [_code_key(l) for l in full[i + 1:] if l.strip()][:1]
                    if after == keys[1:2] or not after:
                        text = "\n".join(lines[:i]).rstrip()
                        break
    # Character overlap of the completion's end with the suffix's start.
    limit = min(len(text), len(suffix), 300)
    for k in range(limit, 0, -1):
        ov = suffix[:k]
        if not text.endswith(ov):
            continue
        core = ov.strip()
        if not core:
            continue
        before = text[:-k]
        before_line = before.rsplit("\n", 1)[-1] if "\n" in before else cur + before
        if not before_line.strip() and not ov.lstrip(" \t").startswith("\n"):
            continue  # a whole repeated line: the line rule above judges those, with indentation
        # The model re-typed what follows the cursor up to a line end (or across lines).
        reaches_eol = k == len(suffix) or suffix[k] == "\n" or "\n" in ov.strip()
        if re.fullmatch(r"[;,:]", core) and reaches_eol or (
            len(core) >= 4 and reaches_eol
            and (k == len(text) or not (_IDENT.match(text[-k - 1]) and _IDENT.match(ov[0])))
            and not re.fullmatch(r"[)\]}\"'`;,:.\s]*", core)
        ):
            return text[:-k]
        # Closing brackets on their own lines (``\n}``) that the suffix already has.
        if "\n" in ov and re.fullmatch(r"[\s)\]};,]*(?:end|fi|done|esac)?[\s)\]};,]*", ov) and \
                ov.lstrip(" \t").startswith("\n"):
            return text[:-k]
    return text


# --------------------------------------------------------------------------
# 8. syntax check
# --------------------------------------------------------------------------

def _synthetic_closings(candidate: str, prefix: str, grammar: str | None) -> list[str]:
    """Plausible text that would complete an opened construct, for judging a one-line completion."""
    out = []
    scan = _Scan(grammar)
    scan.feed(candidate, 0)
    opened = "".join({"(": ")", "[": "]", "{": "}"}[o] for o, _ in reversed(scan.stack))
    line = _current_line(prefix) + candidate
    ind = line[:len(line) - len(line.lstrip(" \t"))]
    if grammar == "python" and line.rstrip().endswith(":"):
        unit = "\t" if ind.startswith("\t") else "    "
        out.append("\n" + ind + unit + "pass")
    if opened:
        out.append(opened)
    if grammar in ("ruby", "lua"):
        out.append("\n" + ind + "end")
    if grammar == "bash":
        out.extend(["\n" + ind + "fi", "\n" + ind + "done"])
    return out


def syntax_check(candidate: str, *, prefix: str, suffix: str, grammar: str | None, mode: str = "multi",
                 tail: str = "") -> str:
    """Trim ``candidate`` so prefix+candidate+suffix has no more syntax errors than prefix+suffix.

    ``tail`` is appended to every tried candidate (the newline that keeps the suffix's
    line separate).  Tries the whole text, then line boundaries, then token boundaries.
    """
    if not candidate or _parser(grammar) is None:
        return candidate + tail if candidate else ""
    pw, sw = _window_prefix(prefix), _window_suffix(suffix)
    base = count_syntax_errors(pw + sw, grammar)

    def ok(c: str, t: str) -> bool:
        if count_syntax_errors(pw + c + t + sw, grammar) <= base:
            return True
        # A one-line header whose body the user has yet to type (``if (x) {``) may be suggested; in
        # Python only where the file is already broken: there a bodiless ``if x:`` breaks the code
        # below it (an IndentationError, or the next line silently becomes its body).
        if mode == "single" and "\n" not in c and (base or grammar != "python"):
            return any(count_syntax_errors(pw + c + extra + t + sw, grammar) <= base
                       for extra in _synthetic_closings(c, prefix, grammar)[:3])
        return False

    cuts = [m.start() for m in re.finditer("\n", candidate)]
    if mode != "single" and cuts and len(cuts) <= 40:
        # Whole lines: the longest of the line-boundary prefixes that leave the fewest syntax errors
        # (a completion that runs on into code the suffix already has is cut where it still fits).
        best, best_err = None, None
        for piece in [candidate] + [candidate[:c].rstrip() for c in reversed(cuts)]:
            if not piece.strip():
                continue
            err = count_syntax_errors(pw + piece + tail + sw, grammar)
            if best_err is None or err < best_err:
                best, best_err = piece, err
        if best is not None and best_err <= base:
            return best + tail
    if ok(candidate, tail):
        return candidate + tail
    for c in reversed(cuts):
        piece = candidate[:c].rstrip()
        if piece.strip() and ok(piece, tail):
            return piece + tail
    first = candidate.split("\n", 1)[0]
    bounds = [m.end() for m in re.finditer(r"\w\b|[^\w\s](?=\s|\w|$)|\s+", first)]
    bounds = sorted({b for b in bounds if 0 < b < len(first)}, reverse=True)[:40]
    for b in bounds:
        piece = first[:b].rstrip()
        if piece.strip() and ok(piece, ""):
            return piece
    return ""


def _prefer_definition_end(whole: str, block: str, ended: bool, *, prefix: str, suffix: str,
                           grammar: str | None) -> tuple[str, bool]:
    """The block cut, unless it leaves the file broken where going on to the end of the enclosing
    definition does not (the hole spans more than the cursor's block: ``return None`` of an ``if``
    body, then the code that the lines below the cursor belong to)."""
    if block == whole or _parser(grammar) is None:
        return block, ended
    cur = _current_line(prefix)
    before = prefix[:len(prefix) - len(cur)]
    lines = whole.split("\n")
    full = [cur + lines[0]] + lines[1:]
    first = next((l for l in full if l.strip()), None)
    if first is None:
        return block, ended
    floor = _enclosing_definition_indent(before, _width(first))
    if floor < 0:
        return block, ended
    end = next((i for i in range(1, len(full)) if full[i].strip() and _width(full[i]) <= floor), len(full))
    longer = "\n".join(lines[:end]).rstrip()
    if len(longer) <= len(block.rstrip()):
        return block, ended
    rest = suffix.split("\n", 1)[0]
    pw, sw = _window_prefix(prefix), _window_suffix(suffix)

    def errors(t: str, t_ended: bool) -> int:
        t = remove_suffix_overlap(t, prefix=prefix, suffix=suffix)
        tail = "\n" + cur if (t_ended and not cur.strip() and rest.strip()) else ""
        return count_syntax_errors(pw + t + tail + sw, grammar)

    longer_ended = end < len(full) or whole.endswith("\n")
    if errors(longer, longer_ended) < errors(block, ended):
        return longer, longer_ended
    return block, ended


def _line_break_before_code(text: str, *, prefix: str, suffix: str, grammar: str | None) -> str:
    """In the indentation before a line of code, does the completion end a line of its own?

    A single-line generation stops at the model's line break, which never reaches us, so the
    choice is made on the syntax: the completion joined to the code after the cursor
    (``ret`` + ``urn x``) or inserted as its own line(s) above it (``for c in s:`` above
    ``    if c in d:``). On a tie the line break wins: a whole line is the usual insertion there.
    """
    cur = _current_line(prefix)
    if _parser(grammar) is None:
        return ""
    pw, sw = _window_prefix(prefix), _window_suffix(suffix)
    joined = count_syntax_errors(pw + text + sw, grammar)
    own_line = count_syntax_errors(pw + text + "\n" + cur + sw, grammar)
    return "\n" + cur if own_line <= joined else ""


# --------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------

def postprocess(raw: str, *, prefix: str, suffix: str, mode: str, grammar: str | None,
                stop: Sequence[str] = ()) -> str:
    """Turn raw FIM output into the text to insert at the cursor ("" when nothing usable)."""
    if not strip_special_tokens(raw, stop).strip():
        return ""
    text = _cleaned(raw, prefix=prefix, suffix=suffix, mode=mode, stop=stop)
    cur = _current_line(prefix)
    rest = suffix.split("\n", 1)[0]
    if mode == "single":
        text, ended = truncate_single_line(text)
    else:
        whole = text
        text, ended = truncate_block(text, prefix=prefix, suffix=suffix)
        cut = truncate_at_enclosing_close(text, prefix=prefix, grammar=grammar)
        if cut != text:
            text, ended = cut, True
        text, ended = _prefer_definition_end(whole, text, ended, prefix=prefix, suffix=suffix, grammar=grammar)
    text = remove_suffix_overlap(text, prefix=prefix, suffix=suffix)
    text = balance_brackets(text, prefix=prefix, suffix=suffix, mode=mode, grammar=grammar)
    if not text.strip():
        return ""
    # Mid-line, a trailing space separates the completion from the text after the cursor.
    keep = text[len(text.rstrip(" \t")):] if rest.strip() and not text.rstrip(" \t").endswith("\n") else ""
    text = text.rstrip() + keep
    # A whole line typed in front of existing text on the cursor's line must end that line.
    tail = "\n" + cur if (ended and not cur.strip() and rest.strip()) else ""
    if not tail and not cur.strip() and rest.strip():
        tail = _line_break_before_code(text, prefix=prefix, suffix=suffix, grammar=grammar)
    return syntax_check(text, prefix=prefix, suffix=suffix, grammar=grammar, mode=mode, tail=tail)
