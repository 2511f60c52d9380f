"""PEFT LoRA adapter directories for the transformers backend, on the real default model.

transformers dequantizes the default model's GGUF (about a minute on 2 cores), so the model is loaded
ONCE here and the adapter code (lsp_server/adapters.apply_peft, what TransformersBackend._apply_adapters
calls) runs on copies of it. The adapter is written in the test as PEFT saves one: adapter_config.json and
adapter_model.safetensors with `base_model.model.<module>.lora_A/B.weight` tensors.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the [transformers] extra is not installed")
pytest.importorskip("transformers", reason="the [transformers] extra is not installed")
pytest.importorskip("peft", reason="peft is not installed (pip install peft)")

from safetensors.torch import save_file  # noqa: E402

from lsp_server.adapters import AdapterStatus, adapters_key, apply_peft  # noqa: E402

RANK = 4
PROMPT = "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n<|fim_middle|>"


def write_peft(path: Path, tensors: dict[str, torch.Tensor], targets: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": RANK, "lora_dropout": 0.0,
        "bias": "none", "target_modules": targets, "fan_in_fan_out": False, "inference_mode": True,
        "base_model_name_or_path": None}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture(scope="module")
def base(model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": model_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def greedy(model, tokenizer, n: int = 6) -> str:
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, base):
    model, _ = base
    out = tmp_path_factory.mktemp("peft")
    down = model.model.layers[23].mlp.down_proj.weight  # (out 896, in 4864)
    q = model.model.layers[0].self_attn.q_proj.weight
    gen = torch.Generator().manual_seed(3)
    prefix = "base_model.model.model.layers"
    strong = {
        f"{prefix}.23.mlp.down_proj.lora_A.weight": torch.randn(RANK, down.shape[1], generator=gen) / 70,
        f"{prefix}.23.mlp.down_proj.lora_B.weight": torch.randn(down.shape[0], RANK, generator=gen) * 8,
        f"{prefix}.0.self_attn.q_proj.lora_A.weight": torch.randn(RANK, q.shape[1], generator=gen) / 30,
        f"{prefix}.0.self_attn.q_proj.lora_B.weight": torch.randn(q.shape[0], RANK, generator=gen) * 0.01,
    }
    wrong = {f"{prefix}.0.self_attn.q_proj.lora_A.weight": torch.randn(RANK, q.shape[1] // 2, generator=gen),
             f"{prefix}.0.self_attn.q_proj.lora_B.weight": torch.randn(q.shape[0], RANK, generator=gen)}
    gguf_file = out / "adapter.gguf"
    gguf_file.write_bytes(b"GGUF" + b"\0" * 60)
    return {"strong": write_peft(out / "strong", strong, ["layers.23.mlp.down_proj", "layers.0.self_attn.q_proj"]),
            "wrong-shape": write_peft(out / "wrong", wrong, ["layers.0.self_attn.q_proj"]),
            "gguf": gguf_file, "missing": out / "missing"}


def test_an_adapter_changes_the_output_and_scale_zero_attaches_nothing(base, adapters):
    model, tokenizer = base
    before = greedy(model, tokenizer)
    assert "a + b" in before

    same, statuses = apply_peft(model, [{"path": str(adapters["strong"]), "scale": 0.0}])
    assert same is model and [s.status for s in statuses] == ["loaded"]
    assert adapters_key(statuses) == ()  # shares the base model's cache entries

    merged, statuses = apply_peft(copy.deepcopy(model), [{"path": str(adapters["strong"]), "scale": 1.0}])
    [st] = statuses
    assert st.status == "loaded" and st.info["rank"] == RANK and len(st.sha256) == 64
    assert not any("lora" in name for name, _ in merged.named_modules())  # merged into the weights
    after = greedy(merged, tokenizer)
    assert after != before, after
    assert greedy(model, tokenizer) == before  # the base model itself is untouched


@pytest.mark.parametrize("kind, reason", [
    ("wrong-shape", "does not fit the model's model.layers.0.self_attn.q_proj"),
    ("gguf", "GGUF adapters are for the llama_cpp backend"),
    ("missing", "LoRA adapter not found"),
])
def test_a_bad_adapter_is_reported_and_the_others_still_apply(base, adapters, kind, reason):
    model, tokenizer = base
    work = copy.deepcopy(model)
    merged, statuses = apply_peft(work, [{"path": str(adapters[kind]), "scale": 1.0},
                                         {"path": str(adapters["strong"]), "scale": 1.0}])
    bad, good = statuses
    assert isinstance(bad, AdapterStatus) and bad.status == "error" and reason in bad.error, bad.error
    assert good.status == "loaded"
    alone, _ = apply_peft(copy.deepcopy(model), [{"path": str(adapters["strong"]), "scale": 1.0}])
    assert greedy(merged, tokenizer) == greedy(alone, tokenizer)  # exactly the good adapter's effect
