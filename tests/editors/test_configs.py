"""The other editors' configurations in editors/ (shown in docs/EDITORS.md) parse, and say what the server expects."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
from editor_env import EDITORS, ROOT

from lsp_server.config import parse_settings


def _settings_ok(options: dict) -> None:
    settings, errors = parse_settings(options)
    assert errors == [], errors
    assert settings.model == "default"


def test_helix_languages_toml():
    data = tomllib.loads((EDITORS / "helix" / "languages.toml").read_text())
    server = data["language-server"]["infill-ls"]
    assert server["command"] == "infill-ls" and server["args"] == ["serve"]
    _settings_ok(server["config"])
    assert all("infill-ls" in lang["language-servers"] for lang in data["language"])


def test_sublime_lsp_settings():
    text = (EDITORS / "sublime" / "LSP.sublime-settings").read_text()
    data = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE))  # Sublime allows // comments
    client = data["clients"]["infill-ls"]
    assert client["command"] == ["infill-ls", "serve"] and client["enabled"]
    _settings_ok(client["initializationOptions"])


def test_kate_lsp_client_settings():
    server = json.loads((EDITORS / "kate" / "lspclient-settings.json").read_text())["servers"]["python"]
    assert server["command"] == ["infill-ls", "serve"] and re.match(server["highlightingModeRegex"], "Python")
    _settings_ok(server["initializationOptions"])


def test_zed_extension_and_settings():
    ext = tomllib.loads((EDITORS / "zed" / "extension.toml").read_text())
    assert ext["schema_version"] == 1 and "infill-ls" in ext["language_servers"]
    cargo = tomllib.loads((EDITORS / "zed" / "Cargo.toml").read_text())
    assert cargo["lib"]["crate-type"] == ["cdylib"] and "zed_extension_api" in cargo["dependencies"]
    settings = json.loads((EDITORS / "zed" / "settings.json").read_text())
    _settings_ok(settings["lsp"]["infill-ls"]["initialization_options"])
    assert "infill-ls" in settings["languages"]["Python"]["language_servers"]
    lib = (EDITORS / "zed" / "src" / "lib.rs").read_text()
    assert lib.count("{") == lib.count("}") and "register_extension!(InfillExtension)" in lib


@pytest.mark.skipif(not shutil.which("emacs"), reason="emacs not installed (make editors-setup installs emacs-nox)")
def test_emacs_eglot_config_loads():
    """Emacs reads and evaluates the file; Eglot then gets a contact whose options the server accepts."""
    el = EDITORS / "emacs" / "infill-eglot.el"
    script = (f'(progn (defvar eglot-server-programs nil) (load "{el}" nil t) (provide (quote eglot)) '
              '(princ (json-encode (plist-get (cdr (car eglot-server-programs)) :initializationOptions))) '
              '(terpri) (princ (car (cdr (car eglot-server-programs)))))')
    out = subprocess.run(["emacs", "--batch", "-Q", "--eval", "(require 'json)", "--eval", script],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    options_json, program = out.stdout.strip().splitlines()[-2:]
    assert program == "infill-ls"
    _settings_ok(json.loads(options_json))


def test_editors_doc_mentions_every_config():
    doc = (ROOT / "docs" / "EDITORS.md").read_text()
    for name in ("Helix", "Emacs", "Sublime Text", "Kate", "Zed", "infill-ls complete", "Neovim", "VS Code"):
        assert name in doc, name
    for image in re.findall(r"\]\((images/[^)]+)\)", doc):
        assert (ROOT / "docs" / image).exists(), image
