#!/usr/bin/env python3
"""Train a LoRA (or QLoRA) adapter on a FIM training set made by scripts/build_fim_dataset.py.

    pip install -e '.[transformers,train]'          # torch, transformers, peft (bitsandbytes for --qlora)
    python scripts/train_lora.py --data data/fim --base Qwen/Qwen2.5-Coder-0.5B --out adapters/ours
    python scripts/train_lora.py --data data/fim --gguf default --out adapters/ours      # offline: the GGUF

The base is a Hugging Face checkpoint (a hub id or a local directory) or, with --gguf, a GGUF file that
transformers dequantizes (a catalog name such as `default`, or a path): no download needed. Each example
is the server's own prompt followed by the hole's text; the loss covers only the hole and its end token.

Writes OUT/ (adapter_config.json + adapter_model.safetensors: a PEFT adapter, which the transformers
backend loads as is), OUT/base-config/ (the base model's config and tokenizer, which llama.cpp's
convert_lora_to_gguf.py needs as --base) and OUT/train_report.json (time, peak memory, losses, held-out
exact match before and after). docs/CUSTOMIZE.md has the whole path to a GGUF adapter in the editor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def load_rows(path: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def load_base(args, torch):
    """(model, tokenizer, where the base came from) for a hub id / directory, or a dequantized GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {}
    if args.gguf:
        from lsp_server.catalog import resolve_model_file

        path, _entry = resolve_model_file(args.gguf)
        if not path.is_file():
            sys.exit(f"train_lora: no GGUF at {path} (`infill-ls models pull {args.gguf}`)")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        source = args.base
    if args.qlora:
        if not torch.cuda.is_available():
            sys.exit("train_lora: --qlora needs a CUDA GPU (bitsandbytes 4-bit); use plain LoRA on this machine")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items() if k == "gguf_file"})
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, f"{source}/{kwargs['gguf_file']}" if "gguf_file" in kwargs else source


def encode(tokenizer, row: dict, max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels: the prompt is context only (-100), the hole's text is what is learned."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    target = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    if not target or len(target) >= max_len:
        return None
    prompt = prompt[-(max_len - len(target)) :]  # keep the end of the prompt: the FIM markers are there
    return prompt + target, [-100] * len(prompt) + target


def batches(encoded: list, size: int, pad_id: int, torch, rng: random.Random):
    order = list(range(len(encoded)))
    rng.shuffle(order)
    for i in range(0, len(order), size):
        chunk = [encoded[j] for j in order[i : i + size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, (x, y) in enumerate(chunk):
            ids[k, : len(x)] = torch.tensor(x)
            labels[k, : len(y)] = torch.tensor(y)
            mask[k, : len(x)] = 1
        yield ids, labels, mask


def exact_match(model, tokenizer, rows: list[dict], max_new_tokens: int, torch) -> dict:
    """Greedy completion of held-out holes, cut like the server cuts (end token, one line in single mode)."""
    model.eval()
    end = rows[0]["completion"][len(rows[0]["middle"]) :] if rows else ""
    hits, device = 0, next(model.parameters()).device
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False)
            if end and end in text:
                text = text[: text.index(end)]
            want = row["middle"]
            if row.get("mode") == "single":
                text, want = text.split("\n", 1)[0], want.split("\n", 1)[0]
            hits += text.rstrip() == want.rstrip()
    return {"exact_match": round(hits / len(rows), 4) if rows else None, "examples": len(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="directory with train.jsonl and heldout.jsonl")
    p.add_argument("--out", type=Path, required=True, help="output directory for the PEFT adapter")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="Hugging Face model id or checkpoint directory, e.g. Qwen/Qwen2.5-Coder-0.5B")
    src.add_argument("--gguf", help="train on a dequantized GGUF instead: catalog name (default) or path")
    p.add_argument("--qlora", action="store_true", help="4-bit base weights (bitsandbytes, CUDA only)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", default=DEFAULT_TARGETS, help="comma-separated module names to adapt")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: epochs)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-len", type=int, default=2048, help="tokens per example (prompt is cut from the left)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training examples (smoke runs)")
    p.add_argument("--eval", type=int, default=200, help="held-out examples for exact match (0: skip)")
    p.add_argument("--eval-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's choice)")
    args = p.parse_args(argv)

    try:
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as exc:
        sys.exit(f"train_lora: {exc}; install torch, transformers and peft (pip install -e '.[transformers,train]')")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_rows = load_rows(args.data / "train.jsonl", args.limit or None)
    held_rows = load_rows(args.data / "heldout.jsonl", args.eval or None) if args.eval else []
    if not train_rows:
        sys.exit(f"train_lora: no examples in {args.data / 'train.jsonl'}")

    started = time.monotonic()
    model, tokenizer, source = load_base(args, torch)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.qlora:
        model.to(device)
    report: dict = {"base": source, "device": str(device), "dtype": str(next(model.parameters()).dtype),
                    "train_examples": len(train_rows), "args": {k: str(v) for k, v in vars(args).items()},
                    "load_seconds": round(time.monotonic() - started, 1)}
    if held_rows:
        report["heldout_before"] = exact_match(model, tokenizer, held_rows, args.eval_tokens, torch)
        print(f"held-out exact match before: {report['heldout_before']}", file=sys.stderr)

    if args.qlora:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, bias="none",
                        task_type="CAUSAL_LM", target_modules=[t.strip() for t in args.targets.split(",")])
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report["trainable_parameters"] = trainable

    encoded = [e for e in (encode(tokenizer, r, args.max_len) for r in train_rows) if e]
    steps_per_epoch = math.ceil(len(encoded) / (args.batch * args.grad_accum))
    total = args.max_steps or max(1, math.ceil(steps_per_epoch * args.epochs))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / total) if total > 1 else 1.0)
    rng = random.Random(args.seed)
    losses, step, micro = [], 0, 0
    t_train = time.monotonic()
    model.train()
    while step < total:
        for ids, labels, mask in batches(encoded, args.batch, tokenizer.pad_token_id, torch, rng):
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            (out.loss / args.grad_accum).backward()
            losses.append(out.loss.detach().item())
            micro += 1
            if micro % args.grad_accum:
                continue
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            recent = losses[-args.grad_accum :]
            print(f"step {step}/{total} loss {sum(recent) / len(recent):.4f}", file=sys.stderr)
            if step >= total:
                break
    report["train_seconds"] = round(time.monotonic() - t_train, 1)
    report["steps"] = step
    report["loss_first"] = round(sum(losses[: args.grad_accum]) / min(len(losses), args.grad_accum), 4)
    report["loss_last"] = round(sum(losses[-args.grad_accum :]) / min(len(losses), args.grad_accum), 4)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    base_config = args.out / "base-config"  # what convert_lora_to_gguf.py --base reads (no weights needed)
    base = model.get_base_model()
    config = base.config.to_dict()
    config.pop("quantization_config", None)  # the converter reads only the architecture: no weights, no quant
    config.setdefault("architectures", None)
    config["architectures"] = config["architectures"] or [type(base).__name__]  # a GGUF-made config lacks it
    base_config.mkdir(parents=True, exist_ok=True)
    (base_config / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(base_config))
    if held_rows:
        report["heldout_after"] = exact_match(model, tokenizer, held_rows, args.eval_tokens, torch)
        print(f"held-out exact match after: {report['heldout_after']}", file=sys.stderr)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if torch.cuda.is_available():
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
