"""Generation and prompt throughput of the default model per llama.cpp thread count (prints a table).

    .venv/bin/python bench/threads.py            # 1 .. every usable CPU
    .venv/bin/python bench/threads.py --threads 1,2 --tokens 64

Each thread count loads the model afresh, warms it with one short request, then times one greedy
generation of --tokens tokens after a short prompt and one evaluation of a ~600-token prompt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsp_server.backends.llama_cpp import usable_cpus  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache" / "infill-ls" / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
PROMPT = "def quicksort(arr):\n    # sort\n"
LONG = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(45))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--threads", default="", help="comma list (default: 1 .. every usable CPU)")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from llama_cpp import Llama

    counts = [int(t) for t in args.threads.split(",") if t] or list(range(1, usable_cpus() + 1))
    print(f"model {Path(args.model).name}; usable CPUs {usable_cpus()}")
    print("| threads | generation tok/s | prompt tok/s (tokens) |\n|---|---|---|")
    for n in counts:
        llm = Llama(model_path=args.model, n_ctx=2048, n_threads=n, n_threads_batch=n, verbose=False)
        llm.create_completion(PROMPT, max_tokens=4, temperature=0.0)
        llm.reset()
        t0 = time.perf_counter()
        out = llm.create_completion(PROMPT, max_tokens=args.tokens, temperature=0.0)
        gen = out["usage"]["completion_tokens"] / (time.perf_counter() - t0)
        llm.reset()
        tokens = llm.tokenize(LONG.encode())
        t0 = time.perf_counter()
        llm.eval(tokens)
        prompt = len(tokens) / (time.perf_counter() - t0)
        print(f"| {n} | {gen:.1f} | {prompt:.0f} ({len(tokens)}) |", flush=True)
        del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())
