"""Shared fixtures. End-to-end tests use ONE real server process with the real default model per session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsp_server import catalog  # noqa: E402
from lsp_server.client import InfillClient  # noqa: E402
from lsp_server.config import cache_home  # noqa: E402


def _isolate_cache() -> Path:
    """Point INFILL_LS_CACHE (inherited by every server process the tests start) at a temporary dir, so
    that completions, explanations and logs written by tests never land in the user's ~/.cache. The
    read-mostly parts of the real cache (downloaded models, the built llama-server, editors) are linked in."""
    real = cache_home()
    tmp = Path(tempfile.mkdtemp(prefix="infill-ls-test-cache-"))
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name not in ("completions", "explanations", "logs"):
                (tmp / entry.name).symlink_to(entry)
    os.environ["INFILL_LS_CACHE"] = str(tmp)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


TEST_CACHE = _isolate_cache()


def default_model_path() -> Path:
    return catalog.model_path(catalog.load_catalog().get("default"))


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = default_model_path()
    if not path.exists():
        pytest.fail(f"default model missing at {path}: run `make model` (make test does it)")
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("completion-cache")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def real_server(model_path, session_cache):
    """The real server over stdio with the default model (loaded at startup)."""
    options = {"load": "startup", "cache": {"dir": str(session_cache)}}
    async with InfillClient(options, root=str(ROOT)) as client:
        yield client


@pytest.fixture
def doc_uri(tmp_path):
    counter = iter(range(10_000))

    def make(name: str = "doc.py") -> str:
        return (tmp_path / f"{next(counter)}_{name}").as_uri()

    return make


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
