"""The `infill-ls` command: serve (stdio | tcp), complete, models, doctor, --version."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from lsp_server import __version__


def _setup_logging(level: str, log_file: str | None) -> None:
    # stdout is the protocol channel: logs go to stderr or a file, never to stdout.
    handler: logging.Handler
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fchmod(fd, 0o600)  # user-only even when the file existed before (docs/SECURITY.md)
        except OSError:
            pass  # not ours to change
        handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("lsp_server").setLevel(level.upper())


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_file)
    from lsp_server.server import server

    try:
        if args.tcp:
            host, _, port = args.tcp.rpartition(":")
            from lsp_server.privacy import loopback_url

            if host and not loopback_url(host):
                logging.getLogger("lsp_server").warning(
                    "--tcp %s: anyone who can reach this address can read your workspace through the server", host)
            server.start_tcp(host or "127.0.0.1", int(port))
        else:
            server.start_io()
    finally:
        server.engine.shutdown()
    # The editor has gone (exit or closed stdin): do not wait for worker threads stuck in native code.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(server, "exit_code", 0) or 0)  # 1 after `exit` without `shutdown` (LSP)


def _parse_position(spec: str) -> tuple[str, int, int]:
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and (parts[2].isdigit() or parts[2] == "end"):
        return parts[0], int(parts[1]), 0 if parts[2] == "end" else int(parts[2])
    parts = spec.rsplit(":", 1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], int(parts[1]), 0
    raise ValueError(f"expected FILE:LINE:COL (1-based; COL may be 'end'), got {spec!r}")


def cmd_complete(args: argparse.Namespace) -> int:
    from lsp_server.client import complete_file

    try:
        path, line, col = _parse_position(args.position)
        if not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
        options = json.loads(args.settings) if args.settings else {}
        if isinstance(options, dict):
            options.setdefault("trusted", True)  # typed by the user on the command line (docs/SECURITY.md)
        if args.model:
            options["model"] = args.model
        text = asyncio.run(complete_file(path, line, col, options))
    except (ValueError, OSError) as exc:
        print(f"infill-ls complete: {exc}", file=sys.stderr)
        return 2
    if args.show:
        src = Path(path).read_text(encoding="utf-8").splitlines()
        before = src[line - 1][: (col - 1) if col else None]
        print(f"{path}:{line}:{col or 'end'}")
        print(f"{before}\033[2m{text}\033[0m" if sys.stdout.isatty() else before + text)
    else:
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))
    return 0 if text else 1


def cmd_models(args: argparse.Namespace) -> int:
    from lsp_server import catalog
    from lsp_server.errors import ModelError

    cat = catalog.load_catalog()
    try:
        if args.action == "list":
            print(f"{'name':32} {'family':15} {'params':>6} {'quant':7} {'fim':4} {'source':11} status")
            for name, m in cat.models.items():
                status = "installed" if catalog.is_installed(m) else "-"
                mark = "*" if name == cat.default else " "
                print(f"{mark}{name:31} {m.family:15} {m.params:>6} {m.quant:7} {'yes' if m.fim else 'no':4} "
                      f"{m.source:11} {status}")
            print("\n* default. Pull with `infill-ls models pull NAME`; any local GGUF path works as a model too.")
            if args.gpu_mem is not None:
                from lsp_server import gpu

                mem = int(args.gpu_mem * gpu.GiB)
                print("\n" + gpu.format_guidance(gpu.guidance(gpu.load_guide(), mem, args.n_ctx), mem, args.n_ctx,
                                                 full=args.all))
        elif args.action == "pull":
            path = catalog.pull(args.name or "default")
            print(path)
        elif args.action == "path":
            model = cat.get(args.name or "default")
            path = catalog.model_path(model)
            print(path)
            return 0 if path.exists() else 1
    except ModelError as exc:
        print(f"infill-ls models: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from lsp_server import catalog
    from lsp_server.backends.llama_cpp import system_info
    from lsp_server.config import cache_home, parse_settings

    settings, errors = parse_settings(json.loads(args.settings) if args.settings else {})
    report: dict = {"infill-ls": __version__, "python": sys.version.split()[0]}
    report["llama.cpp"] = system_info()
    name, ms = settings.model_settings()
    try:
        path, entry = catalog.resolve_model_file(ms.model)
        model = {"name": name, "path": str(path), "exists": path.exists(),
                 "size": path.stat().st_size if path.exists() else None}
        if entry is not None:
            model["catalog"] = entry.name
            model["template"] = entry.template
            model["expected_sha256"] = catalog.expected_sha256(entry) or None
            model["verified"] = path.exists() and catalog._verified_marker(path) == catalog.expected_sha256(entry)
    except Exception as exc:  # noqa: BLE001 - doctor reports, it does not fail
        model = {"name": name, "error": str(exc)}
    report["model"] = model
    if ms.adapters:
        report["adapters"] = _doctor_adapters(ms, model.get("path"), load=args.load)
    report["gpu"] = _doctor_gpu(ms, report["llama.cpp"], model, load=args.load)
    report["cache_dir"] = str(cache_home())
    report["settings"] = {"model": settings.model, "load": settings.load, "n_gpu_layers": ms.n_gpu_layers,
                          "n_ctx": ms.n_ctx, "errors": errors}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    ll = report["llama.cpp"]
    print(f"infill-ls {__version__} (Python {report['python']})")
    if ll.get("available"):
        print(f"llama.cpp: llama-cpp-python {ll['version']}, GPU offload: {'yes' if ll['gpu_offload'] else 'no'}")
        for dev in ll.get("devices", []):
            print(f"  device: {dev['name']} ({dev['type']}): {dev['description']}"
                  + (f", {dev['memory_free'] / 2**30:.1f} of {dev['memory_total'] / 2**30:.1f} GiB free"
                     if dev["type"] != "cpu" else ""))
        print(f"  {ll['system_info']}")
    else:
        print(f"llama.cpp: not available ({ll.get('error')})")
    for key, value in model.items():
        print(f"model.{key}: {value}")
    for a in report.get("adapters", []):
        detail = a.get("error") or ", ".join(f"{k} {a[k]}" for k in ("architecture", "rank", "alpha", "tensors") if k in a)
        print(f"adapter: {a['path']} scale {a['scale']}: {a['status']}" + (f" ({detail})" if detail else ""))
    g = report["gpu"]
    print(f"gpu: {g['summary']}")
    if g.get("plan", {}).get("message"):
        print(f"gpu: {g['plan']['message']}")
    print(f"cache dir: {report['cache_dir']}")
    print(f"settings: {json.dumps(report['settings'])}")
    return 0


def _doctor_gpu(ms, llama: dict, model: dict, *, load: bool) -> dict:
    """GPU offload for the configured model: the devices' free memory, the estimate from the GGUF header
    (lsp_server/gpu.py), and with --load the layers llama.cpp actually offloaded."""
    from lsp_server import gpu
    from lsp_server.backends.llama_cpp import gpu_free_bytes

    out: dict = {"offload": bool(llama.get("gpu_offload")), "requested_n_gpu_layers": ms.n_gpu_layers}
    free = gpu_free_bytes(llama.get("devices", [])) if llama.get("available") else None
    out["gpu_free_bytes"] = free
    shape = None
    if model.get("exists"):
        try:
            shape = gpu.read_model_shape(model["path"])
            out["model_layers"] = shape.n_layers + 1
            out["estimate_all_layers_bytes"] = gpu.gpu_bytes_for(shape, -1, ms.n_ctx)
        except (OSError, gpu.GgufError) as exc:
            out["gguf_error"] = str(exc)
    if shape is not None and free is not None and out["offload"]:
        plan = gpu.plan_gpu_layers(shape, ms.n_ctx, free, ms.n_gpu_layers)
        out["plan"] = {"n_gpu_layers": plan.n_gpu_layers, "fit_layers": plan.fit_layers, "fits": plan.fits,
                       "need_bytes": plan.need_bytes, "message": plan.message}
    if load and ms.backend == "llama_cpp" and model.get("exists"):
        from lsp_server.backends import create_backend
        from lsp_server.errors import InfillError

        try:
            backend, _entry = create_backend(ms)
            backend.load()
            info = backend.info()
            backend.close()
            out["loaded"] = {k: info.get(k) for k in ("n_gpu_layers", "gpu_layers_offloaded", "gpu_layers_total",
                                                      "load_seconds")}
        except InfillError as exc:
            out["loaded"] = {"error": str(exc)}
    if not out["offload"]:
        out["summary"] = ("no GPU offload in this llama.cpp build: every layer runs on the CPU "
                          "(build with CUDA: scripts/build_cuda.sh, docs/GPU.md)")
    elif free is None:
        out["summary"] = "GPU offload is built in, but llama.cpp sees no GPU device"
    elif "plan" in out:
        p = out["plan"]
        layers = out["model_layers"] if p["n_gpu_layers"] < 0 else p["n_gpu_layers"]
        out["summary"] = (f"would offload {layers} of {out['model_layers']} layers (estimate "
                          f"{p['need_bytes'] / 2**30:.1f} GiB for all at n_ctx={ms.n_ctx}, "
                          f"{free / 2**30:.1f} GiB free)")
    else:
        out["summary"] = f"{free / 2**30:.1f} GiB free on the GPU; model file not readable for an estimate"
    if "loaded" in out:
        ld = out["loaded"]
        out["summary"] += (f"; loaded: {ld['gpu_layers_offloaded']} of {ld['gpu_layers_total']} layers offloaded "
                           f"in {ld['load_seconds']} s" if "error" not in ld else f"; load failed: {ld['error']}")
    return out


def _doctor_adapters(ms, model_path: str | None, *, load: bool) -> list[dict]:
    """The model's LoRA adapters: checked against the model file (status ok | error), or with --load
    attached to the model in llama.cpp as the server does (status loaded | error)."""
    from lsp_server.adapters import inspect

    if not load or ms.backend != "llama_cpp":
        return [s.as_dict() for s in inspect(ms.adapters, model_path)]
    from lsp_server.backends import create_backend
    from lsp_server.errors import InfillError

    try:
        backend, _entry = create_backend(ms)
        backend.load()
    except InfillError as exc:
        return [{"path": a.path, "scale": a.scale, "status": "error", "error": f"model not loaded: {exc}"}
                for a in ms.adapters]
    try:
        return [s.as_dict() for s in backend.adapter_statuses]
    finally:
        backend.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infill-ls", description="Local AI code completion language server.")
    parser.add_argument("--version", action="version", version=f"infill-ls {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the language server (default: stdio)")
    serve.add_argument("--stdio", action="store_true", help="LSP over stdio (the default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="LSP over TCP instead of stdio")
    serve.add_argument("--log-level", default=os.environ.get("INFILL_LS_LOG", "info"),
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-file", help="log to this file (created user-only) instead of stderr")
    serve.set_defaults(func=cmd_serve)

    complete = sub.add_parser("complete", help="print the completion at FILE:LINE:COL (1-based)")
    complete.add_argument("position", metavar="FILE:LINE:COL")
    complete.add_argument("--model", help="catalog name or GGUF path")
    complete.add_argument("--settings", help="JSON settings, as initializationOptions")
    complete.add_argument("--show", action="store_true", help="print the line with the completion in place")
    complete.set_defaults(func=cmd_complete)

    models = sub.add_parser("models", help="the model catalog and downloads")
    models.add_argument("action", choices=["list", "pull", "path"])
    models.add_argument("name", nargs="?", default="")
    models.add_argument("--gpu-mem", type=float, metavar="GiB",
                        help="list: which model and quantization fits a GPU with this much memory")
    models.add_argument("--n-ctx", type=int, default=4096, help="context size for --gpu-mem (KV cache)")
    models.add_argument("--all", action="store_true", help="--gpu-mem: every quantization, not only the best")
    models.set_defaults(func=cmd_models)

    doctor = sub.add_parser("doctor", help="llama.cpp build features, model status, cache dir, config")
    doctor.add_argument("--settings", help="JSON settings, as initializationOptions")
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--load", action="store_true",
                        help="load the model and its LoRA adapters in llama.cpp: reports the GPU layers actually "
                             "offloaded (default: check the files only)")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `infill-ls` alone is `infill-ls serve`
        args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)
