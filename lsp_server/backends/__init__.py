"""Backends behind one interface (base.Backend); `create_backend` picks one from a model's settings."""

from __future__ import annotations

from lsp_server.backends.base import Backend, ChatRequest, Generation, GenerationRequest
from lsp_server.catalog import CatalogModel, resolve_model_file, verify_installed
from lsp_server.config import ModelSettings
from lsp_server.errors import ModelError

__all__ = ["Backend", "ChatRequest", "Generation", "GenerationRequest", "create_backend"]


def create_backend(settings: ModelSettings) -> tuple[Backend, CatalogModel | None]:
    """A backend for one named model (not yet loaded) and its catalog entry, if it has one."""
    if settings.backend == "fake":
        from lsp_server.backends.fake import FakeBackend

        return FakeBackend(settings.fake_outputs), None
    if settings.backend == "llama_cpp":
        from lsp_server.backends.llama_cpp import LlamaCppBackend

        path, entry = resolve_model_file(settings.model or "default")
        if entry is not None:
            verify_installed(entry, path)  # a truncated or replaced download fails here, clearly
        return LlamaCppBackend(path, n_ctx=settings.n_ctx, n_gpu_layers=settings.n_gpu_layers,
                               n_threads=settings.n_threads, kv_reuse=settings.kv_reuse,
                               draft_tokens=settings.draft_tokens, prefix_reuse=settings.prefix_reuse,
                               adapters=settings.adapters), entry
    if settings.backend == "transformers":
        from lsp_server.backends.transformers_backend import TransformersBackend

        # a catalog name or .gguf path (dequantized at load), or a Hugging Face checkpoint directory
        path, entry = resolve_model_file(settings.model or "default")
        return TransformersBackend(path, device=settings.device, dtype=settings.dtype, n_ctx=settings.n_ctx,
                                   n_threads=settings.n_threads, prefix_reuse=settings.prefix_reuse,
                                   adapters=settings.adapters), entry
    if settings.backend in ("llama_server", "openai", "ollama"):
        from lsp_server.backends.http import create_http_backend

        return create_http_backend(settings)
    raise ModelError(f"unknown backend {settings.backend!r}")
