"""Code actions driven by the local model: pure functions, no protocol and no model calls.

An action is data (prompts/actions.toml plus the user's `infill.actions`): a title, an LSP kind, chat
templates and an output kind. This module loads those definitions, picks the code an action works on
(the selection, else the enclosing function or class from tree-sitter, else the current line), builds
the chat messages, turns the model's answer into code (fences, prose around it), re-indents that code
to the target's indentation and the file's indent style, checks with tree-sitter that the edited file has
no new syntax errors, and builds the WorkspaceEdit. The protocol side lives in features/code_actions.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lsprotocol import types as lsp

from lsp_server.context.languages import get_parser, spec_for
from lsp_server.context.positions import byte_to_offset, line_starts, offset_to_byte, offset_to_position
from lsp_server.errors import InfillError

OUTPUTS = ("markdown", "replace", "new_file")
TARGETS = ("node", "file")
WHEN = ("always", "diagnostics")
PLACEHOLDERS = ("language", "lang", "code", "instruction", "diagnostics", "path", "filename", "module", "test_path",
                "import_hint", "symbol")


class InvalidActionRequest(ValueError):
    """The request itself is wrong (unknown action, range outside the document): a JSON-RPC error."""


class UnusableAnswer(InfillError):
    """The model answered, but nothing in the answer can be applied; the message says why."""


# -- definitions ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionSpec:
    name: str
    title: str
    user: str
    kind: str = "refactor.rewrite.infill"
    output: str = "replace"
    target: str = "node"
    when: str = "always"
    system: str = ""
    instruction: str = ""
    model: str = ""
    max_tokens: int = 256
    keep_symbol: bool = False  # the rewritten code must still define the target's name (docstring, fix)


_FIELDS = {f.name: f for f in dataclasses.fields(ActionSpec) if f.name != "name"}


def check_action_spec(name: str, raw: Any, *, partial: bool = False) -> list[str]:
    """Problems with one action entry ([] when it is fine). `partial`: it overrides a built-in's fields."""
    where = f"actions.{name}"
    if not isinstance(raw, dict):
        return [f"{where}: expected an object with title, user, output, ..."]
    errors = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        errors.append(f"{where}: an action name may use letters, digits, '_', '-' and '.' only")
    for key, value in raw.items():
        fname = key.replace("-", "_")
        if fname == "maxTokens":
            fname = "max_tokens"
        if fname == "keepSymbol":
            fname = "keep_symbol"
        f = _FIELDS.get(fname)
        if f is None:
            errors.append(f"{where}.{key}: unknown field (known: {', '.join(sorted(_FIELDS))})")
        elif fname == "max_tokens":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 8192:
                errors.append(f"{where}.{key}: expected an integer from 1 to 8192, got {value!r}")
        elif fname == "keep_symbol":
            if not isinstance(value, bool):
                errors.append(f"{where}.{key}: expected true or false, got {value!r}")
        elif not isinstance(value, str):
            errors.append(f"{where}.{key}: expected a string, got {value!r}")
        elif fname == "output" and value not in OUTPUTS:
            errors.append(f"{where}.{key}: {value!r} is not one of {', '.join(OUTPUTS)}")
        elif fname == "target" and value not in TARGETS:
            errors.append(f"{where}.{key}: {value!r} is not one of {', '.join(TARGETS)}")
        elif fname == "when" and value not in WHEN:
            errors.append(f"{where}.{key}: {value!r} is not one of {', '.join(WHEN)}")
    if not partial:
        for required in ("title", "user"):
            if not isinstance(raw.get(required), str) or not raw.get(required, "").strip():
                errors.append(f"{where}: `{required}` is required for a new action")
    return errors


def _normalise(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        fname = {"maxTokens": "max_tokens", "keepSymbol": "keep_symbol"}.get(key, key.replace("-", "_"))
        if fname in _FIELDS:
            out[fname] = value
    return out


@lru_cache(maxsize=1)
def builtin_actions() -> dict[str, ActionSpec]:
    from lsp_server.catalog import _data_file

    data = tomllib.loads(_data_file("prompts", "actions.toml").read_text(encoding="utf-8"))
    return {name: ActionSpec(name=name, **_normalise(raw)) for name, raw in data["actions"].items()}


def load_actions(user: Mapping[str, Any] | None = None) -> tuple[dict[str, ActionSpec], list[str]]:
    """Built-in actions merged with the user's; invalid user entries are reported and skipped."""
    actions = dict(builtin_actions())
    errors: list[str] = []
    for name, raw in (user or {}).items():
        base = actions.get(name)
        problems = check_action_spec(name, raw, partial=base is not None)
        if problems:
            errors.extend(problems)
            continue
        values = _normalise(raw)
        actions[name] = dataclasses.replace(base, **values) if base else ActionSpec(name=name, **values)
    return actions, errors


def matches_only(kind: str, only: Sequence[str] | None) -> bool:
    """LSP `context.only` filtering: kinds are hierarchical ("refactor" matches "refactor.rewrite.x")."""
    if not only:
        return True
    return any(kind == o or kind.startswith(o + ".") for o in only)


# -- ranges and targets --------------------------------------------------------------------------------------
def line_count(text: str) -> int:
    return len(line_starts(text))


def check_range(text: str, start: tuple[int, int], end: tuple[int, int]) -> None:
    """An LSP range must lie in the document and not end before it starts. Characters past a line's end
    are allowed (LSP says they mean the line end); lines past the last one are not."""
    lines = line_count(text)
    for name, (line, char) in (("start", start), ("end", end)):
        if line < 0 or char < 0:
            raise InvalidActionRequest(f"invalid range: {name} {line}:{char} has a negative line or character")
        if line >= lines:
            raise InvalidActionRequest(
                f"invalid range: {name} line {line} is outside the document (it has {lines} lines, 0..{lines - 1})")
    if end < start:
        raise InvalidActionRequest(f"invalid range: end {end[0]}:{end[1]} is before start {start[0]}:{start[1]}")


@dataclass(frozen=True)
class Target:
    start: int  # str offsets into the document text
    end: int
    code: str
    indent: str  # leading whitespace of the target's first line
    line_start: bool  # the target starts at the beginning of its line (whole lines are replaced)
    symbol: str = ""  # the function/class name when the target is a definition
    node_type: str = ""


def _line_bounds(text: str, offset: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    end = len(text) if end == -1 else end
    if end > start and text[end - 1] == "\r":
        end -= 1
    return start, end


def _indent_of(text: str, offset: int) -> str:
    start, end = _line_bounds(text, offset)
    line = text[start:end]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _definition_at(tree: Any, text: str, grammar: str | None, start: int, end: int):
    """The smallest definition node (function, class, method...) that contains [start, end]."""
    spec = spec_for(grammar)
    if tree is None or spec is None:
        return None
    node = tree.root_node.descendant_for_byte_range(offset_to_byte(text, start), offset_to_byte(text, end))
    while node is not None and node.type not in spec.definitions:
        node = node.parent
    if node is None:
        return None
    while node.parent is not None and node.parent.type in spec.wrappers and node.parent.type != "program":
        node = node.parent
    return node


def _symbol_of(node: Any) -> str:
    inner = node
    for _ in range(3):  # decorated_definition / export_statement / declarator wrappers
        name = inner.child_by_field_name("name")
        if name is not None:
            return name.text.decode("utf-8", "replace")
        defn = inner.child_by_field_name("definition") or inner.child_by_field_name("declaration")
        if defn is None:
            named = [c for c in inner.named_children if c.type not in ("decorator", "comment")]
            defn = named[-1] if named else None
        if defn is None:
            break
        inner = defn
    return ""


def _node_target(text: str, node: Any) -> Target:
    start = byte_to_offset(text, node.start_byte)
    end = byte_to_offset(text, node.end_byte)
    line_begin, _ = _line_bounds(text, start)
    whole = not text[line_begin:start].strip()
    if whole:
        start = line_begin
    code = text[start:end]
    return Target(start, end, code, _indent_of(text, start), whole, _symbol_of(node), node.type)


def pick_target(text: str, tree: Any, grammar: str | None, start: int, end: int, *, target: str = "node") -> Target:
    """What an action works on: the selection (extended to whole definitions it cuts through), else the
    smallest enclosing function/class, else the current line. Offsets are str offsets."""
    if target == "file":
        return Target(0, len(text.rstrip("\n")), text.rstrip("\n"), "", True)
    if start > end:
        start, end = end, start
    if text[start:end].strip():
        # Trim whitespace around the selection; snap a start inside leading indentation to the line start.
        while start < end and text[start] in " \t\r\n":
            start += 1
        while end > start and text[end - 1] in " \t\r\n":
            end -= 1
        # "The function it extends to": a selection that cuts a definition in half takes all of it.
        for _ in range(8):
            a = _definition_at(tree, text, grammar, start, start)
            b = _definition_at(tree, text, grammar, end - 1, end - 1) if end > start else None
            changed = False
            for node in (a, b):
                if node is None:
                    continue
                ns, ne = byte_to_offset(text, node.start_byte), byte_to_offset(text, node.end_byte)
                inside = ns <= start and end <= ne
                if not inside and (ns < end and ne > start):
                    start, end, changed = min(start, ns), max(end, ne), True
            if not changed:
                break
        line_begin, _ = _line_bounds(text, start)
        whole = not text[line_begin:start].strip()
        if whole:
            start = line_begin
        node = _definition_at(tree, text, grammar, start, end)
        symbol = ""
        if node is not None and byte_to_offset(text, node.start_byte) >= start and byte_to_offset(text, node.end_byte) <= end:
            symbol = _symbol_of(node)
        return Target(start, end, text[start:end], _indent_of(text, start), whole, symbol, "selection")
    # An empty selection: look at the first non-blank character of the cursor's line.
    line_begin, line_end = _line_bounds(text, start)
    line = text[line_begin:line_end]
    if not line.strip():
        raise InvalidActionRequest(
            f"nothing to act on at line {offset_to_position(text, start)[0]}: the line is empty; select some code")
    first = line_begin + len(line) - len(line.lstrip())
    probe = start if first <= start < line_begin + len(line.rstrip()) else first
    node = _definition_at(tree, text, grammar, probe, probe)
    if node is not None:
        return _node_target(text, node)
    code_end = line_begin + len(line.rstrip())
    return Target(line_begin, code_end, text[line_begin:code_end], _indent_of(text, line_begin), True, "", "line")


# -- prompts -------------------------------------------------------------------------------------------------
def fill(template: str, values: Mapping[str, str]) -> str:
    """Substitute {placeholders} in one pass; other braces stay (code is full of them)."""
    def sub(m: re.Match) -> str:
        key = m.group(1)
        return values[key] if key in values else m.group(0)

    return re.sub(r"\{([a-z_]+)\}", sub, template)


_LANGUAGE_NAMES = {"python": "Python", "javascript": "JavaScript", "typescript": "TypeScript", "tsx": "TypeScript",
                   "go": "Go", "rust": "Rust", "java": "Java", "c": "C", "cpp": "C++", "csharp": "C#",
                   "ruby": "Ruby", "php": "PHP", "lua": "Lua", "bash": "Bash"}
_FENCE_TAGS = {"tsx": "tsx", "csharp": "csharp", "cpp": "cpp", "bash": "bash"}  # else the grammar name


def fence_tag(grammar: str | None, language_id: str = "") -> str:
    """The tag a markdown code fence uses for the language (```python)."""
    return _FENCE_TAGS.get(grammar or "", grammar or (language_id or "").lower())


def language_name(grammar: str | None, language_id: str = "") -> str:
    return _LANGUAGE_NAMES.get(grammar or "", language_id or "code")


def format_diagnostics(text: str, diagnostics: Iterable[Mapping[str, Any]]) -> str:
    """One line per diagnostic with the offending line's code (a small model does badly with line numbers)."""
    out = []
    lines = text.split("\n")
    for d in diagnostics:
        line = int(d.get("line", 0))
        code_line = lines[line].strip() if 0 <= line < len(lines) else ""
        source = " ".join(str(x) for x in (d.get("source") or "", d.get("code") or "") if x)
        msg = str(d.get("message", "")).strip()
        out.append(f"- {msg}" + (f" ({source})" if source else "") + (f" at `{code_line}`" if code_line else ""))
    return "\n".join(out)


def import_hint(grammar: str | None, module: str, symbol: str) -> str:
    if grammar == "python":
        return f"; use pytest and import the code with `from {module} import {symbol or '*'}`"
    if grammar in ("javascript", "typescript", "tsx"):
        return f"; import the code from `./{module}`"
    if grammar == "go":
        return "; use the same package and the standard `testing` package"
    if grammar == "rust":
        return "; use `use super::*;` inside a `#[cfg(test)] mod tests`"
    return ""


def build_messages(spec: ActionSpec, target: Target, *, grammar: str | None, language_id: str = "", path: str = "",
                   instruction: str = "", diagnostics: str = "", test_path: str = "") -> list[dict[str, str]]:
    language = language_name(grammar, language_id)
    code = textwrap.dedent(target.code)
    if not target.line_start:  # a selection from mid-line: dedent the rest as if the first line were indented
        code = target.code.split("\n", 1)[0] + ("\n" + textwrap.dedent(target.code.split("\n", 1)[1])
                                                if "\n" in target.code else "")
    filename = Path(path).name if path else ""
    module = Path(path).stem if path else "module"
    values = {
        "language": language, "lang": fence_tag(grammar, language_id), "code": code, "instruction": (instruction or spec.instruction).strip(),
        "diagnostics": diagnostics, "path": path, "filename": filename or "the current file", "module": module,
        "test_path": Path(test_path).name if test_path else "", "symbol": target.symbol,
        "import_hint": import_hint(grammar, module, target.symbol),
    }
    messages = []
    if spec.system.strip():
        messages.append({"role": "system", "content": fill(spec.system, values)})
    messages.append({"role": "user", "content": fill(spec.user, values)})
    return messages


# -- answers -------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.S | re.M)
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</s>|<\|EOT\|>")


@dataclass(frozen=True)
class Extracted:
    code: str
    fenced: bool
    closed: bool


def extract_code(answer: str, grammar: str | None = None) -> Extracted | None:
    """The code in a model's answer: the first fenced block (preferring one tagged with the language), or
    the whole answer when it has no fences at all. None when there is no code."""
    answer = _SPECIAL.sub("", answer).strip("\n")
    if not answer.strip():
        return None
    blocks = []
    for m in _FENCE.finditer(answer):
        body = m.group(2)
        closed = bool(re.search(r"^[ \t]*```[ \t]*$", answer[m.start(2) + len(body):], re.M))
        blocks.append((m.group(1).lower(), body.rstrip("\n").rstrip(), closed))
    blocks = [b for b in blocks if b[1].strip()]
    if blocks:
        names = {grammar or "", _FENCE_TAGS.get(grammar or "", ""), language_name(grammar).lower(), "", "py" if grammar == "python" else "-",
                 "js" if grammar == "javascript" else "-", "ts" if grammar == "typescript" else "-"}
        tagged = [b for b in blocks if b[0] in names]
        tag, code, closed = (tagged or blocks)[0]
        return Extracted(code, True, closed)
    if "```" in answer:
        return None
    return Extracted(answer.rstrip(), False, True)


def detect_indent_unit(text: str) -> str:
    """The file's indent unit: a tab, or the smallest positive run of leading spaces (default 4)."""
    widths = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        if line.startswith("\t"):
            return "\t"
        n = len(line) - len(line.lstrip(" "))
        if n:
            widths.append(n)
    if not widths:
        return "    "
    unit = min(widths)
    return " " * (unit if unit in (2, 3, 4, 8) else 4)


def _convert_indent(code: str, to_unit: str) -> str:
    src_unit = detect_indent_unit(code)
    if src_unit == to_unit:
        return code
    width = 4 if src_unit == "\t" else len(src_unit)
    out = []
    for line in code.split("\n"):
        stripped = line.lstrip(" \t")
        lead = line[: len(line) - len(stripped)].expandtabs(width)
        level, rest = divmod(len(lead), width)
        out.append(to_unit * level + " " * rest + stripped if stripped else "")
    return "\n".join(out)


def reindent(code: str, target: Target, unit: str) -> str:
    """Put `code` at the target's indentation, in the file's indent style; no trailing newline."""
    lines = code.strip("\n").split("\n")
    if not target.line_start and len(lines) > 1:
        # Mid-line target: the first line follows text already on the line.
        head, rest = lines[0].strip(), textwrap.dedent("\n".join(lines[1:]))
        rest = _convert_indent(rest, unit)
        body = "\n".join(target.indent + unit + ln if ln.strip() else "" for ln in rest.split("\n"))
        return head + "\n" + body
    code = _convert_indent(textwrap.dedent("\n".join(lines)), unit)
    out = [target.indent + ln if ln.strip() else "" for ln in code.split("\n")]
    if not target.line_start:
        out[0] = out[0].lstrip()
    return "\n".join(out).rstrip()


def syntax_errors(text: str, grammar: str | None) -> int | None:
    """ERROR and MISSING nodes in `text` (None without a parser)."""
    parser = get_parser(grammar) if grammar else None
    if parser is None:
        return None
    tree = parser.parse(text.encode("utf-8", "surrogatepass"))
    if not tree.root_node.has_error:
        return 0
    count = 0
    cursor = tree.walk()
    visited_children = False
    while True:
        node = cursor.node
        if not visited_children:
            if node.type == "ERROR" or node.is_missing:
                count += 1
            if node.has_error and cursor.goto_first_child():
                continue
        if cursor.goto_next_sibling():
            visited_children = False
            continue
        if not cursor.goto_parent():
            break
        visited_children = True
    return count


@dataclass(frozen=True)
class Planned:
    """A usable result: the new text for the target range (replace) or for a new file (new_file)."""

    new_text: str
    new_document: str = ""  # replace: the whole document after the edit
    test_path: str = ""  # new_file: where it goes


def _cut_off(extracted: Extracted, finish_reason: str, spec: ActionSpec) -> str:
    if finish_reason == "length" and not extracted.closed:
        return (f"the answer was cut off at max_tokens={spec.max_tokens} before the code was complete "
                f"(raise `max_tokens` for the {spec.name!r} action)")
    return ""


_IMPORT_LINE = re.compile(r"^[ \t]*(import\s|from\s+\S+\s+import\s|#include\s|using\s|use\s|require\b)")


def _drop_known_imports(code: str, target: Target, text: str, grammar: str | None) -> str:
    """Models like to repeat the file's imports above the code; the edit may only touch the target, so
    leading import lines that the document already has (outside the target) are dropped."""
    lines = code.split("\n")
    outside = text[: target.start] + text[target.end :]
    known = {ln.strip() for ln in outside.split("\n") if ln.strip()}
    i = 0
    while i < len(lines) and (not lines[i].strip() or (_IMPORT_LINE.match(lines[i]) and lines[i].strip() in known
                                                        and lines[i].strip() not in target.code)):
        i += 1
    return "\n".join(lines[i:]) if i < len(lines) else code


def plan_replacement(answer: str, finish_reason: str, spec: ActionSpec, text: str, target: Target,
                     grammar: str | None) -> Planned:
    """The model's answer as the replacement of `target`, or UnusableAnswer with the reason."""
    extracted = extract_code(answer, grammar)
    if extracted is None:
        raise UnusableAnswer("the model's answer contains no code")
    if not extracted.fenced and syntax_errors(textwrap.dedent(extracted.code), grammar):
        raise UnusableAnswer(f"the model answered in prose, not code: {_preview(answer)}")
    code = reindent(_drop_known_imports(extracted.code, target, text, grammar), target, detect_indent_unit(text))
    if not code.strip():
        raise UnusableAnswer("the model's answer contains no code")
    if code == target.code.rstrip():
        raise UnusableAnswer("the model returned the code unchanged")
    if spec.keep_symbol and target.symbol and not re.search(rf"\b{re.escape(target.symbol)}\b", code):
        raise UnusableAnswer(f"the model's code no longer defines `{target.symbol}`")
    new_document = text[: target.start] + code + text[target.end :]
    before, after = syntax_errors(text, grammar), syntax_errors(new_document, grammar)
    if before is not None and after is not None and after > before:
        reason = _cut_off(extracted, finish_reason, spec) or (
            f"the model's code would add syntax errors ({after - before} new)" +
            ("" if extracted.fenced else "; the answer had no code block"))
        raise UnusableAnswer(reason)
    return Planned(code, new_document)


def _preview(answer: str, limit: int = 100) -> str:
    flat = " ".join(answer.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")


def import_instead_of_copy(code: str, grammar: str | None, module: str, symbol: str) -> str:
    """Small models often paste the code under test into the test file, or use it without importing it.
    For Python, drop a pasted top-level definition of `symbol` and make sure it is imported from `module`,
    so the tests test the real code."""
    if grammar != "python" or not symbol or not module.isidentifier():
        return code
    parser = get_parser("python")
    if parser is None:
        return code
    data = code.encode("utf-8")
    root = parser.parse(data).root_node
    cuts = []
    for node in root.named_children:
        inner = node.child_by_field_name("definition") if node.type == "decorated_definition" else node
        if inner is not None and inner.type in ("function_definition", "class_definition"):
            name = inner.child_by_field_name("name")
            if name is not None and name.text.decode() == symbol:
                cuts.append((node.start_byte, node.end_byte))
    for start, end in reversed(cuts):
        data = data[:start] + data[end:]
    out = re.sub(r"\n{3,}", "\n\n\n", data.decode("utf-8")).strip("\n") + "\n"
    if not re.search(rf"\b{re.escape(symbol)}\b", out):
        return out
    if not re.search(rf"^\s*(from\s+{re.escape(module)}\s+import\b.*\b{re.escape(symbol)}\b|import\s+{re.escape(module)}\b)",
                     out, re.M):
        lines = out.split("\n")
        imports = [i for i, ln in enumerate(lines) if re.match(r"(import|from)\s", ln)]
        if imports:
            lines.insert(imports[-1] + 1, f"from {module} import {symbol}")
        else:
            lines[:0] = [f"from {module} import {symbol}", ""]
        out = "\n".join(lines)
    return out


def _last_parsing_prefix(code: str, grammar: str | None, max_drop: int = 60) -> str:
    """A test file cut off at max_tokens: the longest prefix (whole lines) that parses, if one is close."""
    lines = code.rstrip("\n").split("\n")
    for drop in range(1, min(max_drop, len(lines) - 1) + 1):
        candidate = re.sub(r"(\n[ \t]*(#|//)[^\n]*)+\Z", "", "\n".join(lines[:-drop]).rstrip()) + "\n"
        if not syntax_errors(candidate, grammar):
            return candidate
    return code


def plan_new_file(answer: str, finish_reason: str, spec: ActionSpec, grammar: str | None, test_path: str,
                  *, module: str = "", symbol: str = "") -> Planned:
    extracted = extract_code(answer, grammar)
    if extracted is None or not extracted.code.strip():
        raise UnusableAnswer("the model's answer contains no code")
    code = textwrap.dedent(extracted.code).strip("\n")
    if not extracted.closed:  # cut off at max_tokens: drop a dangling comment line at the end
        code = re.sub(r"(\n[ \t]*(#|//)[^\n]*)+\Z", "", code)
    code += "\n"
    if not extracted.closed and syntax_errors(code, grammar):
        code = _last_parsing_prefix(code, grammar)
    if not syntax_errors(code, grammar):
        code = import_instead_of_copy(code, grammar, module, symbol)
    errors = syntax_errors(code, grammar)
    if errors:
        raise UnusableAnswer(_cut_off(extracted, finish_reason, spec) or
                             f"the model's test file has syntax errors ({errors})")
    if not re.search(r"test|assert|expect|describe|\bit\(", code, re.I) or (
            grammar == "python" and not re.search(r"^\s*(async\s+)?def test|^\s*class Test|\bassert\b", code, re.M)):
        raise UnusableAnswer(f"the model's answer has no tests: {_preview(answer)}")
    return Planned(code, test_path=test_path)


def markdown_answer(answer: str) -> str:
    text = _SPECIAL.sub("", answer).strip()
    if not text:
        raise UnusableAnswer("the model gave an empty explanation")
    if text.count("```") % 2:  # cut off inside a code block: close it so the markdown renders
        text += "\n```"
    return text


# -- files and edits -----------------------------------------------------------------------------------------
_TEST_NAMES = {
    "python": "test_{stem}{ext}", "javascript": "{stem}.test{ext}", "typescript": "{stem}.test{ext}",
    "tsx": "{stem}.test{ext}", "go": "{stem}_test{ext}", "rust": "{stem}_tests{ext}", "java": "{Stem}Test{ext}",
    "c": "test_{stem}{ext}", "cpp": "test_{stem}{ext}", "csharp": "{Stem}Tests{ext}", "ruby": "{stem}_test{ext}",
    "php": "{Stem}Test{ext}", "lua": "{stem}_spec{ext}", "bash": "test_{stem}{ext}",
}


def test_file_path(path: str, grammar: str | None, exists=os.path.exists) -> str:
    """A new test file next to the source, named the language's way, never an existing file."""
    p = Path(path)
    stem, ext = p.stem, p.suffix
    pattern = _TEST_NAMES.get(grammar or "", "test_{stem}{ext}")
    name = pattern.format(stem=stem, Stem=stem[:1].upper() + stem[1:], ext=ext)
    candidate = p.with_name(name)
    n = 2
    while exists(str(candidate)):
        candidate = p.with_name(Path(name).stem.replace(".test", f"_{n}.test") + Path(name).suffix
                                if ".test" in name else f"{Path(name).stem}_{n}{Path(name).suffix}")
        n += 1
    return str(candidate)


def to_range(text: str, start: int, end: int) -> lsp.Range:
    sl, sc = offset_to_position(text, start)
    el, ec = offset_to_position(text, end)
    return lsp.Range(start=lsp.Position(sl, sc), end=lsp.Position(el, ec))


def replace_edit(uri: str, version: int | None, text: str, target: Target, new_text: str, *,
                 document_changes: bool = True) -> lsp.WorkspaceEdit:
    edit = lsp.TextEdit(range=to_range(text, target.start, target.end), new_text=new_text)
    if not document_changes:
        return lsp.WorkspaceEdit(changes={uri: [edit]})
    return lsp.WorkspaceEdit(document_changes=[lsp.TextDocumentEdit(
        text_document=lsp.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version), edits=[edit])])


def new_file_edit(uri: str, text: str) -> lsp.WorkspaceEdit:
    return lsp.WorkspaceEdit(document_changes=[
        lsp.CreateFile(uri=uri, options=lsp.CreateFileOptions(overwrite=False, ignore_if_exists=False)),
        lsp.TextDocumentEdit(text_document=lsp.OptionalVersionedTextDocumentIdentifier(uri=uri, version=None),
                             edits=[lsp.TextEdit(range=lsp.Range(start=lsp.Position(0, 0), end=lsp.Position(0, 0)),
                                                 new_text=text)]),
    ])


def explanation_name(path: str, target: Target, text: str) -> str:
    line = offset_to_position(text, target.start)[0] + 1
    base = f"{Path(path).stem or 'untitled'}-{target.symbol or 'line'}-L{line}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:120]


def explanation_markdown(title: str, path: str, target: Target, text: str, body: str) -> str:
    line = offset_to_position(text, target.start)[0] + 1
    where = f"{Path(path).name}:{line}" if path else f"line {line}"
    what = f"`{target.symbol}`" if target.symbol else "selection"
    return f"# {title.replace(' (infill)', '')}: {what} ({where})\n\n{body}\n"
