"""LoRA adapters through the real server over stdio, on the real default model.

The adapters are made here with the `gguf` package (what convert_lora_to_gguf.py writes: general.type
"adapter", adapter.type "lora", adapter.lora.alpha, `<tensor>.lora_a` / `.lora_b` pairs), sized from the
model's own tensor shapes as read by gguf's reader. One server for the whole module; the adapters are
switched with workspace/didChangeConfiguration, as an editor does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from lsprotocol import types as lsp

from lsp_server.client import InfillClient

gguf = pytest.importorskip("gguf", reason="the test extra installs gguf (pip install -e '.[test]')")

RANK = 4
# At the end of line 1. Measured with this adapter (2026-11-27, pre-filled middle layout): the base model
# answers "r ** 2" ("r * r" with plain PSM); the adapter at scale 1 answers otherwise (a small push on the
# output layer changes the choice, not the language; the test below checks that it differs).
DOC = ("def area(r):\n    return 3.14 * \n", 18)
BASE = "r ** 2"
GREET = "def greet_{}(name):\n    return \n"  # a fresh prompt per use: answered by the model, not the cache


def write_adapter(path: Path, tensors: dict[str, np.ndarray], *, arch: str = "qwen2", alpha: float = RANK) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def lora_pair(name: str, shape: tuple[int, int], rng: np.random.Generator, b_std: float) -> dict[str, np.ndarray]:
    """A LoRA pair for a model tensor of ggml shape (n_in, n_out): numpy A is (rank, n_in), B is (n_out, rank)."""
    n_in, n_out = shape
    return {f"{name}.lora_a": rng.standard_normal((RANK, n_in)) / np.sqrt(n_in),
            f"{name}.lora_b": rng.standard_normal((n_out, RANK)) * b_std}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("adapters")
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in gguf.GGUFReader(str(model_path)).tensors}
    rng = np.random.default_rng(7)
    # weak changes to the first layer's attention and MLP, and a strong one on the output projection
    good = {**lora_pair("blk.0.attn_q.weight", shapes["blk.0.attn_q.weight"], rng, 0.01),
            **lora_pair("blk.0.ffn_up.weight", shapes["blk.0.ffn_up.weight"], rng, 0.01),
            **lora_pair("output.weight", shapes["output.weight"], rng, 0.2)}
    n_in, n_out = shapes["blk.0.attn_q.weight"]
    wrong_shape = {"blk.0.attn_q.weight.lora_a": rng.standard_normal((RANK, n_in // 2)),
                   "blk.0.attn_q.weight.lora_b": rng.standard_normal((n_out, RANK))}
    (out / "peft-dir").mkdir()
    (out / "peft-dir" / "adapter_config.json").write_text("{}")
    return {
        "strong": write_adapter(out / "strong.gguf", good),
        "wrong-shape": write_adapter(out / "wrong-shape.gguf", wrong_shape),
        "wrong-arch": write_adapter(out / "wrong-arch.gguf", good, arch="llama"),
        "not-an-adapter": model_path,  # a whole model is not an adapter
        "peft-dir": out / "peft-dir",  # an unconverted PEFT adapter directory
        "missing": out / "missing.gguf",
    }


def options(model_path: Path, cache: Path, model: str = "lora", adapters: list | None = None) -> dict:
    return {"load": "startup", "model": model, "cache": {"dir": str(cache)},
            "models": {"base": {"model": str(model_path)},
                       "lora": {"model": str(model_path), "adapters": adapters or []}}}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(model_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("lora-cache")
    client = InfillClient(options(model_path, cache, model="base"))
    async with client:
        client.cache_dir = cache
        yield client


def configure(client: InfillClient, model_path: Path, model: str = "lora", adapters: list | None = None) -> None:
    client.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
        settings=options(model_path, client.cache_dir, model, adapters)))


async def complete(client: InfillClient, tmp_path: Path, doc: tuple[str, int] = DOC) -> tuple[str, dict]:
    uri = (tmp_path / f"doc{time.monotonic_ns()}.py").as_uri()
    client.open(uri, doc[0], "python")
    result = await client.inline(uri, 1, doc[1])
    # closed again, so that no earlier document becomes other-file context of a later prompt
    client.client.text_document_did_close(lsp.DidCloseTextDocumentParams(text_document=lsp.TextDocumentIdentifier(uri=uri)))
    return result, await client.status()


def loads(client: InfillClient) -> int:
    return sum(1 for m, p in client.notifications if m == "infill/modelState" and getattr(p, "state", "") == "loading")


async def wait_message(client: InfillClient, needle: str, timeout: float = 10) -> lsp.ShowMessageParams:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in client.messages:
            if needle in m.message:
                return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message containing {needle!r}: {[m.message for m in client.messages]}")


@pytest.mark.asyncio(loop_scope="session")
async def test_scale_zero_is_the_base_model_and_a_scale_changes_the_completion(server, adapters, model_path, tmp_path):
    base, status = await complete(server, tmp_path)
    assert base.strip() == BASE and status["last"]["source"] == "model"

    configure(server, model_path, adapters=[{"path": str(adapters["strong"]), "scale": 0}])
    zero, status = await complete(server, tmp_path)
    assert status["last"]["source"] == "model"  # another named model: computed, not the base's cache entry
    [applied] = status["backend"]["adapters"]
    assert applied["status"] == "loaded" and applied["scale"] == 0 and applied["tensors"] == 3
    assert zero == base

    before = loads(server)
    configure(server, model_path, adapters=[{"path": str(adapters["strong"]), "scale": 1.0}])
    changed, status = await complete(server, tmp_path)
    assert status["last"]["source"] == "model"
    assert changed.strip() and changed != base, changed
    assert loads(server) == before  # the adapter was swapped on the loaded model, not by a reload
    assert not [m for m in server.messages if m.type == lsp.MessageType.Error]
    server.changed = changed


@pytest.mark.asyncio(loop_scope="session")
async def test_cache_entries_of_each_adapter_set_stay_valid(server, adapters, model_path, tmp_path):
    strong = str(adapters["strong"])
    configure(server, model_path, adapters=[])
    text, status = await complete(server, tmp_path)
    # no adapter and a scale-0 adapter are the same model (llama.cpp skips scale 0): one cache entry
    assert status["last"]["source"] == "cache" and text.strip() == BASE

    configure(server, model_path, adapters=[{"path": strong, "scale": 1.0}])
    text, status = await complete(server, tmp_path)
    assert status["last"]["source"] == "cache" and text == server.changed

    configure(server, model_path, adapters=[{"path": strong, "scale": 0.5}])
    _text, status = await complete(server, tmp_path)
    assert status["last"]["source"] == "model"  # another scale is another model


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("kind, reason", [
    ("missing", "LoRA adapter not found"),
    ("wrong-shape", "do not fit the model's [896, 896]"),
    ("wrong-arch", "adapter architecture 'llama' does not match the model's 'qwen2'"),
    ("not-an-adapter", "general.type is 'model', not 'adapter'"),
    ("peft-dir", "convert_lora_to_gguf.py"),
])
async def test_a_bad_adapter_is_reported_and_the_base_model_keeps_serving(server, adapters, model_path, tmp_path,
                                                                          kind, reason):
    configure(server, model_path, adapters=[{"path": str(adapters[kind]), "scale": 1.0}])
    text, status = await complete(server, tmp_path)
    message = await wait_message(server, str(adapters[kind]))
    assert message.type == lsp.MessageType.Error and reason in message.message
    assert "the model serves without it" in message.message
    assert text.strip() == BASE  # the base model's answer (its cache entry: nothing was applied)
    [entry] = status["backend"]["adapters"]
    assert entry["status"] == "error" and reason in entry["error"]
    fresh, status = await complete(server, tmp_path, (GREET.format(kind.replace("-", "_")), 11))  # the model runs
    assert status["last"]["source"] == "model" and "name" in fresh and status["state"] == "ready"


@pytest.mark.asyncio(loop_scope="session")
async def test_invalid_adapter_settings_get_a_clear_message(server, model_path, tmp_path):
    configure(server, model_path, adapters="not-a-list")  # type: ignore[arg-type]
    message = await wait_message(server, "models.lora.adapters")
    assert "expected a list" in message.message
    text, _status = await complete(server, tmp_path)
    assert text.strip() == BASE


def test_doctor_lists_the_adapters(adapters, model_path, tmp_path):
    settings = options(model_path, tmp_path, adapters=[{"path": str(adapters["strong"]), "scale": 0.5},
                                                       {"path": str(adapters["wrong-arch"])}])
    run = subprocess.run([sys.executable, "-m", "lsp_server", "doctor", "--json", "--settings", json.dumps(settings)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    good, bad = json.loads(run.stdout)["adapters"]
    assert (good["path"], good["scale"], good["status"]) == (str(adapters["strong"]), 0.5, "ok")
    assert (good["architecture"], good["rank"], good["tensors"]) == ("qwen2", RANK, 3)
    assert bad["status"] == "error" and "architecture 'llama'" in bad["error"]
    run = subprocess.run([sys.executable, "-m", "lsp_server", "doctor", "--load", "--settings", json.dumps(settings)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("adapter:")]
    assert lines[0].startswith(f"adapter: {adapters['strong']} scale 0.5: loaded")
    assert lines[1].startswith(f"adapter: {adapters['wrong-arch']} scale 1.0: error")
