"""Context from outside the current file: similar snippets and local imports.

``select_chunks`` picks the line windows of other open/recent files that look
most like the code around the cursor (token-set Jaccard similarity) and
returns them in a stable order, so that prompts for consecutive keystrokes
keep sharing a prefix.  ``local_imports`` resolves the current file's
imports that point into the workspace to file paths worth reading.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Chunk:
    path: str
    text: str
    score: float


@lru_cache(maxsize=4096)
def _token_set(text: str) -> frozenset[str]:
    return frozenset(_IDENT.findall(text))


@lru_cache(maxsize=256)
def _split(text: str, chunk_lines: int) -> tuple[tuple[int, str], ...]:
    # Files are re-offered on every request; memoise their windows by content.
    lines = text.splitlines(keepends=True)
    out = []
    for i in range(0, len(lines), chunk_lines):
        chunk = "".join(lines[i:i + chunk_lines])
        if chunk.strip():
            out.append((i, chunk))
    return tuple(out)


def select_chunks(cursor_text: str, files: list[tuple[str, str]], count_tokens: Callable[[str], int],
                  budget_tokens: int, chunk_lines: int = 20) -> list[Chunk]:
    """Best-matching line windows of ``files`` within ``budget_tokens``.

    Ranked by Jaccard similarity of identifier sets with ``cursor_text``;
    returned ordered by (path, position), not by score, for prompt stability.
    """
    if budget_tokens <= 0 or not files:
        return []
    query = _token_set(cursor_text)
    if not query:
        return []
    chunk_lines = max(chunk_lines, 1)
    scored = []
    for path, text in files:
        for line, chunk in _split(text, chunk_lines):
            tokens = _token_set(chunk)
            inter = len(query & tokens)
            if not inter:
                continue
            score = inter / len(query | tokens)
            scored.append((score, path, line, chunk))
    # Best first; ties broken by position so the choice is deterministic.
    scored.sort(key=lambda s: (-s[0], s[1], s[2]))
    chosen = []
    used = 0
    for score, path, line, chunk in scored:
        cost = count_tokens(chunk)
        if used + cost > budget_tokens:
            continue
        used += cost
        chosen.append((path, line, Chunk(path=path, text=chunk, score=score)))
    chosen.sort(key=lambda c: (c[0], c[1]))
    return [c for _, _, c in chosen]


# -- local imports ------------------------------------------------------------

_PY_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w., \t]+)", re.M)
_PY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+\(?([\w, \t*]+)", re.M)
_JS_SPEC = re.compile(
    r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*|^\s*import\s+)["'](\.{1,2}/[^"'\n]+)["']""", re.M
)
_C_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.M)
_GO_IMPORT = re.compile(r'"([^"\n]+)"')
_GO_BLOCK = re.compile(r"^import\s*(\([^)]*\)|\"[^\"\n]+\")", re.M)
_RUST_MOD = re.compile(r"^[ \t]*(?:pub(?:\([^)]*\))?[ \t]+)?mod[ \t]+(\w+)[ \t]*;", re.M)
_RUST_USE = re.compile(r"^[ \t]*(?:pub(?:\([^)]*\))?[ \t]+)?use[ \t]+(crate|self|super)::([\w:]+)", re.M)
_RUBY_REQ = re.compile(r"""^[ \t]*require_relative[ \t(]*["']([^"'\n]+)["']""", re.M)
_LUA_REQ = re.compile(r"""\brequire[ \t]*\(?[ \t]*["']([\w./-]+)["']""")
_PHP_REQ = re.compile(r"""\b(?:require|include)(?:_once)?[ \t(]*(?:__DIR__[ \t]*\.[ \t]*)?["']([^"'\n]+)["']""")
_SH_SRC = re.compile(r"""^[ \t]*(?:source|\.)[ \t]+["']?([\w./-]+)""", re.M)
_JAVA_IMPORT = re.compile(r"^[ \t]*import[ \t]+(?:static[ \t]+)?([\w.]+)[ \t]*;", re.M)

_JS_EXTS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts", ".mts", ".cts")


def _within(path: str, root: str | None) -> bool:
    if root is None:
        return True
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)
    except ValueError:
        return False


def _first_file(candidates) -> str | None:
    for c in candidates:
        if os.path.isfile(c):
            return os.path.normpath(c)
    return None


def _python(text: str, here: str, roots: list[str]) -> list[str | None]:
    found: list[str | None] = []

    def module(base: str, dotted: str) -> str | None:
        parts = [p for p in dotted.split(".") if p]
        target = os.path.join(base, *parts) if parts else base
        return _first_file([target + ".py", target + ".pyi", os.path.join(target, "__init__.py")])

    for m in _PY_IMPORT.finditer(text):
        for name in m.group(1).split(","):
            name = name.strip().split()[0] if name.strip() else ""
            if name:
                found.extend(module(r, name) for r in roots)
    for m in _PY_FROM.finditer(text):
        dots, mod, names = m.group(1), m.group(2), m.group(3)
        if dots:
            base = here
            for _ in range(len(dots) - 1):
                base = os.path.dirname(base)
            bases = [base]
        else:
            bases = roots
        for base in bases:
            found.append(module(base, mod))
            # `from pkg import sub` may name a submodule rather than an attribute.
            for name in names.replace("(", " ").split(","):
                name = name.strip()
                if name and name != "*" and _IDENT.fullmatch(name):
                    sub = module(base, f"{mod}.{name}" if mod else name)
                    if sub:
                        found.append(sub)
    return found


def _js(text: str, here: str) -> list[str | None]:
    found = []
    for m in _JS_SPEC.finditer(text):
        target = os.path.join(here, m.group(1))
        _, ext = os.path.splitext(target)
        candidates = [target] if ext in _JS_EXTS else []
        if ext in (".js", ".jsx", ".mjs", ".cjs"):
            # TS sources import their siblings with a .js suffix.
            stem = target[: -len(ext)]
            candidates += [stem + ".ts", stem + ".tsx", stem + ".mts"]
        candidates += [target + e for e in _JS_EXTS]
        candidates += [os.path.join(target, "index" + e) for e in _JS_EXTS]
        found.append(_first_file(candidates))
    return found


def _go(text: str, root: str | None) -> list[str | None]:
    if not root:
        return []
    try:
        with open(os.path.join(root, "go.mod"), encoding="utf-8") as fh:
            mod = re.search(r"^module\s+(\S+)", fh.read(), re.M)
    except OSError:
        return []
    if not mod:
        return []
    prefix = mod.group(1)
    found: list[str | None] = []
    for block in _GO_BLOCK.finditer(text):
        for spec in _GO_IMPORT.findall(block.group(1)):
            if spec != prefix and not spec.startswith(prefix + "/"):
                continue
            pkg_dir = os.path.join(root, spec[len(prefix):].lstrip("/"))
            try:
                names = sorted(os.listdir(pkg_dir))
            except OSError:
                continue
            # A package is a directory: offer its non-test sources (a few).
            files = [os.path.join(pkg_dir, n) for n in names if n.endswith(".go") and not n.endswith("_test.go")]
            found.extend(files[:4])
    return found


def _rust(text: str, path: str, root: str | None) -> list[str | None]:
    here = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    mod_dir = here if stem in ("main", "lib", "mod") else os.path.join(here, stem)
    found: list[str | None] = []
    for m in _RUST_MOD.finditer(text):
        name = m.group(1)
        found.append(_first_file([os.path.join(mod_dir, name + ".rs"), os.path.join(mod_dir, name, "mod.rs")]))
    src = os.path.join(root, "src") if root else None
    for m in _RUST_USE.finditer(text):
        kind, rest = m.group(1), [p for p in m.group(2).split("::") if p]
        base = {"crate": src, "self": mod_dir, "super": os.path.dirname(mod_dir)}[kind]
        if not base:
            continue
        # Longest module path that exists: `use crate::a::b::Item` -> a/b.rs or a.rs.
        for n in range(len(rest), 0, -1):
            target = os.path.join(base, *rest[:n])
            hit = _first_file([target + ".rs", os.path.join(target, "mod.rs")])
            if hit:
                found.append(hit)
                break
    return found


def _java(text: str, root: str | None) -> list[str | None]:
    if not root:
        return []
    found = []
    for m in _JAVA_IMPORT.finditer(text):
        rel = m.group(1).replace(".", os.sep) + ".java"
        found.append(_first_file(os.path.join(root, base, rel) for base in ("", "src/main/java", "src", "app/src/main/java")))
    return found


def local_imports(text: str, path: str, grammar: str | None, workspace_root: str | None) -> list[str]:
    """Workspace files that ``text`` (the file at ``path``) imports, in import order."""
    here = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    root = os.path.abspath(workspace_root) if workspace_root else None
    found: list[str | None] = []
    try:
        if grammar == "python":
            roots = [r for r in ([root, os.path.join(root, "src")] if root else []) if os.path.isdir(r)] or [here]
            if here not in roots:
                roots.append(here)  # scripts import their siblings
            found = _python(text, here, roots)
        elif grammar in ("javascript", "typescript", "tsx"):
            found = _js(text, here)
        elif grammar in ("c", "cpp"):
            for m in _C_INCLUDE.finditer(text):
                name = m.group(1)
                bases = [here] + ([root, os.path.join(root, "include"), os.path.join(root, "src")] if root else [])
                found.append(_first_file(os.path.join(b, name) for b in bases))
        elif grammar == "go":
            found = _go(text, root)
        elif grammar == "rust":
            found = _rust(text, os.path.abspath(path), root)
        elif grammar == "java":
            found = _java(text, root)
        elif grammar == "ruby":
            for m in _RUBY_REQ.finditer(text):
                target = os.path.join(here, m.group(1))
                found.append(_first_file([target, target + ".rb"]))
        elif grammar == "lua":
            for m in _LUA_REQ.finditer(text):
                rel = m.group(1).replace(".", os.sep)
                bases = [here] + ([root] if root else [])
                found.append(_first_file(c for b in bases for c in (os.path.join(b, rel + ".lua"), os.path.join(b, rel, "init.lua"))))
        elif grammar == "php":
            for m in _PHP_REQ.finditer(text):
                name = m.group(1).lstrip("/") if m.group(0).find("__DIR__") != -1 else m.group(1)
                bases = [here] + ([root] if root else [])
                found.append(_first_file(os.path.join(b, name) for b in bases))
        elif grammar == "bash":
            for m in _SH_SRC.finditer(text):
                bases = [here] + ([root] if root else [])
                found.append(_first_file(os.path.join(b, m.group(1)) for b in bases))
    except Exception:  # best effort: a resolution bug must not break completion
        found = [f for f in found if isinstance(f, str)]
    me = os.path.normpath(os.path.abspath(path)) if path else None
    out: list[str] = []
    seen = set()
    for f in found:
        if not f:
            continue
        f = os.path.normpath(os.path.abspath(f))
        if f == me or f in seen or not _within(f, root):
            continue
        seen.add(f)
        out.append(f)
    return out
