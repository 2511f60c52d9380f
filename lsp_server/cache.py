"""Completion cache: an in-memory LRU in front of a bounded diskcache that survives restarts.

Keys are hashes of everything that decides the model's output (model identity, template, the exact
prompt, the generation limits), so an entry can never answer a different question. Values are the raw
model text; post-processing runs on every hit because it depends on the live document.

A disk cache that cannot be opened or written (unwritable, full, corrupt) is dropped for the rest of the
session with one log line; the memory cache keeps working.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def cache_key(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


class LruCache:
    def __init__(self, max_entries: int):
        self.max_entries = max(1, max_entries)
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _user_only(directory: Path) -> None:
    """chmod 0700/0600 what diskcache created with the umask's modes (SQLite gives its -wal and -shm files the
    database file's mode, so later files follow)."""
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            os.chmod(os.path.join(root, name), 0o600)


class CompletionCache:
    def __init__(self, *, memory_entries: int = 512, disk_dir: Path | None = None, size_mb: int = 256):
        self.memory = LruCache(memory_entries)
        self.disk = None
        self.disk_error = ""
        self.on_disk_error: Callable[[str], None] | None = None  # told once when the disk cache is dropped
        if disk_dir is not None:
            self._open_disk(disk_dir, size_mb)

    def _open_disk(self, disk_dir: Path, size_mb: int) -> None:
        try:
            import diskcache

            disk_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(disk_dir, 0o700)  # cached completions are the user's code
            self.disk = diskcache.Cache(str(disk_dir), size_limit=size_mb * 1024 * 1024, disk_min_file_size=1 << 20)
            self.disk.set("__probe__", 1)  # fail now, not on the first keystroke, if it is unwritable
            _user_only(disk_dir)
        except Exception as exc:  # noqa: BLE001 - sqlite, OS and permission errors all mean "no disk cache"
            self._drop_disk(exc)

    def _drop_disk(self, exc: Exception) -> None:
        self.disk_error = f"{type(exc).__name__}: {exc}"
        log.warning("disk cache disabled, using memory only: %s", self.disk_error)
        if self.on_disk_error is not None:
            self.on_disk_error(self.disk_error)
        disk, self.disk = self.disk, None
        if disk is not None:
            try:
                disk.close()
            except Exception:  # noqa: BLE001
                pass

    def get(self, key: str) -> Any | None:
        value = self.memory.get(key)
        if value is not None or self.disk is None:
            return value
        try:
            value = self.disk.get(key)
        except Exception as exc:  # noqa: BLE001
            self._drop_disk(exc)
            return None
        if value is not None:
            self.memory.put(key, value)
        return value

    def put(self, key: str, value: Any) -> None:
        self.memory.put(key, value)
        if self.disk is not None:
            try:
                self.disk.set(key, value)
            except Exception as exc:  # noqa: BLE001
                self._drop_disk(exc)

    def info(self) -> dict[str, Any]:
        return {
            "memory_entries": len(self.memory),
            "disk": self.disk.directory if self.disk is not None else None,
            "disk_error": self.disk_error or None,
        }

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
