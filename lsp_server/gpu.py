"""GPU memory planning for llama.cpp: how many layers of a GGUF fit on the GPU, and which model fits a card.

Serves `infill-ls doctor`, `infill-ls models list --gpu-mem GB` and the llama.cpp backend's load (which
picks `n_gpu_layers`). Everything here is a pure function of numbers, except `read_gguf_header`, which
reads only the header of a GGUF file (metadata and tensor table, not the weights) with the standard
library: no `gguf` package, no llama.cpp.

The estimate follows what llama.cpp allocates on the GPU for `n_gpu_layers = k` (llama-model.cpp): the
last k repeating layers (`blk.N.*`) go to the GPU; `k > n_layer` also moves the output layer (`output.weight`,
or the token embeddings when the output is tied to them); the token embeddings themselves stay on the CPU.
The KV cache of an offloaded layer lives on the GPU (f16 K and V: `n_ctx * n_head_kv * (key_len + value_len)
* 2` bytes). The compute buffer is estimated as the logits of one micro-batch plus a fixed margin.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

GiB = 1024**3
MiB = 1024**2
# The compute buffer is dominated by one micro-batch of f32 logits: llama.cpp's CPU log said 300.25 / 302.00 /
# 302.00 MiB at n_ctx 1024 / 4096 / 8192 for the default model, whose logits take 296.75 MiB. The margin covers
# cuBLAS workspaces and allocator slack on a GPU: a round figure, not yet measured on a card (docs/GPU.md).
COMPUTE_MARGIN = 256 * MiB
KV_BYTES_PER_VALUE = 2  # llama.cpp's default cache type is f16 for K and V


# -- GGUF header ----------------------------------------------------------------------------------------
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_BLOCK = re.compile(r"^blk\.(\d+)\.")


class GgufError(ValueError):
    """The file is not a GGUF this reader understands (message says why)."""


@dataclass(frozen=True)
class GgufHeader:
    metadata: dict[str, Any]  # arrays longer than 64 items are replaced by their length
    tensor_bytes: dict[str, int]  # tensor name -> bytes in the file (padding included)
    file_size: int


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise GgufError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_str(fh: BinaryIO) -> str:
    n = _read(fh, "<Q")
    if n > 1 << 24:
        raise GgufError(f"implausible string length {n} in GGUF header")
    return fh.read(n).decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(fh, _SCALARS[vtype])
    if vtype == _STRING:
        return _read_str(fh)
    if vtype == _ARRAY:
        itype, n = _read(fh, "<I"), _read(fh, "<Q")
        if itype in _SCALARS and n > 64:  # skip long numeric arrays (token scores, types) without decoding
            fh.seek(n * struct.calcsize(_SCALARS[itype]), 1)
            return n
        items = [_read_value(fh, itype) for _ in range(n)]
        return items if n <= 64 else n  # the vocabulary: only its size matters here
    raise GgufError(f"unknown GGUF value type {vtype}")


def read_gguf_header(path: str | Path) -> GgufHeader:
    """Metadata and per-tensor sizes of a GGUF (v2/v3) file, reading the header only."""
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GgufError(f"not a GGUF file: {path}")
        version = _read(fh, "<I")
        if version not in (2, 3):
            raise GgufError(f"unsupported GGUF version {version}: {path}")
        n_tensors, n_kv = _read(fh, "<Q"), _read(fh, "<Q")
        metadata = {}
        for _ in range(n_kv):
            key = _read_str(fh)
            metadata[key] = _read_value(fh, _read(fh, "<I"))
        infos = []
        for _ in range(n_tensors):
            name = _read_str(fh)
            n_dims = _read(fh, "<I")
            fh.seek(8 * n_dims + 4, 1)  # dims and ggml type: the offsets give the sizes
            infos.append((_read(fh, "<Q"), name))
        alignment = int(metadata.get("general.alignment", 32))
        data_start = -(-fh.tell() // alignment) * alignment
    infos.sort()
    ends = [off for off, _ in infos[1:]] + [file_size - data_start]
    tensor_bytes = {name: end - off for (off, name), end in zip(infos, ends)}
    return GgufHeader(metadata=metadata, tensor_bytes=tensor_bytes, file_size=file_size)


# -- model shape ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What the GPU estimate needs to know of a model."""

    n_layers: int
    layer_bytes: tuple[int, ...]  # weights of each repeating layer, in layer order
    output_bytes: int  # output layer (norm + projection), on the GPU only when every layer is
    kv_bytes_per_token: tuple[int, ...]  # f16 K+V bytes per context token, per layer
    n_vocab: int = 0
    architecture: str = ""
    file_size: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes


def _per_layer(value: Any, n_layers: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value] + [int(value[-1])] * (n_layers - len(value))
    return [int(value)] * n_layers


def shape_from_gguf(header: GgufHeader) -> ModelShape:
    md = header.metadata
    arch = str(md.get("general.architecture", ""))
    try:
        n_layers = int(md[f"{arch}.block_count"])
        n_embd = int(md[f"{arch}.embedding_length"])
        n_head = _per_layer(md[f"{arch}.attention.head_count"], n_layers)
    except KeyError as exc:
        raise GgufError(f"GGUF metadata lacks {exc.args[0]} (architecture {arch!r})") from exc
    n_head_kv = _per_layer(md.get(f"{arch}.attention.head_count_kv", n_head), n_layers)
    head_dim = n_embd // max(n_head[0], 1)
    k_len = int(md.get(f"{arch}.attention.key_length", head_dim))
    v_len = int(md.get(f"{arch}.attention.value_length", head_dim))
    layers = [0] * n_layers
    rest: dict[str, int] = {}
    for name, size in header.tensor_bytes.items():
        m = _BLOCK.match(name)
        if m and int(m.group(1)) < n_layers:
            layers[int(m.group(1))] += size
        else:
            rest[name] = size
    # A tied output layer reuses the token embeddings; llama.cpp then copies them to the GPU as the output.
    output = rest.get("output.weight", rest.get("token_embd.weight", 0)) + rest.get("output_norm.weight", 0)
    vocab = md.get("tokenizer.ggml.tokens", 0)
    return ModelShape(
        n_layers=n_layers,
        layer_bytes=tuple(layers),
        output_bytes=output,
        kv_bytes_per_token=tuple(h * (k_len + v_len) * KV_BYTES_PER_VALUE for h in n_head_kv),
        n_vocab=vocab if isinstance(vocab, int) else len(vocab),
        architecture=arch,
        file_size=header.file_size,
    )


def read_model_shape(path: str | Path) -> ModelShape:
    return shape_from_gguf(read_gguf_header(path))


# -- the plan -------------------------------------------------------------------------------------------
def compute_buffer_bytes(n_vocab: int, n_ubatch: int = 512) -> int:
    """GPU scratch for one micro-batch: its f32 logits plus a fixed margin (an estimate, see COMPUTE_MARGIN)."""
    return n_ubatch * n_vocab * 4 + COMPUTE_MARGIN


def gpu_bytes_for(shape: ModelShape, n_gpu_layers: int, n_ctx: int, n_ubatch: int = 512) -> int:
    """Estimated GPU memory for `n_gpu_layers` (llama.cpp semantics: the last k layers; > n_layers or -1 adds
    the output layer)."""
    k = shape.n_layers + 1 if n_gpu_layers < 0 else min(n_gpu_layers, shape.n_layers + 1)
    if k == 0:
        return 0
    layers = range(max(shape.n_layers - k, 0), shape.n_layers)
    need = sum(shape.layer_bytes[i] + n_ctx * shape.kv_bytes_per_token[i] for i in layers)
    if k > shape.n_layers:
        need += shape.output_bytes
    return need + compute_buffer_bytes(shape.n_vocab, n_ubatch)


@dataclass(frozen=True)
class GpuPlan:
    n_gpu_layers: int  # the value to hand llama.cpp
    max_layers: int  # n_layers + 1: every repeating layer and the output layer
    need_bytes: int  # estimate for the requested setting
    fit_layers: int  # the largest setting whose estimate fits in free memory
    free_bytes: int
    fits: bool  # the requested setting fits
    message: str = ""


def plan_gpu_layers(shape: ModelShape, n_ctx: int, free_bytes: int, requested: int = -1,
                    n_ubatch: int = 512) -> GpuPlan:
    """Choose `n_gpu_layers` for a GPU with `free_bytes` free.

    requested = -1 (auto): every layer if the estimate fits, else the largest number that fits, with a
    message saying so. requested = k >= 0: k, with `fits` False and a message naming the largest setting that
    fits when the estimate exceeds free memory (the caller decides whether that is an error).
    """
    max_layers = shape.n_layers + 1
    fit = 0
    for k in range(max_layers, 0, -1):
        if gpu_bytes_for(shape, k, n_ctx, n_ubatch) <= free_bytes:
            fit = k
            break
    want = max_layers if requested < 0 else min(requested, max_layers)
    need = gpu_bytes_for(shape, want, n_ctx, n_ubatch)
    fits = need <= free_bytes
    message = ""
    if not fits:
        what = "all" if requested < 0 else str(requested)
        message = (f"the model does not fit on the GPU with n_gpu_layers={what}: it needs about "
                   f"{need / GiB:.1f} GiB (weights, KV cache for n_ctx={n_ctx}, compute buffer) and "
                   f"{free_bytes / GiB:.1f} GiB is free; the largest n_gpu_layers that fits is {fit} "
                   f"of {max_layers}" + ("" if fit else " (CPU only)"))
    chosen = (-1 if fits else fit) if requested < 0 else requested
    return GpuPlan(n_gpu_layers=chosen, max_layers=max_layers, need_bytes=need, fit_layers=fit,
                   free_bytes=free_bytes, fits=fits, message=message)


# -- catalog guidance -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantSize:
    """One GGUF file of a model: its size and where the figure comes from."""

    model: str
    quant: str
    size: int
    source: str  # "listed: <where>" or "estimate: <how>"
    n_layers: int = 0
    kv_dim: int = 0  # n_head_kv * head_dim (K and V each)
    n_vocab: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def estimated(self) -> bool:
        return self.source.startswith("estimate")

    def kv_bytes(self, n_ctx: int) -> int:
        return n_ctx * self.n_layers * 2 * self.kv_dim * KV_BYTES_PER_VALUE


@dataclass(frozen=True)
class Fit:
    entry: QuantSize
    need_bytes: int
    fits: bool
    fit_layers: int  # of n_layers + 1, when it does not fit entirely


def approximate_shape(q: QuantSize) -> ModelShape:
    """A shape from catalog numbers: layers of equal size; the output layer ~ the vocabulary projection."""
    n = max(q.n_layers, 1)
    output = min(q.size // (n + 1), q.size // 8)
    per_layer = (q.size - output) // n
    return ModelShape(n_layers=n, layer_bytes=(per_layer,) * n, output_bytes=output,
                      kv_bytes_per_token=(2 * q.kv_dim * KV_BYTES_PER_VALUE,) * n, n_vocab=q.n_vocab,
                      file_size=q.size)


def guidance(sizes: Iterable[QuantSize], gpu_bytes: int, n_ctx: int = 4096) -> list[Fit]:
    """For each model file: the estimated GPU memory at n_ctx, and whether (or how many layers of) it fits."""
    rows = []
    for q in sizes:
        shape = approximate_shape(q)
        plan = plan_gpu_layers(shape, n_ctx, gpu_bytes)
        rows.append(Fit(entry=q, need_bytes=plan.need_bytes, fits=plan.fits, fit_layers=plan.fit_layers))
    return rows


def best_fits(rows: Sequence[Fit], skip: Sequence[str] = ("F16",)) -> dict[str, Fit]:
    """Per model, the largest file that fits entirely (the highest quality quantization that fits). F16 is
    skipped: Q8_0 is close to it in quality at half the memory and bandwidth, so it is the better choice."""
    best: dict[str, Fit] = {}
    for row in rows:
        if row.fits and row.entry.quant not in skip and (row.entry.model not in best or row.entry.size > best[row.entry.model].entry.size):
            best[row.entry.model] = row
    return best


def load_guide(path: str | Path | None = None, quants: Sequence[str] | None = None) -> list[QuantSize]:
    """The `[gpu_guide]` of models/catalog.toml as one QuantSize per model and quantization: the listed
    size where the catalog has one, else params x bits-per-weight / 8 (marked as an estimate)."""
    import tomllib

    if path is None:
        from lsp_server.catalog import _data_file

        path = _data_file("models", "catalog.toml")
    guide = tomllib.loads(Path(path).read_text(encoding="utf-8"))["gpu_guide"]
    bpw: dict[str, float] = guide["bits_per_weight"]
    sizes = []
    for name, m in guide["models"].items():
        listed = m.get("listed", {})
        # Start from a listed file of the same model where there is one: that carries its embedding and output
        # matrices (stored at higher precision, a large share of a small model) into the estimate.
        ref = next(iter(listed), None)
        for quant in quants or bpw:
            if quant in listed:
                size, source = int(listed[quant]), "listed (catalog)"
            elif ref is not None:
                size = int(listed[ref] + m["params"] * (bpw[quant] - bpw[ref]) / 8)
                source = f"estimate: listed {ref} size + params x ({bpw[quant]} - {bpw[ref]}) bits / 8"
            else:
                size, source = int(m["params"] * bpw[quant] / 8), f"estimate: params x {bpw[quant]} bits / 8"
            sizes.append(QuantSize(model=name, quant=quant, size=size, source=source, n_layers=int(m["layers"]),
                                   kv_dim=int(m["kv_dim"]), n_vocab=int(m["vocab"])))
    return sizes


def format_guidance(rows: Sequence[Fit], gpu_bytes: int, n_ctx: int, full: bool = False) -> str:
    """The table `infill-ls models list --gpu-mem GB` prints: per model the largest quantization that fits
    entirely (or, when none does, how many layers of the smallest fit); `full` lists every file."""
    lines = [f"GPU guidance for {gpu_bytes / GiB:.1f} GiB of GPU memory, n_ctx={n_ctx} (needs = weights + KV cache"
             " + compute buffer, an estimate; * = file size estimated, see models/catalog.toml)",
             f"{'model':22} {'quant':7} {'file GiB':>9} {'needs GiB':>9}  fits on the GPU"]
    best = best_fits(rows)
    by_model: dict[str, list[Fit]] = {}
    for r in rows:
        by_model.setdefault(r.entry.model, []).append(r)
    for model, fits in by_model.items():
        shown = fits if full else [best[model]] if model in best else [min(fits, key=lambda r: r.entry.size)]
        for r in shown:
            q = r.entry
            verdict = ("yes" if r.fits else f"{r.fit_layers} of {q.n_layers + 1} layers (n_gpu_layers={r.fit_layers})"
                       if r.fit_layers else "no")
            if not full and model in best:
                verdict += "  (largest quantization that fits)"
            lines.append(f"{q.model:22} {q.quant:7} {q.size / GiB:8.2f}{'*' if q.estimated else ' '} "
                         f"{r.need_bytes / GiB:9.1f}  {verdict}")
    return "\n".join(lines)
