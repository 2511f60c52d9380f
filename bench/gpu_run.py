"""GPU beside CPU on a lent GPU machine: one prepared script for the device tool (docs/GPU.md).

The device machine has no network and takes at most 64 MiB of working tree per call, so everything it needs
is staged here under `.gpu/` (ignored by git) and carried over several calls while the machine stays warm:

    python3 bench/gpu_run.py prepare          # here: stage .gpu/ and print the device calls, in order

    call 1   carry .gpu/src .gpu/whl .gpu/data .gpu/m1    python3 bench/gpu_run.py start
             installs the carried wheels, starts the CUDA build of llama-cpp-python (setsid, 16 jobs, sm_90)
    call 2.. carry .gpu/mN                                python3 bench/gpu_run.py part N
             keeps one part of the default model (~60 MiB each; the GGUF is 469 MiB)
    last     carry .gpu/mK                                python3 bench/gpu_run.py part K --then-run
             joins the parts (sha256 checked), waits for the build, then runs, GPU beside CPU:
             doctor --load, prompt/generation throughput, the replay benchmark (short), the quality
             benchmark (--limit), and writes $OUT/gpu_figures.json (+ run.log, build.log)

Each step writes what it has to the JSON at once, so a command stopped at its time limit still brings back
the figures measured so far. On this machine (no GPU) the same orchestration runs end to end with

    .venv/bin/python bench/gpu_run.py run --cpu-only --dry     # current venv, tiny limits -> bench/out/gpu-dry/

CPU runs on the GPU machine hide the GPU from llama.cpp with CUDA_VISIBLE_DEVICES="" (n_gpu_layers -1 then
means 0), so both columns use the same build, model, settings and 16 cores.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_data import human_eval_dir  # noqa: E402  (no dependencies)

STAGE = ROOT / ".gpu"
WORK = Path(os.environ.get("INFILL_GPU_WORK", "/tmp/infill-gpu"))  # on the device: survives between calls
SITE = WORK / "site"  # carried wheels + the CUDA llama-cpp-python
CACHE = WORK / "cache"  # INFILL_LS_CACHE: models/<default gguf>
BUILD_LOG = WORK / "build.log"
BUILD_DONE = WORK / "build.done"
MAX_CARRY = 64 * 1024 * 1024
PART = 60 * 1024 * 1024
FIRST_PART_ROOM = 8 * 1024 * 1024  # head room in call 1 for the working tree (1.2 MB on 2026-11-27)
DEVICE_PY = "3.12"  # python3 on the device image (KINDS.md)
# trimmed from the llama-cpp-python sdist (73 MB, of which a 38 MB git pack): not needed to build the library
TRIM = [".git", "vendor/llama.cpp/models", "vendor/llama.cpp/docs", "vendor/llama.cpp/media", "vendor/llama.cpp/benches",
        "vendor/llama.cpp/tests", "vendor/llama.cpp/examples", "vendor/llama.cpp/pocs", "vendor/llama.cpp/gguf-py",
        "vendor/llama.cpp/app", "vendor/llama.cpp/ci", "vendor/llama.cpp/skills", "vendor/llama.cpp/conversion",
        "vendor/llama.cpp/ggml/src/ggml-sycl", "vendor/llama.cpp/ggml/src/ggml-vulkan",
        "vendor/llama.cpp/ggml/src/ggml-opencl", "vendor/llama.cpp/ggml/src/ggml-hexagon",
        "vendor/llama.cpp/ggml/src/ggml-cann", "vendor/llama.cpp/ggml/src/ggml-metal"]
KEEP_TOOLS = {"mtmd", "CMakeLists.txt"}


def log(msg: str) -> None:
    print(f"[gpu_run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=isinstance(cmd, str), text=True, **kw)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def pinned_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if '"llama-cpp-python==' in line:
            return line.split("==", 1)[1].split('"', 1)[0]
    raise SystemExit("no llama-cpp-python pin in pyproject.toml")


# -- here: stage everything ------------------------------------------------------------------------------
def runtime_requirements() -> list[str]:
    """The server's runtime packages at the versions installed here (pure-Python or abi3/cp312 wheels)."""
    names = ["pygls", "lsprotocol", "cattrs", "tree-sitter", "tree-sitter-language-pack", "tree-sitter-c-sharp",
             "tree-sitter-embedded-template", "tree-sitter-yaml", "diskcache"]
    from importlib import metadata

    reqs = []
    for name in names:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return reqs


def prepare(args: argparse.Namespace) -> int:
    STAGE.mkdir(exist_ok=True)
    # .gpu/ must be ignored (else it travels as working tree, over the 64 MiB limit) and carried by name
    exclude = Path(sh(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT, capture_output=True,
                      check=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else ROOT / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text(errors="replace").split() if exclude.exists() else []):
        with open(exclude, "a") as fh:
            fh.write("\n/.gpu/\n")
    version = pinned_version()
    # 1. the llama-cpp-python sdist, trimmed (73 MB as published: more than one call carries)
    src = STAGE / "src"
    trimmed = src / f"llama_cpp_python-{version}.tar.gz"
    if not trimmed.exists():
        src.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                "--disable-pip-version-check", f"llama-cpp-python=={version}", "-d", tmp], check=True)
            sdist = next(tmp_path.glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tf:
                tf.extractall(tmp_path / "x", filter="data")
            top = next((tmp_path / "x").iterdir())
            for rel in TRIM:
                shutil.rmtree(top / rel, ignore_errors=True)
            for tool in (top / "vendor/llama.cpp/tools").iterdir():
                if tool.name not in KEEP_TOOLS:
                    shutil.rmtree(tool) if tool.is_dir() else tool.unlink()
            with tarfile.open(trimmed, "w:gz") as tf:
                tf.add(top, arcname=top.name)
        log(f"trimmed sdist: {trimmed} ({trimmed.stat().st_size / 2**20:.1f} MiB)")
    # 2. wheels of the runtime packages for the device's Python
    whl = STAGE / "whl"
    if not any(whl.glob("*.whl")):
        whl.mkdir(exist_ok=True)
        plats = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                 "manylinux1_x86_64", "manylinux_2_5_x86_64"]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--python-version", DEVICE_PY, "--implementation", "cp",
               *[a for p in plats for a in ("--platform", p)], "-d", str(whl), *runtime_requirements()]
        sh(cmd, check=True)
    # 3. the quality benchmark's data (../shared does not travel)
    data = STAGE / "data"
    src_data = Path(args.data)
    if not data.exists() and src_data.is_dir():
        shutil.copytree(src_data, data)
    # 4. the default model in parts
    sys.path.insert(0, str(ROOT))
    from lsp_server import catalog

    entry = catalog.load_catalog().get("default")
    model = catalog.model_path(entry)
    if not model.exists():
        raise SystemExit(f"default model missing at {model}: run `make model` first")
    manifest_path = STAGE / "model.json"
    if not manifest_path.exists():
        for old in STAGE.glob("m[0-9]*"):
            shutil.rmtree(old)
        fixed = sum(p.stat().st_size for d in ("src", "whl", "data") for p in (STAGE / d).rglob("*") if p.is_file())
        first = MAX_CARRY - FIRST_PART_ROOM - fixed  # what is left of call 1 for the model
        sizes, left = [], model.stat().st_size
        if first >= 4 * 2**20:
            sizes.append(min(first, left))
            left -= sizes[0]
        while left:
            sizes.append(min(PART, left))
            left -= sizes[-1]
        parts = []
        with open(model, "rb") as fh:
            for n, take in enumerate(sizes, 1):
                (STAGE / f"m{n}").mkdir()
                path = STAGE / f"m{n}" / "part"
                path.write_bytes(fh.read(take))
                parts.append({"n": n, "bytes": take, "sha256": sha256(path)})
        size = model.stat().st_size
        first_in_call1 = first >= 4 * 2**20
        manifest = {"file": entry.file, "bytes": size, "sha256": catalog.expected_sha256(entry) or sha256(model),
                    "parts": parts, "first_in_call1": first_in_call1, "llama_cpp_python": version}
        manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest = json.loads(manifest_path.read_text())
    # the manifest travels with the sources in call 1
    shutil.copy(manifest_path, STAGE / "src" / "model.json")
    plan = calls(manifest)
    (STAGE / "calls.json").write_text(json.dumps(plan, indent=1))
    for c in plan:
        mib = sum(path_size(STAGE.parent / p) for p in c["carry"]) / 2**20
        log(f"call {c['call']}: carry {c['carry']} ({mib:.1f} MiB) -> {c['command']}")
    log(f"plan in {STAGE / 'calls.json'}; run the calls back to back (the machine is given back after 30 s idle)")
    return 0


def path_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def calls(manifest: dict) -> list[dict]:
    """The device calls, in order: call 1 carries the sources, wheels, data (and part 1 when it fits), then one
    model part per call; the last one also measures."""
    parts = [p["n"] for p in manifest["parts"]]
    first = parts[0] if manifest.get("first_in_call1") else None
    plan = [{"call": 1, "carry": [".gpu/src", ".gpu/whl", ".gpu/data"] + ([f".gpu/m{first}"] if first else []),
             "command": "python3 bench/gpu_run.py start" + (f" --part {first}" if first else ""), "timeout_s": 120}]
    rest = [n for n in parts if n != first]
    for i, n in enumerate(rest):
        last = i == len(rest) - 1
        plan.append({"call": len(plan) + 1, "carry": [f".gpu/m{n}"],
                     "command": f"python3 bench/gpu_run.py part {n}" + (" --then-run" if last else ""),
                     "timeout_s": 600 if last else 60})
    return plan


# -- device: call 1 ----------------------------------------------------------------------------------------
def keep_part(n: int) -> None:
    """Copy a carried model part out of the working tree copy (which the next call replaces)."""
    parts = WORK / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    src = STAGE / f"m{n}"
    if not (src / "part").exists():
        raise SystemExit(f"part {n} was not carried (.gpu/m{n}/part missing)")
    shutil.copy(src / "part", parts / f"part{n}")
    log(f"kept part {n} ({(parts / f'part{n}').stat().st_size / 2**20:.1f} MiB)")


def cublas_dir() -> str:
    """'' when the toolkit has cuBLAS; else the nvidia-cublas wheel's folder that PyTorch brings (include/, lib/)."""
    for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"):
        if glob.glob(f"{d}/libcublas.so*"):
            return ""
    found = sh([sys.executable, "-c", "import nvidia, os; print(os.pathsep.join(nvidia.__path__))"],
               capture_output=True).stdout.strip()
    for base in filter(None, found.split(os.pathsep)):
        for lib in sorted(glob.glob(f"{base}/*/lib/libcublas.so.*")):
            return str(Path(lib).parent.parent)
    return ""


def start(args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    wheels = sorted(str(p) for p in (STAGE / "whl").glob("*.whl"))
    sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
        "--target", str(SITE), *wheels], check=True)
    if (STAGE / "data").is_dir():
        shutil.copytree(STAGE / "data", WORK / "data", dirs_exist_ok=True)
    sdist = next((STAGE / "src").glob("llama_cpp_python-*.tar.gz"))
    shutil.copy(sdist, WORK / sdist.name)
    shutil.copy(STAGE / "src" / "model.json", WORK / "model.json")
    if args.part:
        keep_part(args.part)
    sh("nvidia-smi --query-gpu=name,compute_cap,memory.total,memory.used,driver_version --format=csv")
    cublas = cublas_dir()
    # the build runs on in its own session while the next calls carry the model parts
    # the build script runs from a copy: each later call re-sends the working tree, scripts/ included
    tools = WORK / "buildtree"
    (tools / "scripts").mkdir(parents=True, exist_ok=True)
    for rel in ("scripts/build_cuda.sh", "scripts/llama_cpu_flags.sh", "pyproject.toml"):
        shutil.copy2(ROOT / rel, tools / rel)
    cmd = (f"cd {tools} && scripts/build_cuda.sh --python {sys.executable} --no-build-isolation --arch 90 "
           f"--jobs {os.cpu_count()} --sdist {WORK / sdist.name} --wheel-dir {WORK / 'wheel'}"
           + (f" --cublas {cublas}" if cublas else "")
           + f" > {BUILD_LOG} 2>&1; echo $? > {BUILD_DONE}")
    BUILD_DONE.unlink(missing_ok=True)
    subprocess.Popen(["setsid", "bash", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    log(f"CUDA build started in the background: {BUILD_LOG}")
    return 0


def build_progress() -> None:
    """One line on the background build (so that a failed configure shows in the next call, not the last)."""
    if BUILD_DONE.exists():
        log(f"CUDA build finished, rc {BUILD_DONE.read_text().strip()}")
    if not BUILD_LOG.exists():
        log("CUDA build: no log yet")
        return
    lines = BUILD_LOG.read_text(errors="replace").splitlines()
    steps = [ln for ln in lines if ln.lstrip().startswith("[")]
    log(f"CUDA build: {steps[-1].strip() if steps else 'configuring'} ({len(lines)} log lines)")
    if BUILD_DONE.exists() and BUILD_DONE.read_text().strip() != "0" or not steps:
        print("\n".join(lines[-15:]), flush=True)


def part(args: argparse.Namespace) -> int:
    keep_part(args.n)
    if args.then_run:
        return run(args)
    build_progress()
    return 0


# -- device (or --cpu-only here): the measurements ---------------------------------------------------------------
class Figures:
    """The JSON of figures, rewritten after every step."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "steps": {}}

    def put(self, key: str, value) -> None:
        self.data["steps"][key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def assemble_model(dest_dir: Path) -> Path:
    manifest = json.loads((WORK / "model.json").read_text())
    dest = dest_dir / "models" / manifest["file"]
    if dest.exists() and dest.stat().st_size == manifest["bytes"]:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(dest.with_suffix(".partial"), "wb") as out:
        for p in manifest["parts"]:
            path = WORK / "parts" / f"part{p['n']}"
            if not path.exists():
                raise SystemExit(f"model part {p['n']} missing: was call {p['n']} made?")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != p["sha256"]:
                raise SystemExit(f"model part {p['n']}: sha256 mismatch")
            h.update(data)
            out.write(data)
    if h.hexdigest() != manifest["sha256"]:
        raise SystemExit("assembled model: sha256 mismatch")
    dest.with_suffix(".partial").rename(dest)
    dest.with_name(dest.name + ".sha256").write_text(manifest["sha256"] + "\n")  # the catalog's verified marker
    return dest


def wait_for_build(timeout: float) -> dict:
    t0 = time.monotonic()
    while not BUILD_DONE.exists() and time.monotonic() - t0 < timeout:
        time.sleep(5)
    tail = BUILD_LOG.read_text(errors="replace")[-3000:] if BUILD_LOG.exists() else ""
    if not BUILD_DONE.exists():
        return {"ok": False, "error": f"build not finished after waiting {timeout:.0f}s", "log_tail": tail}
    rc = BUILD_DONE.read_text().strip()
    wheel = next(iter(sorted((WORK / "wheel").glob("llama_cpp_python-*.whl"))), None)
    if rc != "0" or wheel is None:
        return {"ok": False, "error": f"build failed (rc {rc})", "log_tail": tail}
    sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
        "--target", str(SITE), str(wheel)], check=True)
    built = [ln for ln in tail.splitlines() if ln.startswith("built ")]
    return {"ok": True, "wheel": wheel.name, "waited_s": round(time.monotonic() - t0, 1),
            "built": built[-1] if built else ""}


THROUGHPUT = r"""
import json, sys, threading, time
from lsp_server.backends.llama_cpp import LlamaCppBackend
model, ngl, n_prompt, n_gen, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
# the server's own backend and decode path (a plain llama_cpp.Llama script crashed on the H200 machine)
backend = LlamaCppBackend(model, n_ctx=4096, n_gpu_layers=ngl)
backend.load()
text = open(sys.argv[6], encoding="utf-8").read()
toks = backend.tokenize(text)
while len(toks) < n_prompt:
    toks = toks + toks
toks = toks[:n_prompt]
res = {"n_gpu_layers": ngl, "gpu_layers_offloaded": backend.gpu_layers_offloaded, "n_prompt": n_prompt,
       "n_gen": n_gen, "prompt_s": [], "gen_s": []}
for _ in range(reps):
    backend._invalidate()  # an empty KV cache: the whole prompt is evaluated again
    t0 = time.perf_counter()
    backend._prefill_tokens(toks, threading.Event())
    t1 = time.perf_counter()
    for i in range(n_gen):  # greedy, one token per decode as the server does without drafts
        backend._decode([backend._argmax(-1)], n_prompt + i)
    t2 = time.perf_counter()
    res["prompt_s"].append(t1 - t0); res["gen_s"].append(t2 - t1)
p, g = sorted(res["prompt_s"])[reps // 2], sorted(res["gen_s"])[reps // 2]
res["prompt_tok_s"] = round(n_prompt / p, 1); res["gen_tok_s"] = round(n_gen / g, 1)
print("RESULT " + json.dumps(res))
"""


def run_step(fig: Figures, key: str, cmd: list[str], env: dict, timeout: float, parse=None) -> None:
    log(f"{key}: {' '.join(cmd)}")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        fig.put(key, {"error": f"timed out after {timeout:.0f}s", "stdout_tail": (exc.stdout or "")[-1500:]
                      if isinstance(exc.stdout, str) else ""})
        return
    value: dict = {"seconds": round(time.monotonic() - t0, 1), "rc": proc.returncode}
    if proc.returncode != 0:
        value["stderr_tail"] = proc.stderr[-2000:]
    if parse is not None:
        try:
            value.update(parse(proc))
        except Exception as exc:  # noqa: BLE001 - a step's figures are reported, not fatal
            value["parse_error"] = repr(exc)
            value["stdout_tail"] = proc.stdout[-1500:]
    fig.put(key, value)
    print(proc.stdout[-3000:], flush=True)


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "out" / ("gpu-dry" if args.dry else "gpu"))
    fig = Figures(out_dir / "gpu_figures.json")
    fig.data["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                           "cpu_only": args.cpu_only, "dry": args.dry}
    nvsmi = shutil.which("nvidia-smi")
    if nvsmi:
        fig.data["machine"]["gpu"] = sh([nvsmi, "--query-gpu=name,compute_cap,memory.total,driver_version",
                                         "--format=csv,noheader"], capture_output=True).stdout.strip()
    fig.save()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.cpu_only:  # this environment's llama.cpp and default model (INFILL_LS_CACHE as set, if set)
        sys.path.insert(0, str(ROOT))
        from lsp_server import catalog

        model = catalog.model_path(catalog.load_catalog().get("default"))
    else:
        model = assemble_model(CACHE)
        env["INFILL_LS_CACHE"] = str(CACHE)
        env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        build = wait_for_build(args.build_wait_s)
        fig.put("build", build)
        if not build["ok"]:
            log(f"CUDA build not usable: {build['error']}")
            shutil.copy(BUILD_LOG, out_dir / "build.log") if BUILD_LOG.exists() else None
            return 1
        shutil.copy(BUILD_LOG, out_dir / "build.log")
    fig.data["model"] = {"path": str(model), "bytes": model.stat().st_size}
    cpu_env = dict(env, CUDA_VISIBLE_DEVICES="")  # llama.cpp sees no GPU: n_gpu_layers -1 -> 0
    devices = [("cpu", cpu_env)] if args.cpu_only else [("gpu", env), ("cpu", cpu_env)]
    py = sys.executable
    dry = args.dry
    n_prompt, n_gen, reps = (32, 4, 1) if dry else (args.prompt_tokens, args.gen_tokens, 3)
    # --dry runs on a shared 2-core machine: one short session, one task, generous time limits
    step_timeout = (lambda t: max(t, 600)) if dry else (lambda t: t)
    sample_text = ROOT / "lsp_server" / "postprocess.py"
    for dev, denv in devices:
        run_step(fig, f"doctor_{dev}", [py, "-m", "lsp_server", "doctor", "--json", "--load"], denv, 180,
                 lambda p: {"report": {k: v for k, v in json.loads(p.stdout).items()
                                       if k in ("llama.cpp", "gpu", "settings")}})
        ngl = 0 if dev == "cpu" else -1
        # faulthandler: a crash in llama.cpp prints the Python stack (rc -11 with no output on 2026-11-27)
        run_step(fig, f"throughput_{dev}", [py, "-X", "faulthandler", "-c", THROUGHPUT, str(model), str(ngl),
                                            str(n_prompt), str(n_gen), str(reps), str(sample_text)],
                 denv, step_timeout(240),
                 lambda p: json.loads(p.stdout.split("RESULT ", 1)[1]))
    for dev, denv in devices:
        keys = 4 if dry else args.replay_keys
        rep_json = WORK_OUT(out_dir) / f"replay-{dev}.json"
        files = args.replay_files.split(",")[0] if dry else args.replay_files
        run_step(fig, f"replay_{dev}", [py, "bench/replay.py", "--config", args.replay_config, "--limit-keys",
                                        str(keys), "--files", files, "--pause-wait-s", "5", "--json", str(rep_json)],
                 denv, step_timeout(args.replay_timeout_s), lambda p, j=rep_json: {"summary": json.loads(j.read_text())["results"],
                                                                    "table": p.stdout[-2500:]})
    for dev, denv in devices:
        limit = 1 if dry else (args.quality_limit if dev == "gpu" else args.cpu_quality_limit)
        if limit <= 0:
            continue
        jsonl = WORK_OUT(out_dir) / f"quality-{dev}.jsonl"
        data = WORK / "data" if (WORK / "data").is_dir() and not args.cpu_only else Path(args.data)
        run_step(fig, f"quality_{dev}", [py, "bench/quality.py", "--limit", str(limit), "--model", str(model),
                                         "--sets", "single" if dry else args.quality_sets,
                                         "--data", str(data), "--jsonl", str(jsonl),
                                         "--workers", str(min(8, os.cpu_count() or 2))],
                 denv, step_timeout(args.quality_timeout_s),
                 lambda p, j=jsonl: {"summary": json.loads(j.with_suffix(".summary.json").read_text())["summary"]})
    fig.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    fig.save()
    log(f"figures: {fig.path}")
    return 0


def WORK_OUT(out_dir: Path) -> Path:  # noqa: N802 - bulky intermediate files stay out of $OUT (8 files come back)
    d = WORK / "out" if os.environ.get("OUT") else out_dir
    d.mkdir(parents=True, exist_ok=True)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: stage .gpu/ and print the device calls")
    p.add_argument("--data", default=str(human_eval_dir()))
    p = sub.add_parser("start", help="device call 1: install wheels, start the CUDA build (--part N: keep it)")
    p.add_argument("--part", type=int, default=0)
    for name in ("part", "run"):
        p = sub.add_parser(name, help="device: keep model part N (--then-run: and measure)" if name == "part"
                           else "measure (device after the parts, or here with --cpu-only --dry)")
        if name == "part":
            p.add_argument("n", type=int)
            p.add_argument("--then-run", action="store_true")
        p.add_argument("--cpu-only", action="store_true", help="no build, no GPU: the current environment's llama.cpp")
        p.add_argument("--dry", action="store_true", help="tiny limits: checks the orchestration, not a benchmark")
        p.add_argument("--out", default=None, help="figures folder (default $OUT, else bench/out/gpu[-dry])")
        p.add_argument("--data", default=str(human_eval_dir()))
        p.add_argument("--build-wait-s", type=float, default=420)
        p.add_argument("--prompt-tokens", type=int, default=1024)
        p.add_argument("--gen-tokens", type=int, default=128)
        p.add_argument("--replay-config", default="optimized", choices=("naive", "optimized", "both"))
        p.add_argument("--replay-keys", type=int, default=60)
        p.add_argument("--replay-files", default="site:diskcache/core.py::__contains__,"
                       "lsp_server/postprocess.py::remove_prefix_echo")
        p.add_argument("--replay-timeout-s", type=float, default=150)
        p.add_argument("--quality-limit", type=int, default=20, help="tasks per set on the GPU")
        p.add_argument("--cpu-quality-limit", type=int, default=5, help="tasks per set on the CPU (0: skip)")
        p.add_argument("--quality-timeout-s", type=float, default=200)
        p.add_argument("--quality-sets", default="single,random,multi")
    args = ap.parse_args(argv)
    return {"prepare": prepare, "start": start, "part": part, "run": run}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
