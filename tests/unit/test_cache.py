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


def test_full_disk_falls_back_to_memory_and_says_so_once(tmp_path):
    """A real full file system: a 1 MiB tmpfs (needs root to mount; skipped elsewhere)."""
    import subprocess

    import pytest

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        c = CompletionCache(disk_dir=mnt / "cache")
        assert c.disk is not None, c.disk_error
        said = []
        c.on_disk_error = said.append
        for i in range(5000):
            c.put(f"k{i}", "x" * 2000)  # ~35 entries fill it
            if c.disk is None:
                break
        assert c.disk is None and "full" in c.disk_error, c.disk_error
        assert len(said) == 1  # told once
        c.put("after", "still works")
        assert c.get("after") == "still works" and c.get(f"k{i}") is not None  # memory keeps serving
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
