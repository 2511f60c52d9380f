"""Completion cache: LRU bounds, persistence across instances, and fallback when the disk fails."""

import os

import pytest

from lsp_server.cache import CompletionCache, LruCache, cache_key


def test_lru_evicts_oldest():
    c = LruCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.get("a")
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3


def test_key_depends_on_every_part():
    assert cache_key("m", "t", "p", 5) != cache_key("m", "t", "p", 6)
    assert cache_key("m", "t", "p") == cache_key("m", "t", "p")


def test_disk_cache_survives_restart(tmp_path):
    c = CompletionCache(disk_dir=tmp_path / "c")
    c.put("k", "value")
    c.close()
    c2 = CompletionCache(disk_dir=tmp_path / "c")
    assert c2.get("k") == "value"
    assert (os.stat(tmp_path / "c").st_mode & 0o777) == 0o700


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_dir_falls_back_to_memory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    c = CompletionCache(disk_dir=ro / "sub")
    assert c.disk is None and c.disk_error


def test_corrupt_disk_cache_falls_back_to_memory(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    c = CompletionCache(disk_dir=d)
    assert c.disk is None and c.disk_error
    c.put("k", "v")
    assert c.get("k") == "v"
