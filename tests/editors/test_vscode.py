"""VS Code end to end: code-server with the extension's .vsix installed, driven by Playwright in Debian's Chromium.

code-server (VS Code 1.139 in the browser) runs the real extension host; the extension starts the real
infill-ls server, which loads the real default model. The harness (tests/editors/harness/vscode_e2e.mjs)
types in add.py, waits for the ghost text, accepts it with Tab, saves, then runs "infill: Explain selection".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
from editor_env import CHROMIUM, CODE_SERVER, EDITORS, HARNESS, NODE_BIN, need

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]

SOURCE = "def add(a, b):\n    return\n"
VSIX = EDITORS / "vscode" / "infill-ls.vsix"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"code-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"code-server did not listen on {port} within {timeout}s")


@pytest.fixture
def code_server(tmp_path, server_cmd):
    need(CODE_SERVER, "code-server")
    need(VSIX, "the .vsix (npm run package in editors/vscode)")
    need(CHROMIUM, "Debian's chromium")
    env = dict(os.environ, PATH=f"{NODE_BIN}:{os.environ['PATH']}", XDG_CONFIG_HOME=str(tmp_path / "xdgconfig"),
               XDG_DATA_HOME=str(tmp_path / "xdgdata"))
    ws, ud, ext = tmp_path / "ws", tmp_path / "user-data", tmp_path / "extensions"
    ws.mkdir()
    (ws / "add.py").write_text(SOURCE)
    (ud / "User").mkdir(parents=True)
    (ud / "User" / "settings.json").write_text(json.dumps({
        "infill.server.path": server_cmd[0],
        "infill.cache.dir": str(tmp_path / "completion-cache"),
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "workbench.enableExperiments": False,
        "security.workspace.trust.enabled": False,
        "extensions.autoCheckUpdates": False,
        "extensions.autoUpdate": False,
        "telemetry.telemetryLevel": "off",
        "update.mode": "none",
        "git.enabled": False,
        "chat.disableAIFeatures": True,
        "editor.inlineSuggest.enabled": True,
        "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
        "editor.suggestOnTriggerCharacters": False,
    }, indent=2))
    common = ["--config", str(tmp_path / "config.yaml"), "--user-data-dir", str(ud), "--extensions-dir", str(ext)]
    install = subprocess.run([str(CODE_SERVER), *common, "--install-extension", str(VSIX)],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
    assert install.returncode == 0 and "successfully installed" in install.stdout, install.stdout + install.stderr
    port = free_port()
    log = open(tmp_path / "code-server.log", "w")
    proc = subprocess.Popen([str(CODE_SERVER), *common, "--auth", "none", "--bind-addr", f"127.0.0.1:{port}",
                             "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
                             "--disable-getting-started-override", str(ws)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        wait_port(port, proc, 60)
        yield {"url": f"http://127.0.0.1:{port}/?folder={ws}", "ws": ws, "env": env, "tmp": tmp_path}
    finally:
        os.killpg(proc.pid, 15)  # code-server, its extension host and the infill-ls server it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def test_ghost_text_tab_accept_and_explain(code_server, save_screenshot):
    out = code_server["tmp"] / "out"
    out.mkdir()
    need(HARNESS / "node_modules" / "playwright-core", "playwright-core (npm ci in tests/editors/harness)")
    started = time.monotonic()
    run = subprocess.run(["node", str(HARNESS / "vscode_e2e.mjs"), code_server["url"], str(out)],
                         env=code_server["env"], capture_output=True, text=True, timeout=200, check=False)
    print(run.stderr)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("vscode-ghost-text.png", "vscode-explain.png"):
        save_screenshot(out / name, name)
    assert result["ok"], f"{result.get('error')}\nsteps: {result['steps']}\nlog: {(code_server['tmp'] / 'code-server.log').read_text()[-3000:]}"

    ghost = result["ghost"].replace("\n", "")
    assert "a" in ghost and "b" in ghost, ghost
    assert result["status"] == "infill-ls model ready", result["status"]
    saved = (code_server["ws"] / "add.py").read_text()
    line = saved.splitlines()[1]
    assert line.startswith("    return ") and ghost.replace(" ", "") in line.replace(" ", ""), (ghost, saved)
    compile(saved, "add.py", "exec")
    assert result["explanation"] and ("add" in result["explanation"]), result["explanation"]
    print(f"[vscode] {result['steps']} timings {result['timings']} in {time.monotonic() - started:.1f}s")
