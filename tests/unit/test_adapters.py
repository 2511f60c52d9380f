"""LoRA adapter settings and checks (lsp_server/adapters.py) against the real default model's GGUF header.

No model is run here: the checks read GGUF headers only. tests/e2e/test_lora.py loads adapters in
llama.cpp through the server.
"""

from __future__ import annotations

import numpy as np
import pytest

from lsp_server.adapters import AdapterError, AdapterStatus, adapters_key, check_adapter, file_digest, read_gguf_header
from lsp_server.config import AdapterSettings, parse_settings

gguf = pytest.importorskip("gguf", reason="the test extra installs gguf")


def write(path, tensors, arch="qwen2", kind="adapter", adapter_type="lora"):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", kind)
    if adapter_type:
        w.add_string("adapter.type", adapter_type)
    w.add_float32("adapter.lora.alpha", 8.0)
    for name, arr in tensors.items():
        w.add_tensor(name, np.zeros(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


Q = {"blk.0.attn_q.weight.lora_a": (4, 896), "blk.0.attn_q.weight.lora_b": (896, 4)}  # numpy shapes


def test_settings_accept_adapters_and_report_bad_entries():
    settings, errors = parse_settings({"models": {"m": {"adapters": [
        {"path": "~/a.gguf", "scale": 0.5}, "/b.gguf", {"path": ""}, {"path": "/c.gguf", "scale": "1"},
        {"path": "/d.gguf", "weight": 1}, 3, {"path": "/e.gguf", "scale": float("nan")}]}}})
    adapters = settings.models["m"].adapters
    assert adapters[1] == AdapterSettings("/b.gguf", 1.0) and adapters[0].scale == 0.5
    assert not adapters[0].path.startswith("~") and len(adapters) == 2
    joined = "\n".join(errors)
    for expected in ("adapters[2].path: expected the path", "adapters[3].scale: expected a number",
                     "adapters[4]: unknown key(s) weight", "adapters[5]: expected an object",
                     "adapters[6].scale: expected a number"):
        assert expected in joined
    _settings, errors = parse_settings({"models": {"m": {"adapters": {"path": "/x"}}}})
    assert errors == [f"models.m.adapters: expected a list of {{\"path\": ..., \"scale\": ...}} objects, got {{'path': '/x'}}"]


def test_header_reader_agrees_with_gguf(model_path):
    ours = read_gguf_header(model_path)
    theirs = gguf.GGUFReader(str(model_path))
    assert ours.tensors == {t.name: tuple(int(d) for d in t.shape) for t in theirs.tensors}
    assert ours.kv["general.architecture"] == "qwen2" and ours.kv["qwen2.block_count"] == 24


def test_check_adapter_reasons(tmp_path, model_path):
    good = write(tmp_path / "good.gguf", Q)
    info = check_adapter(good, model_path)
    assert (info.architecture, info.rank, info.alpha, info.targets) == ("qwen2", 4, 8.0, ("blk.0.attn_q.weight",))
    cases = {
        "model": (write(tmp_path / "m.gguf", Q, kind="model"), "general.type is 'model', not 'adapter'"),
        "control vector": (write(tmp_path / "cv.gguf", Q, adapter_type="control_vector"), "not 'lora'"),
        "arch": (write(tmp_path / "arch.gguf", Q, arch="llama"), "adapter architecture 'llama' does not match"),
        "shape": (write(tmp_path / "s.gguf", {"blk.0.attn_q.weight.lora_a": (4, 512),
                                               "blk.0.attn_q.weight.lora_b": (896, 4)}), "do not fit the model's"),
        "rank": (write(tmp_path / "r.gguf", {"blk.0.attn_q.weight.lora_a": (4, 896),
                                              "blk.0.attn_q.weight.lora_b": (896, 8)}), "do not fit the model's"),
        "name": (write(tmp_path / "n.gguf", {"blk.99.attn_q.weight.lora_a": (4, 896),
                                              "blk.99.attn_q.weight.lora_b": (896, 4)}), "does not exist in the model"),
        "half": (write(tmp_path / "h.gguf", {"blk.0.attn_q.weight.lora_a": (4, 896)}), "missing its lora_b"),
        "suffix": (write(tmp_path / "x.gguf", {"blk.0.attn_q.weight": (896, 896)}), "neither a .lora_a nor"),
    }
    (tmp_path / "text.gguf").write_text("not a gguf")
    cases["text"] = (tmp_path / "text.gguf", "not a GGUF file")
    (tmp_path / "empty.gguf").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.gguf", "empty file")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:40])
    cases["truncated"] = (tmp_path / "cut.gguf", "truncated or corrupt")
    cases["missing"] = (tmp_path / "nope.gguf", "LoRA adapter not found")
    cases["directory"] = (tmp_path, "convert_lora_to_gguf.py")
    for label, (path, reason) in cases.items():
        with pytest.raises(AdapterError) as err:
            check_adapter(path, model_path)
        assert reason in str(err.value) and str(path) in str(err.value), (label, str(err.value))


def test_cache_identity_follows_content_and_scale(tmp_path):
    a = write(tmp_path / "a.gguf", Q)
    digest = file_digest(a)
    loaded = AdapterStatus(str(a), 1.0, "loaded", sha256=digest)
    assert adapters_key([loaded]) == ((str(a), digest, 1.0),)
    assert adapters_key([AdapterStatus(str(a), 0.0, "loaded", sha256=digest)]) == ()  # scale 0: the base model
    assert adapters_key([AdapterStatus(str(a), 1.0, "error", "gone")]) == ()  # failed: the base model
    write(a, {"blk.0.attn_q.weight.lora_a": (4, 896), "blk.0.attn_q.weight.lora_b": (896, 4)}, arch="qwen2")
    with open(a, "ab") as fh:
        fh.write(b"\0" * 32)  # new content, same path: another identity
    assert file_digest(a) != digest
