"""Where the HumanEval infilling data lies (no dependencies: gpu_run.py imports it before any install)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def human_eval_dir() -> Path:
    """$INFILL_BENCH_DATA, else ../shared/bench beside the checkout, else /work/shared."""
    if env := os.environ.get("INFILL_BENCH_DATA"):
        return Path(env)
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if (base / "bench" / "human-eval-infilling").is_dir():
            return base / "bench" / "human-eval-infilling"
    return ROOT.parent / "shared" / "bench" / "human-eval-infilling"
