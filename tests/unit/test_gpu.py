"""GPU planning (lsp_server/gpu.py): the GGUF header reader, the layer/memory estimate, the fit check and the
catalog guidance, plus the CPU-side behaviour of the llama.cpp backend and the CLI (no GPU on this machine)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_server import gpu
from lsp_server.gpu import GiB, MiB

ROOT = Path(__file__).resolve().parents[2]


# -- a GGUF written here, byte by byte, following the GGUF v3 layout -------------------------------------
def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def write_gguf(path: Path, n_layers: int = 3, layer_tensor_bytes: int = 4096, output_bytes: int = 1024,
               embd_bytes: int = 2048, alignment: int = 32) -> Path:
    tensors = [("token_embd.weight", embd_bytes)]
    for i in range(n_layers):
        tensors += [(f"blk.{i}.attn_q.weight", layer_tensor_bytes), (f"blk.{i}.ffn_down.weight", layer_tensor_bytes)]
    tensors += [("output_norm.weight", 64), ("output.weight", output_bytes)]
    kvs = [
        _kv("general.architecture", 8, _s("llama")),
        _kv("llama.block_count", 4, struct.pack("<I", n_layers)),
        _kv("llama.embedding_length", 4, struct.pack("<I", 256)),
        _kv("llama.attention.head_count", 4, struct.pack("<I", 8)),
        _kv("llama.attention.head_count_kv", 4, struct.pack("<I", 2)),
        _kv("general.alignment", 4, struct.pack("<I", alignment)),
        # a string array longer than 64 items: the reader keeps only its length
        _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 100) + b"".join(_s(f"t{i}") for i in range(100))),
        _kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 100) + struct.pack("<100f", *range(100))),
        _kv("general.flag", 7, b"\x01"),
    ]
    infos, offset = b"", 0
    for name, size in tensors:
        infos += _s(name) + struct.pack("<I", 1) + struct.pack("<Q", size) + struct.pack("<I", 0)
        infos += struct.pack("<Q", offset)
        offset += -(-size // alignment) * alignment
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * (-len(head) % alignment)
    path.write_bytes(head + b"\xab" * offset)
    return path


def test_header_reader_on_a_written_gguf(tmp_path):
    header = gpu.read_gguf_header(write_gguf(tmp_path / "m.gguf"))
    assert header.metadata["llama.block_count"] == 3
    assert header.metadata["tokenizer.ggml.tokens"] == 100 and header.metadata["general.flag"] is True
    assert header.tensor_bytes["blk.1.attn_q.weight"] == 4096
    assert header.tensor_bytes["output_norm.weight"] == 64  # padded to the alignment of 32 -> exactly 64
    assert header.tensor_bytes["output.weight"] == 1024  # the last tensor: up to the end of the file
    shape = gpu.shape_from_gguf(header)
    assert shape.n_layers == 3 and shape.layer_bytes == (8192, 8192, 8192)
    assert shape.output_bytes == 1024 + 64
    # 2 KV heads x (32 + 32) dims (head_dim = 256 / 8) x 2 bytes (f16)
    assert shape.kv_bytes_per_token == (256, 256, 256) and shape.n_vocab == 100


def test_tied_output_counts_the_embeddings(tmp_path):
    path = write_gguf(tmp_path / "tied.gguf", output_bytes=1024)
    header = gpu.read_gguf_header(path)
    tied = gpu.GgufHeader(header.metadata, {k: v for k, v in header.tensor_bytes.items() if k != "output.weight"},
                          header.file_size)
    assert gpu.shape_from_gguf(tied).output_bytes == 2048 + 64


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"NOPE1234")
    with pytest.raises(gpu.GgufError, match="not a GGUF"):
        gpu.read_gguf_header(tmp_path / "x.gguf")
    good = write_gguf(tmp_path / "t.gguf").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(good[:60])
    with pytest.raises(gpu.GgufError, match="truncated"):
        gpu.read_gguf_header(tmp_path / "trunc.gguf")
    (tmp_path / "v9.gguf").write_bytes(b"GGUF" + struct.pack("<I", 9) + good[8:])
    with pytest.raises(gpu.GgufError, match="version 9"):
        gpu.read_gguf_header(tmp_path / "v9.gguf")


# -- the plan, with numbers -------------------------------------------------------------------------------
def shape(n=10, layer=100 * MiB, output=50 * MiB, kv=1024, vocab=1000):
    return gpu.ModelShape(n_layers=n, layer_bytes=(layer,) * n, output_bytes=output,
                          kv_bytes_per_token=(kv,) * n, n_vocab=vocab)


def test_gpu_bytes_for_counts_layers_output_kv_and_compute():
    s = shape()
    compute = 512 * 1000 * 4 + gpu.COMPUTE_MARGIN
    assert gpu.gpu_bytes_for(s, 0, 4096) == 0
    assert gpu.gpu_bytes_for(s, 3, 4096) == 3 * (100 * MiB + 4096 * 1024) + compute
    all_layers = 10 * (100 * MiB + 4 * MiB) + 50 * MiB + compute
    assert gpu.gpu_bytes_for(s, -1, 4096) == all_layers == gpu.gpu_bytes_for(s, 11, 4096)
    assert gpu.gpu_bytes_for(s, 99, 4096) == all_layers  # llama.cpp caps at n_layers + 1


def test_plan_all_layers_when_they_fit():
    plan = gpu.plan_gpu_layers(shape(), 4096, 8 * GiB)
    assert plan.fits and plan.n_gpu_layers == -1 and plan.fit_layers == 11 and plan.message == ""


def test_plan_names_the_largest_setting_that_fits():
    s = shape()
    compute = 512 * 1000 * 4 + gpu.COMPUTE_MARGIN
    free = compute + 6 * 104 * MiB + 10 * MiB  # room for 6 layers (weights + KV), not 7
    auto = gpu.plan_gpu_layers(s, 4096, free)
    assert not auto.fits and auto.fit_layers == 6 and auto.n_gpu_layers == 6
    assert "largest n_gpu_layers that fits is 6 of 11" in auto.message
    explicit = gpu.plan_gpu_layers(s, 4096, free, requested=8)
    assert not explicit.fits and explicit.n_gpu_layers == 8 and explicit.fit_layers == 6
    assert "n_gpu_layers=8" in explicit.message
    assert gpu.plan_gpu_layers(s, 4096, free, requested=5).fits


def test_plan_with_a_longer_context_fits_fewer_layers():
    s = shape(kv=64 * 1024)  # 64 KiB per token per layer: 256 MiB of KV per layer at n_ctx 4096
    short = gpu.plan_gpu_layers(s, 512, 3 * GiB)
    long = gpu.plan_gpu_layers(s, 4096, 3 * GiB)
    assert short.fits and not long.fits and 0 < long.fit_layers < 11


def test_plan_when_nothing_fits_says_cpu_only():
    plan = gpu.plan_gpu_layers(shape(), 4096, 100 * MiB)
    assert plan.fit_layers == 0 and plan.n_gpu_layers == 0 and "CPU only" in plan.message


# -- catalog guidance ---------------------------------------------------------------------------------------
def test_guide_uses_listed_sizes_and_marks_estimates():
    sizes = {(q.model, q.quant): q for q in gpu.load_guide()}
    listed = sizes[("qwen2.5-coder-7b", "Q4_K_M")]
    assert listed.size == 4_683_073_952 and not listed.estimated  # Qwen's listed 4.68 GB
    assert sizes[("codellama-34b", "Q4_K_M")].size == 20_219_206_400
    est = sizes[("qwen2.5-coder-32b", "Q8_0")]
    assert est.estimated and est.size == int(32.8e9 * 8.5 / 8)
    # estimates from a listed file of the same model grow with the bits per weight
    q = [sizes[("codellama-7b", k)].size for k in ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")]
    assert q == sorted(q)


def test_guidance_per_gpu_size():
    guide = gpu.load_guide(quants=["Q4_K_M", "Q8_0"])
    at8 = {(r.entry.model, r.entry.quant): r for r in gpu.guidance(guide, 8 * GiB)}
    assert at8[("qwen2.5-coder-7b", "Q4_K_M")].fits
    assert not at8[("qwen2.5-coder-32b", "Q4_K_M")].fits and at8[("qwen2.5-coder-32b", "Q4_K_M")].fit_layers > 0
    # CodeLlama 7B has no GQA: 2 GiB of KV cache at n_ctx 4096 (32 layers x 4096 x 2 x 2 bytes x 4096)
    assert at8[("codellama-7b", "Q4_K_M")].need_bytes > 4_081_004_224 + 2 * GiB
    best24 = gpu.best_fits(gpu.guidance(guide, 24 * GiB))
    assert best24["qwen2.5-coder-7b"].entry.quant == "Q8_0"
    assert best24["qwen2.5-coder-32b"].entry.quant == "Q4_K_M"
    assert "codellama-34b" in best24 and "codellama-34b" not in gpu.best_fits(gpu.guidance(guide, 16 * GiB))


# -- the real default model and llama.cpp (CPU build) ----------------------------------------------------------
@pytest.mark.model
def test_default_model_shape_matches_llama_cpp(model_path):
    s = gpu.read_model_shape(model_path)
    assert s.n_layers == 24 and s.n_vocab == 151936 and s.architecture == "qwen2"
    assert sum(s.layer_bytes) + s.output_bytes < s.file_size
    # llama.cpp's own account of the KV cache at n_ctx=4096 (its log line), against the estimate
    code = ("import logging; logging.basicConfig(level=logging.INFO); from pathlib import Path; "
            "from lsp_server.backends.llama_cpp import LlamaCppBackend as B; "
            f"b = B(Path({str(model_path)!r}), n_ctx=4096, kv_reuse=False); b.load(); print(b.info())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "INFILL_LS_LLAMA_VERBOSE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    kv_line = next(line for line in proc.stderr.splitlines() if "KV buffer size" in line)
    kv_mib = float(kv_line.split("=")[1].split()[0])
    assert kv_mib * MiB == 4096 * sum(s.kv_bytes_per_token)
    info = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 - our own dict repr
    assert info["n_gpu_layers"] == 0 and info["gpu_layers_offloaded"] == 0 and info["gpu_layers_total"] == 25


def test_cpu_build_reports_devices_and_no_offload():
    from lsp_server.backends.llama_cpp import backend_devices, gpu_free_bytes, system_info

    devices = backend_devices()
    assert devices and devices[0]["type"] == "cpu" and devices[0]["memory_total"] > 0
    assert gpu_free_bytes(devices) is None
    assert gpu_free_bytes([{"type": "gpu", "memory_free": 5}, {"type": "gpu", "memory_free": 7}]) == 12
    info = system_info()
    assert info["gpu_offload"] is False and info["devices"] == devices


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsp_server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_models_list_gpu_mem():
    out = run_cli("models", "list", "--gpu-mem", "8").stdout
    assert "GPU guidance for 8.0 GiB" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("qwen2.5-coder-32b"))
    assert "of 65 layers" in line
    full = run_cli("models", "list", "--gpu-mem", "80", "--all").stdout
    assert sum(ln.startswith("codellama-34b ") for ln in full.splitlines()) == 5


@pytest.mark.model
def test_doctor_gpu_section(model_path):
    report = json.loads(run_cli("doctor", "--json").stdout)
    g = report["gpu"]
    assert g["offload"] is False and g["model_layers"] == 25 and "no GPU offload" in g["summary"]
    loaded = json.loads(run_cli("doctor", "--json", "--load").stdout)["gpu"]["loaded"]
    assert loaded == {**loaded, "gpu_layers_offloaded": 0, "gpu_layers_total": 25}
    assert "gpu: no GPU offload" in run_cli("doctor").stdout


# -- the build script and the prepared GPU benchmark (what runs without a GPU) ---------------------------------
def test_build_cuda_script_options_and_check():
    script = ROOT / "scripts" / "build_cuda.sh"
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
    check = subprocess.run(["bash", str(script), "--check", "--python", sys.executable], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    # this machine has the CPU build: the check must say so and fail
    assert check.returncode == 1 and "check FAILED" in check.stderr and "no GPU offload" in check.stdout


def _gpu_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "bench" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_run_call_plan_carries_every_part_once():
    gr = _gpu_run()
    manifest = {"parts": [{"n": n} for n in range(1, 10)], "first_in_call1": True}
    plan = gr.calls(manifest)
    carried = [p for c in plan for p in c["carry"] if p.startswith(".gpu/m")]
    assert carried == [f".gpu/m{n}" for n in range(1, 10)]
    assert plan[0]["command"] == "python3 bench/gpu_run.py start --part 1"
    assert plan[-1]["command"].endswith("part 9 --then-run") and plan[-1]["timeout_s"] == 600
    assert all(len(c["command"]) < 2000 and len(c["carry"]) <= 8 for c in plan)
    no_room = gr.calls({"parts": [{"n": 1}, {"n": 2}], "first_in_call1": False})
    assert no_room[0]["carry"] == [".gpu/src", ".gpu/whl", ".gpu/data"] and len(no_room) == 3


@pytest.mark.model
@pytest.mark.timeout(2400)  # one server per step on a shared 2-core machine: ~8 min at load average 11
def test_gpu_run_dry_on_cpu(tmp_path, model_path):
    """The measurement half of bench/gpu_run.py end to end on this CPU, with tiny limits."""
    proc = subprocess.run([sys.executable, "bench/gpu_run.py", "run", "--cpu-only", "--dry", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=2300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fig = json.loads((tmp_path / "gpu_figures.json").read_text())
    steps = fig["steps"]
    assert set(steps) == {"doctor_cpu", "throughput_cpu", "replay_cpu", "quality_cpu"}
    assert all(s.get("rc") == 0 for s in steps.values()), json.dumps(steps)[:3000]
    assert steps["doctor_cpu"]["report"]["gpu"]["loaded"]["gpu_layers_offloaded"] == 0
    tp = steps["throughput_cpu"]
    assert tp["n_gpu_layers"] == 0 and tp["prompt_tok_s"] > 0 and tp["gen_tok_s"] > 0
    assert steps["replay_cpu"]["summary"] and steps["quality_cpu"]["summary"]
    assert fig["finished"]


@pytest.mark.model
def test_backend_layer_choice_against_a_simulated_gpu(model_path, monkeypatch):
    """No GPU here: the device query is replaced by a GPU of a given free memory (SIMULATED), the rest is real:
    the default model's GGUF header and the backend's choice of n_gpu_layers before llama.cpp loads."""
    from lsp_server.backends import llama_cpp as lc
    from lsp_server.errors import ModelError

    free = {"bytes": 8 * GiB}
    monkeypatch.setattr(lc, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(lc, "backend_devices", lambda: [{"type": "gpu", "memory_free": free["bytes"]}])
    auto = lc.LlamaCppBackend(model_path, n_ctx=4096)
    assert auto._choose_gpu_layers() == -1 and auto.gpu_plan.fits
    shape = gpu.read_model_shape(model_path)
    free["bytes"] = gpu.gpu_bytes_for(shape, 10, 4096) + 1  # room for exactly 10 of 25 layers
    assert lc.LlamaCppBackend(model_path, n_ctx=4096)._choose_gpu_layers() == 10
    assert lc.LlamaCppBackend(model_path, n_ctx=4096, n_gpu_layers=10)._choose_gpu_layers() == 10
    with pytest.raises(ModelError, match="largest n_gpu_layers that fits is 10 of 25.*Set n_gpu_layers to 10"):
        lc.LlamaCppBackend(model_path, n_ctx=4096, n_gpu_layers=20)._choose_gpu_layers()
    assert lc.LlamaCppBackend(model_path, n_ctx=4096, n_gpu_layers=0)._choose_gpu_layers() == 0
