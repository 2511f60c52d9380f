"""Editor end-to-end tests: real editors (Neovim 0.12, code-server) start the real server with the real model.

Everything they need is installed by `make editors-setup` (the `test` target depends on it). Screenshots go to
the test's tmp dir, and also to $INFILL_SCREENSHOTS when set (`make editors-screenshots` sets docs/images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from editor_env import need, venv_bin


@pytest.fixture(scope="session")
def server_cmd() -> list[str]:
    return [str(need(venv_bin("infill-ls"), "infill-ls")), "serve"]


@pytest.fixture
def save_screenshot():
    """Copy a screenshot to $INFILL_SCREENSHOTS (docs/images for `make editors-screenshots`)."""

    def save(path: Path, name: str) -> None:
        target = os.environ.get("INFILL_SCREENSHOTS")
        if target and path.exists():
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(target) / name)

    return save
