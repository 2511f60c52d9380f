"""FIM prompt templates (prompts/fim.toml): loading, rendering and detection from a GGUF vocabulary.

Rendering is a plain string substitution of `{prefix}` and `{suffix}` (code is full of braces, so no
str.format). Extra context from other files goes before the current file: in the family's multi-file
layout where it has one (Qwen2.5-Coder's `<|file_sep|>`), else as path-commented blocks in the prefix.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from lsp_server.catalog import _data_file


@dataclass(frozen=True)
class FimTemplate:
    name: str
    order: str  # psm | spm | prefix
    format: str
    markers: tuple[str, ...]
    stop: tuple[str, ...]
    repo_name: str = ""
    file_sep: str = ""
    current_file: str = ""

    @property
    def fim(self) -> bool:
        return self.order != "prefix"


@lru_cache(maxsize=1)
def load_templates() -> dict[str, FimTemplate]:
    data = tomllib.loads(_data_file("prompts", "fim.toml").read_text(encoding="utf-8"))
    return {
        name: FimTemplate(
            name=name,
            order=t["order"],
            format=t["format"],
            markers=tuple(t.get("markers", ())),
            stop=tuple(t.get("stop", ())),
            repo_name=t.get("repo_name", ""),
            file_sep=t.get("file_sep", ""),
            current_file=t.get("current_file", ""),
        )
        for name, t in data["templates"].items()
    }


def get_template(name: str) -> FimTemplate:
    templates = load_templates()
    if name not in templates:
        raise KeyError(f"unknown FIM template {name!r} (known: {', '.join(sorted(templates))})")
    return templates[name]


def _sub(fmt: str, **values: str) -> str:
    # One pass over the format so that a value containing "{suffix}" is never substituted again.
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "{":
            end = fmt.find("}", i)
            key = fmt[i + 1 : end] if end != -1 else ""
            if key in values:
                out.append(values[key])
                i = end + 1
                continue
        out.append(fmt[i])
        i += 1
    return "".join(out)


# Line-comment syntax for path-commented extra context in families without a multi-file layout.
_COMMENT = {"python": "#", "ruby": "#", "bash": "#", "lua": "--", "sql": "--", "haskell": "--"}


@dataclass(frozen=True)
class ExtraFile:
    path: str
    text: str


def render(
    template: FimTemplate,
    prefix: str,
    suffix: str,
    *,
    extra: Sequence[ExtraFile] = (),
    path: str = "",
    repo: str = "",
    grammar: str | None = None,
) -> str:
    """The prompt for one request. Extra files and the current path come first, in a stable order."""
    if extra and template.file_sep:
        # The family's own repository layout: files first, then the FIM part for the current file.
        head = _sub(template.repo_name, repo=repo) if repo and template.repo_name else ""
        head += "".join(_sub(template.file_sep, path=f.path, text=f.text) for f in extra)
        if path and template.current_file:
            head += _sub(template.current_file, path=path)
        return head + render(template, prefix, suffix)
    if extra:
        mark = _COMMENT.get(grammar or "", "//")
        head = "".join(f"{mark} Path: {f.path}\n{f.text}\n\n" for f in extra)
        prefix = head + (f"{mark} Path: {path}\n" if path else "") + prefix
    if template.order == "prefix":
        return prefix
    return _sub(template.format, prefix=prefix, suffix=suffix)


def detect_template(is_single_token: Callable[[str], bool], family_hint: str = "") -> FimTemplate:
    """Choose a template for an unknown GGUF from the FIM tokens present in its vocabulary."""
    templates = load_templates()
    if family_hint in templates:
        return templates[family_hint]
    for name in ("qwen2.5-coder", "starcoder", "deepseek-coder", "codestral", "codellama"):
        t = templates[name]
        if t.markers and all(is_single_token(m) for m in t.markers):
            return t
    return templates["prefix-only"]
