"""The command line: headless completion on the bundled example, models, doctor, version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsp_server", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_complete_bundled_example(model_path):
    proc = run("complete", "examples/demo.py:9:end")
    assert proc.returncode == 0, proc.stderr
    completion = proc.stdout.strip()
    assert "len(values)" in completion or "total" in completion, completion
    source = (ROOT / "examples/demo.py").read_text().rstrip("\n") + completion + "\n"
    compile(source, "demo.py", "exec")


def test_complete_rejects_bad_positions():
    proc = run("complete", "examples/demo.py:999:1")
    assert proc.returncode == 2 and "outside the file" in proc.stderr
    proc = run("complete", "examples/nope.py:1:1")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run("complete", "examples/demo.py")
    assert proc.returncode == 2 and "FILE:LINE:COL" in proc.stderr


def test_version_models_doctor(model_path):
    assert run("--version").stdout.startswith("infill-ls ")
    listing = run("models", "list").stdout
    assert "qwen2.5-coder-0.5b-instruct" in listing and "installed" in listing and "codellama-34b" in listing
    assert run("models", "path").stdout.strip() == str(model_path)
    pulled = run("models", "pull")
    assert pulled.returncode == 0 and pulled.stdout.strip() == str(model_path)
    bad = run("models", "pull", "no-such-model")
    assert bad.returncode == 2 and "unknown model" in bad.stderr
    report = json.loads(run("doctor", "--json").stdout)
    assert report["llama.cpp"]["available"] is True
    assert isinstance(report["llama.cpp"]["gpu_offload"], bool)
    assert report["model"]["exists"] is True and report["model"]["verified"] is True
    assert "GPU offload" in run("doctor").stdout


def test_model_that_does_not_fit_in_memory_gets_a_clear_message(model_path):
    """A context too large for the memory left (here: a 2.5 GB address-space limit, prlimit) is refused
    with the numbers before llama.cpp allocates; without the check the server died with SIGABRT."""
    import shutil

    import pytest

    if shutil.which("prlimit") is None:
        pytest.skip("util-linux prlimit is not installed")
    settings = '{"models": {"default": {"n_ctx": 131072}}, "cache": {"disk": false}}'
    proc = subprocess.run(["prlimit", "--as=2500000000", sys.executable, "-m", "lsp_server", "complete",
                           "examples/demo.py:9:end", "--settings", settings],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode > 0, (proc.returncode, proc.stderr[-2000:])  # an error exit, not a signal
    assert "n_ctx=131072 needs about" in proc.stderr and "set n_ctx to" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
