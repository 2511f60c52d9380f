"""LoRA adapters: checking a GGUF adapter against its base model, and the identity that cache keys use.

llama.cpp reports a bad adapter only as a NULL pointer and a line on its own log, so the checks that
`llama_adapter_lora_init` makes (src/llama-adapter.cpp: general.type, adapter.type, architecture, tensor
pairs, names and shapes against the base model) are repeated here from the two files' GGUF headers, to
tell the user exactly what is wrong. `infill-ls doctor` uses the same checks without loading the model.

An adapter's identity is its path, a hash of its content and its scale: completions cached for one
adapter set never answer for another, and the base model's entries stay valid while adapters change.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lsp_server.config import AdapterSettings
from lsp_server.errors import ModelError


class AdapterError(ModelError):
    """A LoRA adapter is missing, malformed or does not fit the model; the base model keeps serving."""


# -- GGUF headers ------------------------------------------------------------------------------------------
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GgufHeader:
    kv: dict[str, Any]  # scalar and string values (arrays are skipped: tokenizer data is not needed here)
    tensors: dict[str, tuple[int, ...]]  # name -> ggml shape (ne[0] first: the input dimension of a matrix)


def read_gguf_header(path: Path) -> GgufHeader:
    """Metadata and tensor shapes of a GGUF file, without reading tensor data."""
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise AdapterError(f"{path}: empty file, not a GGUF file") from exc
        with buf:
            try:
                return _parse_header(buf, path)
            except (struct.error, UnicodeDecodeError, IndexError) as exc:
                raise AdapterError(f"{path}: truncated or corrupt GGUF header ({exc})") from exc


def _parse_header(buf: mmap.mmap, path: Path) -> GgufHeader:
    if buf[:4] != b"GGUF":
        raise AdapterError(f"{path}: not a GGUF file (a LoRA adapter must be converted to GGUF first, "
                           "see docs/CUSTOMIZE.md)")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise AdapterError(f"{path}: GGUF version {version} is too old")
    pos = 24

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8 : at + 8 + n]).decode("utf-8"), at + 8 + n

    def value(kind: int, at: int) -> tuple[Any, int]:
        if kind == _STRING:
            return string(at)
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if item in _SCALARS:
                return None, at + count * struct.calcsize(_SCALARS[item])
            for _ in range(count):
                _, at = value(item, at)
            return None, at
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise AdapterError(f"{path}: unknown GGUF value type {kind}")
        return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)

    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        val, pos = value(kind, pos + 4)
        if val is not None:
            kv[key] = val
    tensors: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        shape = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims + 4 + 8  # dims, ggml type, data offset
        tensors[name] = tuple(shape)
    return GgufHeader(kv, tensors)


_model_headers: dict[tuple[str, int, int], GgufHeader] = {}


def _model_header(path: Path) -> GgufHeader:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _model_headers:
        _model_headers.clear()
        _model_headers[key] = read_gguf_header(path)
    return _model_headers[key]


# -- checking an adapter -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterInfo:
    """What a valid adapter file holds."""

    architecture: str
    alpha: float
    rank: int
    targets: tuple[str, ...]  # base model tensors it changes


def check_adapter(path: str | Path, model_path: str | Path | None = None) -> AdapterInfo:
    """The adapter's metadata; AdapterError with the reason when llama.cpp would refuse it."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"LoRA adapter not found: {path}")
    if not path.is_file():
        raise AdapterError(f"LoRA adapter path is not a file: {path} (a PEFT adapter directory must be "
                           "converted with convert_lora_to_gguf.py first, see docs/CUSTOMIZE.md)")
    head = read_gguf_header(path)
    kind = head.kv.get("general.type", "")
    if kind != "adapter":
        raise AdapterError(f"{path}: general.type is {kind!r}, not 'adapter': this is not a LoRA adapter file")
    if head.kv.get("adapter.type") != "lora":
        raise AdapterError(f"{path}: adapter.type is {head.kv.get('adapter.type')!r}, not 'lora'")
    arch = str(head.kv.get("general.architecture", ""))
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in head.tensors.items():
        for suffix in (".lora_a", ".lora_b"):
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[suffix[-1]] = shape
                break
        else:
            if not name.endswith("_norm.weight"):  # llama.cpp skips norm vectors, and refuses anything else
                raise AdapterError(f"{path}: tensor {name!r} is neither a .lora_a nor a .lora_b tensor")
    if not pairs:
        raise AdapterError(f"{path}: the adapter has no LoRA tensors")
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise AdapterError(f"{path}: LoRA tensor pair for {name!r} is missing its lora_{'b' if 'a' in ab else 'a'}")
    ranks = {ab["b"][0] if not name.endswith("token_embd.weight") else ab["a"][1] for name, ab in pairs.items()}
    if model_path is not None:
        model = _model_header(Path(model_path))
        model_arch = str(model.kv.get("general.architecture", ""))
        if arch != model_arch:
            raise AdapterError(f"{path}: adapter architecture {arch!r} does not match the model's "
                               f"{model_arch!r} ({Path(model_path).name}): it was trained for another base model")
        for name, ab in sorted(pairs.items()):
            target = model.tensors.get(name)
            if target is None:
                raise AdapterError(f"{path}: tensor {name!r} does not exist in the model {Path(model_path).name} "
                                   "(adapter made for another base model?)")
            a, b = ab["a"], ab["b"]
            if name.endswith("token_embd.weight"):  # llama.cpp keeps this pair flipped (llm_build_inp_embd)
                ok = len(a) == 2 and len(b) == 2 and target[0] == b[1] and target[1] == a[1]
            else:
                ok = (len(a) == 2 and len(b) == 2 and target[0] == a[0] and target[1] == b[1] and a[1] == b[0])
            if not ok:
                raise AdapterError(f"{path}: tensor {name!r} has shapes lora_a {list(a)} / lora_b {list(b)}, which "
                                   f"do not fit the model's {list(target)} (adapter made for another base model?)")
    alpha = head.kv.get("adapter.lora.alpha", 0.0)
    return AdapterInfo(architecture=arch, alpha=float(alpha or 0.0), rank=max(ranks) if ranks else 0,
                       targets=tuple(sorted(pairs)))


# -- identity ----------------------------------------------------------------------------------------------
_hashes: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of the file (memoised on path, size and mtime: re-hashed only when the file changes)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


@dataclass
class AdapterStatus:
    """One configured adapter as the backend holds it (reported by doctor and `infill/status`)."""

    path: str
    scale: float
    status: str = "pending"  # pending | loaded | error | unsupported
    error: str = ""
    sha256: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "scale": self.scale, "status": self.status}
        if self.error:
            out["error"] = self.error
        if self.sha256:
            out["sha256"] = self.sha256
        out.update(self.info)
        return out


def adapters_key(statuses: Iterable[AdapterStatus]) -> tuple[tuple[str, str, float], ...]:
    """What the cache key includes: the adapters actually applied. One that failed, or has scale 0, changes
    nothing (llama.cpp does not attach a scale-0 adapter), so it shares the base model's entries."""
    return tuple(sorted((s.path, s.sha256, s.scale) for s in statuses if s.status == "loaded" and s.scale != 0))


def inspect(adapters: Iterable[AdapterSettings], model_path: str | Path | None) -> list[AdapterStatus]:
    """Static check of configured adapters against a model file (doctor): status `ok` or `error`."""
    out = []
    for a in adapters:
        st = AdapterStatus(a.path, a.scale)
        try:
            info = check_adapter(a.path, model_path if model_path and Path(model_path).exists() else None)
            st.status, st.sha256 = "ok", file_digest(a.path)
            st.info = {"architecture": info.architecture, "rank": info.rank, "alpha": info.alpha,
                       "tensors": len(info.targets)}
        except (AdapterError, OSError) as exc:
            st.status, st.error = "error", str(exc)
        out.append(st)
    return out


# -- llama.cpp ---------------------------------------------------------------------------------------------
class LlamaLoras:
    """The LoRA adapters attached to one llama.cpp model and its context (llama-cpp-python's C API).

    Adapter weights are loaded once per (path, content) and kept while configured; the context gets the
    current set with its scales (llama.cpp skips scale-0 adapters, so scale 0 is exactly the base model).
    """

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        self.statuses: list[AdapterStatus] = []
        self._handles: dict[tuple[str, str], Any] = {}

    def apply(self, model: Any, ctx: Any, adapters: Iterable[AdapterSettings]) -> bool:
        """Attach `adapters` to the context; False when the applied set is unchanged (the KV cache stays valid).

        An adapter that cannot be used gets status `error` with the reason; the others still apply.
        """
        import ctypes

        import llama_cpp

        old = adapters_key(self.statuses)
        statuses, chosen, seen = [], [], set()
        for a in adapters:
            st = AdapterStatus(a.path, a.scale)
            statuses.append(st)
            try:
                if a.path in seen:
                    raise AdapterError(f"LoRA adapter listed twice: {a.path}")
                seen.add(a.path)
                info = check_adapter(a.path, self.model_path)
                sha = file_digest(a.path)
                handle = self._handles.get((a.path, sha))
                if handle is None:
                    handle = llama_cpp.llama_adapter_lora_init(model, os.fsencode(a.path))
                    if not handle:
                        raise AdapterError(f"llama.cpp could not load the LoRA adapter {a.path} (its log says why; "
                                           "set INFILL_LS_LLAMA_VERBOSE=1)")
                    self._handles[(a.path, sha)] = handle
                st.status, st.sha256 = "loaded", sha
                st.info = {"architecture": info.architecture, "rank": info.rank, "alpha": info.alpha,
                           "tensors": len(info.targets)}
                chosen.append((handle, a.scale))
            except (AdapterError, OSError) as exc:
                st.status, st.error = "error", str(exc)
        n = len(chosen)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(h for h, _ in chosen)) if n else None
        scales = (ctypes.c_float * n)(*(s for _, s in chosen)) if n else None
        llama_cpp.llama_set_adapters_lora(ctx, handles, n, scales)
        keep = {(s.path, s.sha256) for s in statuses if s.status == "loaded"}
        for key in [k for k in self._handles if k not in keep]:  # detached above, so safe to free
            llama_cpp.llama_adapter_lora_free(self._handles.pop(key))
        self.statuses = statuses
        return adapters_key(statuses) != old

    def free(self, ctx: Any) -> None:
        """Detach and free every adapter (before the model is freed: the handles belong to it)."""
        import llama_cpp

        if ctx is not None:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        for handle in self._handles.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self._handles.clear()
        self.statuses = []


# -- PEFT (transformers backend) ---------------------------------------------------------------------------
def check_peft_dir(path: str | Path, model: Any = None) -> dict[str, Any]:
    """A PEFT LoRA adapter directory's config; AdapterError when it is not one or does not fit `model`."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"LoRA adapter not found: {path}")
    if path.is_file():
        with open(path, "rb") as fh:
            gguf = fh.read(4) == b"GGUF"
        raise AdapterError(f"{path} is a {'GGUF adapter: the transformers backend takes' if gguf else 'file, not'} "
                           "a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)"
                           + ("; GGUF adapters are for the llama_cpp backend" if gguf else ""))
    config_file = path / "adapter_config.json"
    weights = path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise AdapterError(f"{path}: not a PEFT adapter directory (needs adapter_config.json and "
                           "adapter_model.safetensors)")
    import json

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AdapterError(f"{config_file}: not valid JSON ({exc})") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{path}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if model is not None:
        from safetensors import safe_open

        modules = dict(model.named_modules())
        with safe_open(str(weights), framework="pt") as st:
            for key in st.keys():
                if ".lora_A." not in key and ".lora_B." not in key:
                    continue
                name = key.split(".lora_")[0].removeprefix("base_model.model.")
                target = modules.get(name)
                if target is None or not hasattr(target, "weight"):
                    raise AdapterError(f"{path}: module {name!r} does not exist in the model "
                                       "(adapter made for another base model?)")
                shape = tuple(st.get_slice(key).get_shape())
                out_f, in_f = tuple(target.weight.shape)
                ok = shape[1] == in_f if ".lora_A." in key else shape[0] == out_f
                if len(shape) != 2 or not ok:
                    raise AdapterError(f"{path}: {key} has shape {list(shape)}, which does not fit the model's "
                                       f"{name} of shape {[out_f, in_f]} (adapter made for another base model?)")
    return config


def dir_digest(path: str | Path) -> str:
    """sha256 over a PEFT adapter's config and weights."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update(file_digest(Path(path) / name).encode())
    return digest.hexdigest()


def apply_peft(model: Any, adapters: Iterable[Any]) -> tuple[Any, list[AdapterStatus]]:
    """Attach PEFT LoRA adapters ({path, scale} or AdapterSettings) and merge them into the weights.

    Each adapter is checked first (so a bad one never half-modifies the model); a bad one gets status
    `error` and the others still apply. Scale 0 attaches nothing, as in llama.cpp.
    """
    statuses: list[AdapterStatus] = []
    peft_model, names = None, []
    for i, a in enumerate(adapters):
        path, scale = (a["path"], float(a.get("scale", 1.0))) if isinstance(a, dict) else (a.path, a.scale)
        st = AdapterStatus(path, scale)
        statuses.append(st)
        try:
            if any(s.path == path for s in statuses[:-1]):
                raise AdapterError(f"LoRA adapter listed twice: {path}")
            config = check_peft_dir(path, model)
            st.sha256 = dir_digest(path)
            st.info = {"rank": config.get("r"), "alpha": config.get("lora_alpha"),
                       "targets": config.get("target_modules")}
            if scale != 0:
                from peft import PeftModel
                from peft.tuners.lora import LoraLayer

                name = f"adapter{i}"
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, path, adapter_name=name)
                else:
                    peft_model.load_adapter(path, adapter_name=name)
                for module in peft_model.modules():
                    if isinstance(module, LoraLayer) and name in module.scaling:
                        module.set_scale(name, scale)
                names.append(name)
            st.status = "loaded"
        except AdapterError as exc:
            st.status, st.error = "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - peft/safetensors report bad files with many types
            st.status, st.error = "error", f"{path}: PEFT could not load it: {type(exc).__name__}: {exc}"
    if peft_model is None:
        return model, statuses
    peft_model.base_model.set_adapter(names)
    return peft_model.merge_and_unload(adapter_names=names), statuses
