"""Typed settings: parsed from `initializationOptions` and `workspace/didChangeConfiguration`.

Every field has a default. `parse_settings` never raises: each invalid value is reported as a message
and replaced by its default, so the server always keeps running on something sensible.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AdapterSettings:
    """One LoRA adapter of a model: a GGUF adapter file (llama_cpp) and its scale (0: as if absent)."""

    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class ModelSettings:
    """One named model: where it comes from and how to run it."""

    model: str = ""  # catalog name, a .gguf path, or (transformers) a Hugging Face checkpoint directory
    backend: str = "llama_cpp"  # llama_cpp | llama_server | openai | ollama | transformers | fake (test only)
    template: str = ""  # FIM template name; empty: from the catalog or the GGUF vocabulary
    n_ctx: int = 4096
    n_gpu_layers: int = -1  # -1: all layers when llama.cpp has a GPU backend, else 0
    n_threads: int = 0  # 0: every CPU this process may use (generation and prompt evaluation)
    fake_outputs: str = ""  # fake backend only: JSON file of recorded raw outputs
    device: str = "auto"  # transformers: auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # transformers: auto (float32 on cpu, bfloat16/float16 on a GPU) | float32 | float16 | bfloat16
    # HTTP backends (llama_server | openai | ollama): see docs/DEPLOY.md
    url: str = ""  # server base URL, e.g. http://gpu-box:8080 (llama_server: empty + server_binary = managed)
    api_key: str = ""  # sent as `Authorization: Bearer ...`
    api_key_env: str = ""  # name of an environment variable holding the API key (preferred over api_key)
    timeout_s: int = 30  # connect and per-read timeout
    retries: int = 2  # retries with backoff on connection errors (and 503 while the server loads)
    verify_tls: bool = True
    ca_bundle: str = ""  # PEM file of CA certificates for https URLs
    remote_model: str = ""  # the model name the server knows (empty: the server's only/first model)
    slot_id: int = -1  # llama_server: pin this client to one slot (-1: the server picks by prompt similarity)
    fim: str = "auto"  # auto | native (server's own FIM: /infill, `suffix`) | prompt (rendered template, raw)
    server_binary: str = ""  # llama_server managed mode: path to llama-server, started and supervised by us
    server_args: str = ""  # managed mode: extra llama-server arguments (shell words), e.g. "-np 4 -ngl 99"
    prefix_reuse: bool = True  # reuse the KV cache for the longest common token prefix with the last prompt
    kv_reuse: bool = False  # experimental: also reuse an unchanged prompt tail (the suffix) by shifting its KV
    # prompt-lookup speculative decoding: tokens drafted per step (0: off). Off by default: with 2 threads it
    # generated slower here (25-26 against 30 tok/s in the replay, docs/BENCHMARKS.md), with 1 thread faster
    draft_tokens: int = 0
    adapters: tuple[AdapterSettings, ...] = ()  # LoRA adapters applied on top of the model (docs/CUSTOMIZE.md)


@dataclass(frozen=True)
class CompletionSettings:
    enable: bool = True
    languages: dict[str, bool] = field(default_factory=dict)  # languageId -> enabled ("*" default)
    max_tokens_single: int = 48
    max_tokens_multi: int = 160
    time_budget_ms: int = 1000  # while typing (automatic requests): generation stops at a line end after this
    time_budget_invoked_ms: int = 4000  # the same when the user asks explicitly (trigger kind Invoked, the CLI)
    type_through: bool = True  # typing the start of the shown suggestion answers with its rest, no model call
    prefetch: bool = True  # after a suggestion is accepted, compute the next one before it is asked for
    warmup_ms: int = 400  # after this pause in typing, evaluate the stable start of the next prompt (0: off)
    window_step_lines: int = 32  # the prefix window start moves in steps of this many lines (1: every line)
    # PSM templates: the text typed since the start of the cursor line (or up to this many lines above it)
    # goes after the middle marker, so the prefix and suffix stay fixed while typing (0: plain PSM)
    prefill_lines: int = 8
    # multi-line: stop generating once a whole line leaves the enclosing definition (nothing after it is kept)
    block_stop: bool = True
    # While typing, a prompt whose new tokens would take longer than this to evaluate (a file just opened, a
    # jump elsewhere) is answered from a short prompt of cold_context_tokens beside the full one, which is
    # then evaluated in the background (llama.cpp backend; 0: off)
    cold_prompt_ms: int = 1500
    cold_context_tokens: int = 128
    extra_files: bool = True  # add chunks of imported / open workspace files as extra context
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    extra_tokens: int = 512


@dataclass(frozen=True)
class CacheSettings:
    memory_entries: int = 512
    disk: bool = True
    dir: str = ""  # empty: $XDG_CACHE_HOME/infill-ls/completions
    size_mb: int = 256


@dataclass(frozen=True)
class PrivacySettings:
    """What may enter a prompt and leave the machine (lsp_server/privacy.py, docs/SECURITY.md)."""

    redact_secrets: bool = True  # HTTP backends: keys, tokens and passwords in a prompt are sent as [REDACTED]
    respect_gitignore: bool = True  # .gitignored files never enter another file's context (nor a remote prompt)
    exclude: tuple[str, ...] = ()  # globs added to the built-in list of secret files: never in a prompt


@dataclass(frozen=True)
class Settings:
    model: str = "default"  # key into `models`, a catalog name, or a .gguf path
    models: dict[str, ModelSettings] = field(default_factory=dict)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    load: str = "lazy"  # lazy | startup
    log_level: str = "info"
    # Code actions: user-defined actions (same fields as prompts/actions.toml entries; a built-in's name
    # overrides that built-in's fields) and the named model actions use (empty: the completion model).
    actions: dict[str, dict] = field(default_factory=dict)
    actions_model: str = ""

    def model_settings(self, name: str | None = None) -> tuple[str, ModelSettings]:
        """The named model's settings; a name that is not in `models` is a catalog name or path."""
        key = name or self.model
        if key in self.models:
            ms = self.models[key]
            return key, ms if ms.model else dataclasses.replace(ms, model=key)
        return key, ModelSettings(model=key)


_CHOICES = {"load": ("lazy", "startup"), "log_level": ("debug", "info", "warning", "error"),
            "backend": ("llama_cpp", "fake", "llama_server", "openai", "ollama", "transformers"),
            "dtype": ("auto", "float32", "float16", "bfloat16"), "fim": ("auto", "native", "prompt")}


def _coerce(cls: type, raw: Any, where: str, errors: list[str]) -> Any:
    """Build dataclass `cls` from a dict, keeping defaults for missing or invalid values."""
    if not isinstance(raw, dict):
        if raw is not None:
            errors.append(f"{where or 'settings'}: expected an object, got {type(raw).__name__}")
        return cls()
    values: dict[str, Any] = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        name = key.replace("-", "_")
        path = f"{where}.{key}" if where else key
        if name not in known:
            errors.append(f"{path}: unknown setting (ignored)")
            continue
        default = getattr(cls(), name)
        if name == "actions":
            from lsp_server.actions import check_action_spec, builtin_actions

            if not isinstance(value, dict):
                errors.append(f"{path}: expected an object of named actions")
                continue
            good = {}
            for action, spec in value.items():
                problems = check_action_spec(str(action), spec, partial=action in builtin_actions())
                errors.extend(f"{where + '.' if where else ''}{p}" for p in problems)
                if not problems:
                    good[str(action)] = dict(spec)
            values[name] = good
        elif name == "adapters":
            values[name] = _adapters(value, path, errors)
        elif name == "models":
            if not isinstance(value, dict):
                errors.append(f"{path}: expected an object of named models")
                continue
            values[name] = {k: _coerce(ModelSettings, v, f"{path}.{k}", errors) for k, v in value.items()}
        elif dataclasses.is_dataclass(default):
            values[name] = _coerce(type(default), value, path, errors)
        elif isinstance(default, bool):
            if isinstance(value, bool):
                values[name] = value
            else:
                errors.append(f"{path}: expected true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, int) and not isinstance(value, bool) and (value >= 0 or name in ("n_gpu_layers", "slot_id")):
                values[name] = value
            else:
                errors.append(f"{path}: expected a non-negative integer, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                errors.append(f"{path}: expected a string, got {value!r}")
            elif name in _CHOICES and value not in _CHOICES[name]:
                errors.append(f"{path}: {value!r} is not one of {', '.join(_CHOICES[name])}")
            else:
                values[name] = value
        elif isinstance(default, tuple):
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                values[name] = tuple(value)
            else:
                errors.append(f"{path}: expected a list of strings, got {value!r}")
        elif isinstance(default, dict):
            if isinstance(value, dict) and all(isinstance(v, bool) for v in value.values()):
                values[name] = dict(value)
            else:
                errors.append(f"{path}: expected an object of languageId: true/false")
    return cls(**values)


def _adapters(raw: Any, where: str, errors: list[str]) -> tuple[AdapterSettings, ...]:
    """`[{"path": "...", "scale": 1.0}, ...]` (a bare string is a path at scale 1); bad entries are dropped."""
    if not isinstance(raw, list):
        errors.append(f"{where}: expected a list of {{\"path\": ..., \"scale\": ...}} objects, got {raw!r}")
        return ()
    good = []
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            errors.append(f"{at}: expected an object with \"path\" and \"scale\", got {entry!r} (adapter ignored)")
            continue
        unknown = sorted(set(entry) - {"path", "scale"})
        path, scale = entry.get("path"), entry.get("scale", 1.0)
        if unknown:
            errors.append(f"{at}: unknown key(s) {', '.join(unknown)} (adapter ignored)")
        elif not isinstance(path, str) or not path.strip():
            errors.append(f"{at}.path: expected the path of a GGUF LoRA adapter file, got {path!r} (adapter ignored)")
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            errors.append(f"{at}.scale: expected a number, got {scale!r} (adapter ignored)")
        else:
            good.append(AdapterSettings(path=os.path.expanduser(path.strip()), scale=float(scale)))
    return tuple(good)


def parse_settings(raw: Any) -> tuple[Settings, list[str]]:
    """Settings from a client payload; accepts `{"infill": {...}}` or the bare object."""
    errors: list[str] = []
    if isinstance(raw, dict) and isinstance(raw.get("infill"), dict):
        raw = raw["infill"]
    if raw is None:
        raw = {}
    return _coerce(Settings, raw, "", errors), errors


def cache_home() -> Path:
    """The user cache dir (XDG), overridable with INFILL_LS_CACHE for tests and CI."""
    if env := os.environ.get("INFILL_LS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "infill-ls"
