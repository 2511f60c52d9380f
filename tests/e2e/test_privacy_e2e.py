"""Security and privacy end to end (docs/SECURITY.md), with the real server process and the real default model.

* The in-process backend makes no network calls: the server runs in a network namespace with no network
  (`unshare -rn`, or `unshare -n` as root), under `strace -e trace=network`, and with a Python audit hook
  that records every socket; a real completion still comes back, and neither record holds an IP socket.
  The same run checks that the log (info level) holds no source code and that log and cache are user-only.
* HTTP backend: llama-cpp-python's real OpenAI-compatible server behind a recording proxy on 127.0.0.1.
  What reaches it is redacted; excluded and .gitignored files are not in it; a completion asked for inside
  an excluded file sends nothing; the server connects to the configured address and nowhere else.
* Workspace trust: settings the client does not vouch for cannot send code to a remote URL or start a
  program; the same settings work when the client vouches (`trusted`) or the user's config file allows them.
* Code actions: the edit touches only the requested document and range.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from lsprotocol import types as lsp

from lsp_server.backends.managed import free_port
from lsp_server.client import InfillClient
from lsp_server.context import position_to_offset

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
GH_TOKEN = "ghp_" + "Zq9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa"

# -- tools: an audit hook, a network namespace, strace ---------------------------------------------------------
SITECUSTOMIZE = '''"""Test instrumentation (tests/e2e/test_privacy_e2e.py): network and process audit events."""
import json, os, sys

_path = os.environ.get("INFILL_AUDIT_LOG")
if _path:
    _out = open(_path, "a", buffering=1)

    def _hook(event, args):
        try:
            if event == "socket.__new__":
                rec = {"event": event, "family": int(args[1])}
            elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
                rec = {"event": event, "address": repr(args[-1] if event == "socket.sendto" else args[1])}
            elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
                rec = {"event": event, "host": repr(args[0])}
            elif event in ("http.client.connect", "urllib.Request", "subprocess.Popen", "os.system", "os.exec",
                           "os.posix_spawn", "os.spawn"):
                rec = {"event": event, "args": repr(args[1:] if event == "http.client.connect" else args)[:300]}
            else:
                return
            _out.write(json.dumps(rec) + "\\n")
        except Exception:
            pass

    sys.addaudithook(_hook)
'''


def audit_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path]:
    site = tmp_path / "audit-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / f"audit-{len(list(tmp_path.glob('audit-*.jsonl')))}.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), INFILL_AUDIT_LOG=str(log), **extra)
    return env, log


def audit_records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def netns_prefix() -> list[str] | None:
    """A command prefix that runs a program in a new network namespace whose only interface is loopback, or
    None where namespaces are not available (then the audit hook and strace still check)."""
    lo_up = ["sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh"]
    for unshare in (["unshare", "-rn"], ["unshare", "-n"]):
        prefix = [*unshare, *lo_up]
        if shutil.which("unshare") and _works([*prefix, sys.executable, "-c", "import socket\ns = socket.socket()\n"
                                               "s.settimeout(2)\nassert s.connect_ex(('1.1.1.1', 53)) != 0"]):
            return prefix
    return None


def strace_prefix(out: Path) -> list[str] | None:
    if shutil.which("strace") and _works(["strace", "-f", "-qq", "-e", "trace=none", "true"]):
        return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "signal=none", "-e",
                "trace=socket,connect,bind,sendto,sendmsg,listen", "-o", str(out)]
    return None


def inet_syscalls(strace_out: Path) -> list[str]:
    """Network system calls that are not on local (AF_UNIX) sockets."""
    bad = []
    for line in strace_out.read_text().splitlines():
        if "socket(" in line and "AF_UNIX" not in line and "AF_LOCAL" not in line:
            bad.append(line)
        elif "sa_family=AF_INET" in line and any(f"{c}(" in line for c in ("connect", "bind", "sendto", "sendmsg")):
            bad.append(line)
    return bad


SOURCE = '''def zanzibar_checksum(values):
    """Add up the quokka weights."""
    total_quokka_weight = 0
    for value in values:
        total_quokka_weight += value
    return '''
SOURCE_WORDS = ("zanzibar", "quokka")


async def test_in_process_backend_makes_no_network_calls(model_path, tmp_path):
    netns = netns_prefix()
    trace = tmp_path / "strace.txt"
    strace = strace_prefix(trace)
    env, audit = audit_env(tmp_path)
    log, cache = tmp_path / "logs" / "server.log", tmp_path / "cache"
    log.parent.mkdir()
    command = [*(netns or []), *(strace or []), sys.executable, "-m", "lsp_server", "serve",
               "--log-file", str(log), "--log-level", "info"]
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "weights.py").write_text(SOURCE)
    uri = (ws / "weights.py").as_uri()
    async with InfillClient({"load": "startup", "cache": {"dir": str(cache)}}, env=env, command=command,
                            root=str(ws)) as client:
        client.open(uri, SOURCE, "python")
        text = await client.inline(uri, 5, 11)
        status = await client.status()
    layers = ["audit hook"] + (["network namespace"] if netns else []) + (["strace"] if strace else [])
    print(f"isolation: {', '.join(layers)}; completion {text!r}")
    assert text.strip(), (text, status)
    assert status["state"] == "ready" and status["last"]["source"] in ("model", "cache"), status

    records = audit_records(audit)
    assert records, "the audit hook recorded nothing: instrumentation broken"
    ip = [r for r in records if r["event"] == "socket.__new__" and r["family"] not in (1,)]  # 1: AF_UNIX
    remote = [r for r in records if r["event"] in ("socket.connect", "socket.sendto", "http.client.connect",
                                                   "urllib.Request", "socket.getaddrinfo", "socket.gethostbyname")]
    assert not ip and not remote, ip + remote
    if strace:
        assert trace.exists() and not inet_syscalls(trace), inet_syscalls(trace)

    # The log at info level: request lines, no source code; log and cache user-only.
    logged = log.read_text()
    assert "completion" in logged, logged[-2000:]
    assert not any(word in logged for word in SOURCE_WORDS), [l for l in logged.splitlines()
                                                              if any(w in l for w in SOURCE_WORDS)]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    cache_dir = Path(status["cache"]["disk"])
    assert cache_dir.is_relative_to(cache) and stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), {
        p.name: oct(p.stat().st_mode) for p in files}


# -- HTTP backend: a recording proxy in front of a real OpenAI-compatible server -------------------------------
class RecordingProxy:
    """Forwards every request to `upstream` and records (method, path, body). Real HTTP on 127.0.0.1."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("//", 1)[1]
        self.requests: list[tuple[str, str, bytes]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, self.path, body))
                host, port = proxy.upstream.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    try:
                        data = resp.read()
                    except http.client.IncompleteRead as exc:  # the upstream stream ended without its last chunk
                        data = exc.partial
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass  # the client stopped reading (first newline in single-line mode)

            do_GET = do_POST = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path_part: str = "") -> list[str]:
        return [b.decode("utf-8", "replace") for m, p, b in self.requests if path_part in p]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def openai_server(model_path, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server with the default model (extra [server])."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama-cpp-server") / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                json.load(resp)
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not start (log {log.name})")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


PEM_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"
CONFIG_STORE = f'''"""Settings for the report generator."""

API_TOKEN = "{GH_TOKEN}"
DB_PASSWORD = "hunter2-zebra-77"
SIGNING_KEY = """-----BEGIN RSA PRIVATE KEY-----
{PEM_BODY}
-----END RSA PRIVATE KEY-----"""


def load_report_settings(report_name):
    """The settings of one report: retries and the output folder."""
    return {{"report": report_name, "retries": 3, "folder": "out/" + report_name}}
'''
MAIN = '''from config_store import load_report_settings
from generated.creds import service_account
import local_secrets


def build_report(report_name):
    settings = load_report_settings(report_name)
    retries = settings["retries"]
    '''
LEAKS = {"github token": GH_TOKEN, "password": "hunter2-zebra-77", "private key": PEM_BODY,
         ".gitignored file": "yak-generated-42", "excluded file": "lynx-local-17", ".env": "otter-env-99"}


def privacy_workspace(ws: Path) -> dict[str, str]:
    (ws / ".git").mkdir(parents=True)  # a repository root: its .gitignore counts
    (ws / ".gitignore").write_text("generated/\n")
    files = {
        "config_store.py": CONFIG_STORE,
        "generated/creds.py": 'service_account = {"private": "yak-generated-42"}\n\ndef load_report_settings_cache():\n'
                              '    return "yak-generated-42"\n',
        "local_secrets.py": 'LOCAL_NOTE = "lynx-local-17"\n\n'
                            'def load_report_settings_local():\n    return LOCAL_NOTE\n',
        ".env": "SERVICE_PASSWORD=otter-env-99\nREPORT_FOLDER=out\n",
        "main.py": MAIN,
    }
    for rel, text in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    return {rel: (ws / rel).as_uri() for rel in files}


async def test_http_backend_gets_redacted_prompts_from_allowed_files_only(openai_server, tmp_path):
    proxy = RecordingProxy(openai_server)
    ws = tmp_path / "ws"
    uris = privacy_workspace(ws)
    env, audit = audit_env(tmp_path)
    options = {"model": "remote", "cache": {"disk": False}, "privacy": {"exclude": ["local_secrets.py"]},
               "actions": {"explain": {"max_tokens": 16}},
               "models": {"remote": {"backend": "openai", "url": proxy.url, "model": "default", "retries": 0}}}
    try:
        async with InfillClient(options, env=env, root=str(ws)) as client:
            for rel, uri in uris.items():  # every file open in the editor: all candidates for context
                client.open(uri, (ws / rel).read_text(), "python")
            text = await client.inline(uris["main.py"], 7, 4)
            completions = proxy.bodies("/v1/completions")
            assert completions, (text, client.messages, proxy.requests)
            prompt = json.loads(completions[-1])["prompt"]
            # config_store.py was context (its code is in the prompt), with its secrets redacted
            assert "def load_report_settings(report_name)" in prompt, prompt
            assert "[REDACTED]" in prompt, prompt
            # nothing is sent for a completion inside an excluded or (remote model) .gitignored file
            sent = len(proxy.requests)
            for rel, line in ((".env", 1), ("local_secrets.py", 3), ("generated/creds.py", 3)):
                assert await client.inline(uris[rel], line, 0) == "", rel
            assert len(proxy.requests) == sent, proxy.requests[sent:]
            # a code action's chat prompt is redacted too; one in an excluded file is refused
            reply = await client.run_action(uris["config_store.py"], (2, 0), (3, 0), "explain")
            assert reply["markdown"], reply
            with pytest.raises(Exception, match="excluded"):
                await client.run_action(uris[".env"], (0, 0), (0, 5), "explain")
            status = await client.status()
    finally:
        proxy.close()
    everything = "\n".join(proxy.bodies())
    assert proxy.bodies("/v1/chat/completions")
    leaked = {what: value for what, value in LEAKS.items() if value in everything}
    assert not leaked, leaked
    assert status["backend"]["redactions"] >= 4, status["backend"]
    # the language server connected to the proxy's address and to nothing else
    records = audit_records(audit)
    connects = {r["address"] for r in records if r["event"] == "socket.connect"}
    assert connects == {repr(("127.0.0.1", proxy.port))}, connects
    assert all(r["args"] == repr(("127.0.0.1", proxy.port)) for r in records if r["event"] == "http.client.connect")


# -- workspace trust -------------------------------------------------------------------------------------------
REMOTE = "http://203.0.113.7:8080"  # TEST-NET-3: never routed; in a network namespace nothing is sent anyway


def evil_program(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "program-ran"
    program = tmp_path / "llama-server"
    program.write_text(f"#!/bin/sh\ntouch {marker}\nexit 3\n")
    program.chmod(0o700)
    return program, marker


def trust_options(program: Path, **top) -> dict:
    return {**top, "model": "far", "cache": {"disk": False}, "privacy": {"redact_secrets": False},
            "models": {"far": {"backend": "openai", "url": REMOTE, "model": "default", "retries": 0, "timeout_s": 2},
                       "local-program": {"backend": "llama_server", "model": "default", "server_binary": str(program),
                                         "server_args": "--host 0.0.0.0"}}}


async def _try_both(client: InfillClient, uri: str) -> None:
    """Ask for a completion with the remote model, then with the managed-program model."""
    client.open(uri, "def add(a, b):\n    return \n", "python")
    await client.inline(uri, 1, 11)
    client.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
        settings={"infill": {**client.options, "model": "local-program"}}))
    await client.inline(uri, 1, 11)
    await client.status()


def _remote_attempts(records: list[dict]) -> list[dict]:
    return [r for r in records if r["event"] in ("socket.connect", "http.client.connect") and "203.0.113.7" in str(r)]


async def test_untrusted_settings_cannot_reach_remote_urls_or_start_programs(model_path, tmp_path):
    netns = netns_prefix() or []
    program, marker = evil_program(tmp_path)
    env, audit = audit_env(tmp_path, INFILL_LS_CONFIG=str(tmp_path / "no-config.toml"))
    command = [*netns, sys.executable, "-m", "lsp_server", "serve"]
    options = trust_options(program)
    async with InfillClient({"infill": {**options, "trusted": True}}, env=env, command=command) as client:
        client.options = options
        await _try_both(client, (tmp_path / "a.py").as_uri())
        text = " ".join(m.message for m in client.messages)
    assert "infill.trusted is ignored" in text, text
    assert f"models.far.url {REMOTE!r} ignored" in text and "allow_remote_urls" in text, text
    assert "server_binary" in text and "server_args ignored" in text and "privacy.redact_secrets" in text, text
    records = audit_records(audit)
    assert not _remote_attempts(records), _remote_attempts(records)
    assert not marker.exists(), "the workspace's program was started"
    assert not [r for r in records if r["event"] == "subprocess.Popen" and str(program) in r["args"]]


@pytest.mark.parametrize("how", ["client vouches (trusted)", "user config allows"])
async def test_trusted_or_user_allowed_settings_are_honoured(model_path, tmp_path, how):
    """The same settings as above, allowed: the URL is tried and the program started, proving the checks are
    what stopped them. Needs a network namespace, so that the attempt to reach the URL goes nowhere."""
    netns = netns_prefix()
    if netns is None:
        pytest.skip("no network namespace (unshare) here: the attempt to reach the URL would leave the machine")
    program, marker = evil_program(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(f'[trust]\nallow_remote_urls = ["{REMOTE}"]\nallow_executables = true\n')
    config.chmod(0o600)
    env, audit = audit_env(tmp_path, INFILL_LS_CONFIG=str(config if how == "user config allows" else tmp_path / "none"))
    options = trust_options(program, **({"trusted": True} if how.startswith("client") else {}))
    async with InfillClient(options, env=env, command=[*netns, sys.executable, "-m", "lsp_server", "serve"]) as client:
        options.pop("trusted", None)
        client.options = options
        await _try_both(client, (tmp_path / "a.py").as_uri())
        text = " ".join(m.message for m in client.messages)
    assert "ignored" not in text or how == "user config allows" and "privacy.redact_secrets" in text, text
    assert _remote_attempts(audit_records(audit)), "the allowed URL was never tried"
    assert marker.exists(), "the allowed program was not started"


# -- inside an excluded file: nothing at all; code actions: only the requested range -----------------------------
async def test_no_completion_inside_an_excluded_file(real_server, tmp_path):
    code = "def add(a, b):\n    return \n"
    ok, secret = tmp_path / "calc.py", tmp_path / "prod.env"
    for path in (ok, secret):
        path.write_text(code)
        real_server.open(path.as_uri(), code, "python")
    assert (await real_server.inline(ok.as_uri(), 1, 11)).strip()  # the same text elsewhere gets one
    last = (await real_server.status())["last"]
    assert await real_server.inline(secret.as_uri(), 1, 11) == ""
    assert (await real_server.status())["last"] == last  # the engine never saw the request


THREE = '''def first(xs):
    return xs[0]


def total(values):
    result = 0
    for v in values:
        result = result + v
    return result


def last(xs):
    return xs[-1]
'''


async def test_code_action_edit_stays_in_the_requested_document_and_range(real_server, tmp_path):
    path, other = tmp_path / "three.py", tmp_path / "other.py"
    path.write_text(THREE)
    other.write_text(THREE)
    uri = path.as_uri()
    real_server.open(uri, THREE, "python")
    real_server.open(other.as_uri(), THREE, "python")
    before = len(real_server.applied_edits)
    start, end = (4, 0), (8, 17)  # the whole of total()
    reply = await real_server.run_action(uri, start, end, "refactor", "Use the built-in sum() function.")
    assert reply["applied"] is True, reply
    edits = real_server.applied_edits[before:]
    assert len(edits) == 1
    changes = edits[0].edit.document_changes
    assert len(changes) == 1 and isinstance(changes[0], lsp.TextDocumentEdit)
    assert changes[0].text_document.uri == uri and changes[0].text_document.version == 1
    lo, hi = position_to_offset(THREE, *start), position_to_offset(THREE, *end)
    new = THREE
    for e in changes[0].edits:
        s = position_to_offset(THREE, e.range.start.line, e.range.start.character)
        t = position_to_offset(THREE, e.range.end.line, e.range.end.character)
        assert lo <= s <= t <= hi, (e.range, start, end)
        new = new[:s] + e.new_text + new[t:]
    assert new.startswith(THREE[:lo]) and new.endswith(THREE[hi:]), new
    assert new != THREE
