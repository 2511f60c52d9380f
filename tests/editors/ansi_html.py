"""A terminal screen (tmux `capture-pane -e -p`: text with SGR escapes) as an HTML page, for a PNG screenshot."""

from __future__ import annotations

import html
import re

_BASE16 = ["#1e1e1e", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
           "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"]
FG, BG = "#d4d4d4", "#1e1e1e"
_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
_OTHER = re.compile(r"\x1b(\[[0-9;?]*[A-Za-ln-z]|\][^\x07]*\x07|[()][A-Z0-9])")


def _xterm256(n: int) -> str:
    if n < 16:
        return _BASE16[n]
    if n < 232:
        n -= 16
        levels = [0, 95, 135, 175, 215, 255]
        return f"#{levels[n // 36]:02x}{levels[(n // 6) % 6]:02x}{levels[n % 6]:02x}"
    v = 8 + (n - 232) * 10
    return f"#{v:02x}{v:02x}{v:02x}"


def _apply(params: list[int], st: dict) -> None:
    i = 0
    while i < len(params):
        p = params[i]
        if p == 0:
            st.clear()
        elif p == 1:
            st["bold"] = True
        elif p == 3:
            st["italic"] = True
        elif p == 4:
            st["underline"] = True
        elif p == 7:
            st["reverse"] = True
        elif p == 22:
            st.pop("bold", None)
        elif p == 23:
            st.pop("italic", None)
        elif p == 24:
            st.pop("underline", None)
        elif p == 27:
            st.pop("reverse", None)
        elif 30 <= p <= 37 or 90 <= p <= 97:
            st["fg"] = _BASE16[p - 30 if p < 90 else p - 90 + 8]
        elif 40 <= p <= 47 or 100 <= p <= 107:
            st["bg"] = _BASE16[p - 40 if p < 100 else p - 100 + 8]
        elif p == 39:
            st.pop("fg", None)
        elif p == 49:
            st.pop("bg", None)
        elif p in (38, 48) and i + 1 < len(params):
            key = "fg" if p == 38 else "bg"
            if params[i + 1] == 5 and i + 2 < len(params):
                st[key] = _xterm256(params[i + 2])
                i += 2
            elif params[i + 1] == 2 and i + 4 < len(params):
                st[key] = "#" + "".join(f"{c:02x}" for c in params[i + 2:i + 5])
                i += 4
        i += 1


def _span(text: str, st: dict) -> str:
    fg, bg = st.get("fg", FG), st.get("bg", BG)
    if st.get("reverse"):
        fg, bg = bg, fg
    css = [f"color:{fg}", f"background:{bg}"]
    if st.get("bold"):
        css.append("font-weight:bold")
    if st.get("italic"):
        css.append("font-style:italic")
    if st.get("underline"):
        css.append("text-decoration:underline")
    return f'<span style="{";".join(css)}">{html.escape(text)}</span>'


def ansi_to_html(screen: str, title: str = "") -> str:
    rows = []
    for line in screen.rstrip("\n").split("\n"):
        line = _OTHER.sub("", line)
        st: dict = {}
        out, pos = [], 0
        for m in _SGR.finditer(line):
            if m.start() > pos:
                out.append(_span(line[pos:m.start()], st))
            _apply([int(x) if x else 0 for x in re.split("[;:]", m.group(1))], st)
            pos = m.end()
        if pos < len(line):
            out.append(_span(line[pos:], st))
        rows.append("".join(out) or " ")
    body = "\n".join(rows)
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<body style='margin:0;background:{BG}'><pre style=\"margin:0;padding:8px;color:{FG};"
            "font:15px/1.3 'DejaVu Sans Mono',monospace\">" + body + "</pre></body>")
