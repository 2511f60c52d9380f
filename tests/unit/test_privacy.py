"""lsp_server/privacy.py: secret redaction, exclude globs, .gitignore (checked against git itself), workspace
trust, and the user-only permissions of what the server writes (cache, logs, explanations, managed server)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st

from lsp_server import privacy
from lsp_server.backends.base import ChatRequest, GenerationRequest
from lsp_server.config import ModelSettings, PrivacySettings, Settings, parse_settings
from lsp_server.privacy import PLACEHOLDER, redact, redact_count

# -- redaction -------------------------------------------------------------------------------------------------
GH = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
SECRETS = {
    "aws key id": ("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n", "AKIAIOSFODNN7EXAMPLE"),
    "aws secret (env)": ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n", "wJalrXUtnFEMI"),
    "github": (f'token = "{GH}"\n', GH),
    "github in text": (f"use {GH} to log in", GH),
    "github pat": ("x = github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11ABC"),
    "slack": ('SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp"\n', "xoxb-1234"),
    "slack webhook": ("hook = https://hooks.slack.com/services/T000/B000/XXXXXXXX\n", "T000/B000"),
    "openai": ("client = OpenAI(api_key=os.environ.get('K', 'sk-proj-abcdefghijklmnopqrstuvwxyz0123'))", "sk-proj-abc"),
    "google": ("KEY = 'AIzaSyA-1234567890abcdefghijklmnopqrstu'", "AIzaSyA-123"),
    "stripe": ("stripe.api_key = sk_live_51Habcdefghijklmnop", "sk_live_51H"),
    "jwt": ("auth = eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgNryP4J3"),
    "password literal": ('password = "hunter2"\n', "hunter2"),
    "dict key": ('config = {"api_key": "abc123def456", "user": "bob"}', "abc123def456"),
    "kwarg": ('db = connect(host="h", password="s3cr3t!")', "s3cr3t!"),
    "annotated": ('SECRET_KEY: str = "django-insecure-x9y8z7"\n', "django-insecure"),
    "camelCase": ('const clientSecret = "0a1b2c3d4e5f";', "0a1b2c3d4e5f"),
    "yaml": ("database:\n  password: Tr0ub4dor&3\n", "Tr0ub4dor&3"),
    "env export": ("export GITHUB_TOKEN=plainword\n", "plainword"),
    "env with hash": ("DB_PASSWORD=abc#def  # the password\n", "abc#def"),
    "crlf env": ("API_KEY=zzz111\r\nOTHER=1\r\n", "zzz111"),
    "url credentials": ('DATABASE_URL = "postgres://admin:pa55word@db.example.com:5432/app"', "pa55word"),
    "bearer header": ('headers = {"Authorization": "Bearer abcdefghijklmnop123"}', "abcdefghijklmnop123"),
    "azure": ('conn = "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abcdEFGH1234+/==;Suffix=y"',
              "abcdEFGH1234"),
    "pem": ("KEY = '''-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx1y2z3\nabcd+/==\n"
            "-----END RSA PRIVATE KEY-----'''\nx = 1\n", "MIIEpAIBAAKCAQEAx1y2z3"),
    "pem escaped": ('k = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkq\\n-----END PRIVATE KEY-----\\n"\n',
                    "MIIEvQIBADANBgkq"),
    "openssh cut off": ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU", "b3BlbnNzaC1rZXk"),
    "pgp": ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF0abc\n=x1y2\n-----END PGP PRIVATE KEY BLOCK-----",
            "lQOYBF0abc"),
}


@pytest.mark.parametrize("name", list(SECRETS))
def test_secret_is_redacted(name):
    text, secret = SECRETS[name]
    out, n = redact_count(text)
    assert secret not in out, out
    assert PLACEHOLDER in out and n >= 1
    assert out.count("\n") >= text.count("\n") - 3  # the code around it stays


def test_redaction_keeps_names_and_surroundings():
    assert redact('password = "hunter2"\nname = "bob"\n') == f'password = "{PLACEHOLDER}"\nname = "bob"\n'
    assert redact("x = postgres://admin:pa55@db/app") == f"x = postgres://admin:{PLACEHOLDER}@db/app"
    out = redact("KEY = '''-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----'''\nx = 1\n")
    assert out == f"KEY = '''-----BEGIN RSA PRIVATE KEY-----\n{PLACEHOLDER}\n-----END RSA PRIVATE KEY-----'''\nx = 1\n"
    # FIM special tokens around a secret survive
    fim = '<|fim_prefix|>password = "x1234"<|fim_suffix|>\n<|fim_middle|>'
    assert redact(fim) == f'<|fim_prefix|>password = "{PLACEHOLDER}"<|fim_suffix|>\n<|fim_middle|>'


NOT_SECRETS = [
    "password = get_password()\n",
    "token = self.token\n",
    "max_tokens = 100\nmax_tokens_multi: int = 160\n",
    "password: str\n",
    "secret: Optional[str] = None\n",
    'tokenizer = "bert-base-uncased"\n',
    'token_url = "https://example.com/oauth/token"\n',
    "PASSWORD_MIN_LENGTH = 8\n",
    'csrf_token = "{{ csrf_token }}"\n',
    "DB_PASSWORD=${DB_PASSWORD}\n",
    'api_key = os.environ["API_KEY"]\n',
    "def check(password, token=None):\n    return verify(password=password, token=token)\n",
    'key = "name"\nd[key] = 1\n',
    "for key, value in items.items():\n    secret_count += 1\n",
    'print("Enter your password:")\n',
    "url = 'https://example.com/path?q=1'\n",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_code_is_left_alone(text):
    assert redact(text) == text


def test_redaction_of_this_repository_changes_nothing():
    """The server's own sources hold no secrets: redaction must not touch ordinary code."""
    root = Path(__file__).resolve().parents[2] / "lsp_server"
    changed = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "privacy.py":
            continue  # its docstrings and patterns talk about secrets
        text = path.read_text()
        out, n = redact_count(text)
        if n:
            changed.append((path.name, [line for line in out.splitlines() if PLACEHOLDER in line][:3]))
    assert not changed, changed


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400),
       st.sampled_from([v[0] for v in SECRETS.values()]), st.text(max_size=200))
def test_redaction_is_idempotent_and_removes_inserted_secrets(before, secret_text, after):
    secret = next(s for t, s in SECRETS.values() if t == secret_text)
    assume(secret not in before + after)
    out = redact(before + "\n" + secret_text + "\n" + after)
    assert redact(out) == out
    assert secret not in out


def test_redaction_is_fast_on_large_and_hostile_input():
    code = "".join(p.read_text() for p in sorted((Path(__file__).resolve().parents[2] / "lsp_server").glob("*.py")))
    cases = [code[:200_000], "a" * 200_000, "-" * 200_000, 'password = "' * 20_000, "password:" * 20_000,
             "-----BEGIN RSA PRIVATE KEY-----" + "A" * 200_000, "http://a:" * 20_000, "x = '" + "\\x" * 100_000]
    for text in cases:
        t0 = time.perf_counter()
        redact(text)
        assert time.perf_counter() - t0 < 2.0, text[:40]


def test_redact_request_covers_every_text_and_can_be_switched_off():
    from lsp_server.prompts import ExtraFile

    secret = f"token = '{GH}'"
    gen = GenerationRequest(prompt=f"<pre>{secret}<suf>", max_tokens=8, prefix=secret, suffix=secret,
                            extra=(ExtraFile(path="a.py", text=secret),))
    out, n = privacy.redact_request(gen)
    assert n == 4 and GH not in repr(out) and out.extra[0].path == "a.py" and out.max_tokens == 8
    chat = ChatRequest(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": secret}])
    out, n = privacy.redact_request(chat)
    assert n == 1 and GH not in repr(out) and out.messages[0] == {"role": "system", "content": "be brief"}
    try:
        privacy.set_redaction(False)
        assert privacy.redact_request(gen) == (gen, 0)
    finally:
        privacy.set_redaction(True)


def test_secret_names():
    for name in ("password", "DB_PASSWORD", "apiKey", "api_key", "client_secret", "GITHUB_TOKEN", "accessToken",
                 "SECRET_KEY_BASE", "spring.datasource.password", "passphrase", "AWS_SECRET_ACCESS_KEY"):
        assert privacy.secret_name(name), name
    for name in ("max_tokens", "tokenizer", "token_url", "password_field", "PASSWORD_MIN_LENGTH", "key", "keys",
                 "monkey", "secret_count", "name", "compass"):
        assert not privacy.secret_name(name), name


# -- exclude globs and .gitignore --------------------------------------------------------------------------------
def test_default_and_user_excludes(tmp_path):
    root = str(tmp_path)
    ex = lambda rel, pats=(): privacy.excluded(f"{root}/{rel}", pats, root)  # noqa: E731
    for rel in (".env", "app/.env", ".env.local", "prod.env", "certs/server.pem", "deploy/id_rsa", ".ssh/config",
                ".aws/credentials", "infra/terraform.tfstate", "k8s/.kube/config", "x/.npmrc", ".docker/config.json"):
        assert ex(rel), rel
    for rel in ("main.py", "environment.py", "keys.py", "src/env/settings.py", "docs/ssh.md"):
        assert not ex(rel), rel
    assert ex("src/local_settings.py", ["local_settings.py"])
    assert ex("deep/secrets/a.py", ["secrets"])  # a directory name: everything inside
    assert ex("src/gen/x.py", ["src/gen/**"]) and not ex("lib/src/gen/x.py", ["src/gen/**"])
    assert ex("lib/src/gen/x.py", ["**/src/gen/**"])
    assert privacy.excluded(os.path.expanduser("~/notes/todo.md"), ["~/notes/**"], root)


GITIGNORE_TREE = {
    ".gitignore": "build/\n*.log\n!important.log\n/top.txt\nsrc/**/gen/\n# comment\n\\#hash\nlogs/*\n!logs/keep.txt\n"
                  "*.tmp\n!*.tmp/\ndocs/**/*.draft.md\nvendor\n[Dd]ata?.csv\n",
    "src/.gitignore": "local.py\n/only_here.py\n",
    "src/pkg/.gitignore": "!local.py\n",
}
GITIGNORE_FILES = ["build/sub/a.py", "a.log", "important.log", "top.txt", "src/top.txt", "src/gen/g.py",
                   "src/a/gen/g.py", "src/local.py", "src/pkg/local.py", "src/only_here.py", "src/pkg/only_here.py",
                   "local.py", "#hash", "logs/keep.txt", "logs/other.txt", "x.tmp", "docs/a/b/c.draft.md",
                   "docs/c.draft.md", "vendor/lib.py", "lib/vendor/x.py", "data1.csv", "Data2.csv", "data10.csv",
                   "main.py", "src/main.py", ".gitignore"]


def _tree(root: Path) -> None:
    for rel, text in GITIGNORE_TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel in GITIGNORE_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed (the reference implementation)")
def test_gitignore_matches_git_itself(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    (root / ".git" / "info" / "exclude").write_text("excluded_by_info.py\n")
    _tree(root)
    (root / "excluded_by_info.py").touch()
    files = GITIGNORE_FILES + ["excluded_by_info.py"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root, input="\n".join(files),
                          capture_output=True, text=True, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    by_git = set(proc.stdout.split())
    ours = {f for f in files if privacy.gitignored(str(root / f), str(root))}
    assert ours == by_git, {"only ours": ours - by_git, "only git": by_git - ours}
    assert 10 <= len(by_git) < len(files)  # the tree exercises both outcomes


def test_gitignore_without_git_repository_uses_workspace_root(tmp_path):
    _tree(tmp_path)
    assert privacy.gitignored(str(tmp_path / "build/sub/a.py"), str(tmp_path))
    assert not privacy.gitignored(str(tmp_path / "main.py"), str(tmp_path))
    assert not privacy.gitignored(str(tmp_path / "build/sub/a.py"), None)  # no repository, no root: nothing


def test_gitignore_rules_are_reread_when_the_file_changes(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.py").touch()
    (tmp_path / ".gitignore").write_text("b.py\n")
    assert not privacy.gitignored(str(tmp_path / "a.py"))
    (tmp_path / ".gitignore").write_text("b.py\na.py\n")
    assert privacy.gitignored(str(tmp_path / "a.py"))


def test_context_and_completion_permissions(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("generated/\n")
    local = Settings()
    remote = Settings(model="r", models={"r": ModelSettings(backend="openai", url="http://127.0.0.1:1")})
    root = str(tmp_path)
    gen, env, mine, main = (str(tmp_path / p) for p in ("generated/creds.py", ".env", "mine.py", "main.py"))
    custom = dataclasses.replace(local, privacy=PrivacySettings(exclude=("mine.py",)))
    assert privacy.allowed_context_file(main, local, root)
    assert not privacy.allowed_context_file(gen, local, root) and not privacy.allowed_context_file(env, local, root)
    assert not privacy.allowed_context_file(mine, custom, root) and privacy.allowed_context_file(mine, local, root)
    off = dataclasses.replace(local, privacy=PrivacySettings(respect_gitignore=False))
    assert privacy.allowed_context_file(gen, off, root)
    # completions: none inside excluded files; inside .gitignored ones only with a local model
    assert privacy.completion_allowed(main, remote, root) == ""
    assert "excluded" in privacy.completion_allowed(env, local, root)
    assert privacy.completion_allowed(gen, local, root) == ""
    assert "gitignored" in privacy.completion_allowed(gen, remote, root)
    assert privacy.completion_allowed("", remote, root) == ""  # untitled buffers


def test_privacy_settings_parse():
    s, errors = parse_settings({"privacy": {"exclude": ["*.secret.py", "private/**"], "redact_secrets": False}})
    assert s.privacy == PrivacySettings(redact_secrets=False, respect_gitignore=True,
                                        exclude=("*.secret.py", "private/**")) and not errors
    s, errors = parse_settings({"privacy": {"exclude": "*.py", "respect_gitignore": "no"}})
    assert s.privacy == PrivacySettings() and len(errors) == 2 and "list of strings" in errors[0]


# -- workspace trust ---------------------------------------------------------------------------------------------
def _settings(**model) -> Settings:
    s, errors = parse_settings({"model": "m", "models": {"m": {"backend": "llama_server", **model}}})
    assert not errors
    return s


def test_split_trust_flag():
    raw, trusted, notes = privacy.split_trust_flag({"trusted": True, "model": "x"}, initial=True)
    assert trusted and raw == {"model": "x"} and not notes
    raw, trusted, notes = privacy.split_trust_flag({"infill": {"trusted": True, "model": "x"}}, initial=True)
    assert not trusted and raw == {"infill": {"model": "x"}} and "ignored" in notes[0]
    assert privacy.split_trust_flag({"trusted": "yes"}, initial=True)[1] is False
    assert privacy.split_trust_flag({"trusted": True}, initial=False)[1] is False  # didChangeConfiguration
    assert privacy.split_trust_flag(None, initial=True) == (None, False, [])


def test_untrusted_settings_cannot_reach_remote_urls_or_start_programs():
    user = privacy.UserConfig()
    for url in ("http://127.0.0.1:8080", "http://localhost:1234", "http://[::1]:8080", "127.0.0.2:99"):
        s, notes = privacy.enforce_trust(_settings(url=url), False, user)
        assert s.models["m"].url == url and not notes
    s, notes = privacy.enforce_trust(_settings(url="https://gpu-box.lan:8080", api_key="k"), False, user)
    assert s.models["m"].url == "" and s.models["m"].api_key == "k" and "allow_remote_urls" in notes[0]
    s, notes = privacy.enforce_trust(_settings(server_binary="/tmp/evil", server_args="--host 0.0.0.0"), False, user)
    assert s.models["m"].server_binary == "" and s.models["m"].server_args == "" and len(notes) == 2
    s, notes = privacy.enforce_trust(_settings(url="https://x.lan", verify_tls=False, ca_bundle="/tmp/ca.pem"),
                                     False, privacy.UserConfig(allow_remote_urls=True))
    assert s.models["m"].url == "https://x.lan" and s.models["m"].verify_tls and s.models["m"].ca_bundle == ""
    weak, _ = parse_settings({"privacy": {"redact_secrets": False, "respect_gitignore": False}})
    s, notes = privacy.enforce_trust(weak, False, user)
    assert s.privacy.redact_secrets and s.privacy.respect_gitignore and notes
    # trusted settings pass unchanged
    for s0 in (weak, _settings(url="https://gpu-box.lan:8080", server_binary="/x", server_args="-np 4")):
        assert privacy.enforce_trust(s0, True, user) == (s0, [])


def test_user_config_allows_listed_urls_and_programs(tmp_path):
    binary = tmp_path / "llama-server"
    binary.touch()
    user = privacy.UserConfig(allow_remote_urls=("https://gpu-box.lan:8080", "other.lan"),
                              allow_executables=(str(binary),))
    ok = lambda **m: privacy.enforce_trust(_settings(**m), False, user)  # noqa: E731
    assert ok(url="https://gpu-box.lan:8080/")[0].models["m"].url == "https://gpu-box.lan:8080/"
    assert ok(url="https://GPU-BOX.lan:8080")[1] == []
    assert ok(url="http://gpu-box.lan:8080")[0].models["m"].url == ""  # another scheme
    assert ok(url="https://gpu-box.lan:9090")[0].models["m"].url == ""  # another port
    assert ok(url="http://other.lan:1")[1] == []  # a bare host: any port
    assert ok(server_binary=str(binary))[0].models["m"].server_binary == str(binary)
    assert ok(server_binary=str(tmp_path / "other"))[0].models["m"].server_binary == ""


def test_user_config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("INFILL_LS_CONFIG", str(path))
    assert privacy.user_config() == privacy.UserConfig(path=str(path))  # no file: nothing allowed
    path.write_text('[trust]\nallow_remote_urls = ["https://gpu.lan:8080"]\nallow_executables = true\n'
                    '[privacy]\nexclude = ["notes/**"]\n')
    path.chmod(0o600)
    cfg = privacy.user_config()
    assert cfg.allow_remote_urls == ("https://gpu.lan:8080",) and cfg.allow_executables is True
    assert cfg.exclude == ("notes/**",) and not cfg.errors
    assert not privacy.allowed_context_file(str(tmp_path / "notes/a.py"), Settings(), str(tmp_path))
    path.chmod(0o666)  # writable by others: whoever can write it could allow anything
    cfg = privacy.user_config()
    assert cfg.allow_executables == () and "ignored" in cfg.errors[0]
    path.chmod(0o600)
    path.write_text("[trust]\nallow_remote_urls = 3\nsurprise = 1\n[other]\n")
    cfg = privacy.user_config()
    assert cfg.allow_remote_urls == () and len(cfg.errors) == 3
    path.write_text("[trust\n")
    assert "ignored" in privacy.user_config().errors[0]


# -- what the server writes: user-only ---------------------------------------------------------------------------
@pytest.fixture
def open_umask():
    old = os.umask(0)  # the worst case: without our own modes everything would be world-readable
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_disk_cache_is_user_only(tmp_path, open_umask):
    from lsp_server.cache import CompletionCache

    cache_dir = tmp_path / "a" / "completions"
    cache = CompletionCache(disk_dir=cache_dir)
    cache.put("k", "completion text")
    modes = _modes(cache_dir)  # while open: the database and its -wal/-shm files
    cache.close()
    assert len(modes) >= 2 and modes["."] == 0o700, modes
    assert all(m == 0o600 for name, m in modes.items() if name != "." and not (cache_dir / name).is_dir()), modes


def test_existing_log_file_and_explanations_become_user_only(tmp_path, open_umask):
    from lsp_server.cli import _setup_logging
    from lsp_server.features.code_actions import _write_private

    log = tmp_path / "server.log"
    log.write_text("old\n")
    log.chmod(0o644)
    root, ours = logging.getLogger(), logging.getLogger("lsp_server")
    handlers, level, our_level = root.handlers[:], root.level, ours.level
    try:
        _setup_logging("info", str(log))
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        ours.setLevel(our_level)
    _write_private(tmp_path / "explanations" / "x.md", "# text")
    assert stat.S_IMODE((tmp_path / "explanations").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "explanations" / "x.md").stat().st_mode) == 0o600


FAKE_LLAMA_SERVER = '''#!{python}
"""Stands in for llama-server's process handling only: answers GET /health on --port, logs to stdout."""
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{{}}")
    def log_message(self, *a):
        print("request", *a, flush=True)
print("listening", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def test_managed_server_key_is_not_on_the_command_line_and_its_log_is_user_only(tmp_path, monkeypatch, open_umask):
    """A stand-in llama-server (a Python HTTP server; the process handling is what is tested here)."""
    from lsp_server.backends.managed import ManagedLlamaServer

    monkeypatch.setenv("INFILL_LS_CACHE", str(tmp_path / "cache"))
    binary = tmp_path / "llama-server"
    binary.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable))
    binary.chmod(0o700)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    server = ManagedLlamaServer(str(binary), str(model))
    try:
        server.start()
        key = server.api_key
        assert len(key) >= 32  # generated: no key configured
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
        assert key.encode() not in cmdline and f"LLAMA_API_KEY={key}".encode() in environ
        assert stat.S_IMODE(server.log_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.log_path.parent.stat().st_mode) == 0o700
    finally:
        server.stop()
    configured = ManagedLlamaServer(str(binary), str(model), api_key="mine")
    assert configured.api_key == "mine" and "mine" not in configured.command()


# -- model output is never executed ------------------------------------------------------------------------------
def test_no_code_path_executes_text():
    """Static guard: nothing in the package evaluates strings or runs a shell; in the server, processes are
    started only for the managed llama-server (a configured, trust-checked binary), `models pull` (pip
    download) and GPU probes."""
    root = Path(__file__).resolve().parents[2] / "lsp_server"
    banned = re.compile(r"(?<![\w.])(?:eval|exec|compile)\s*\(|os\.system\s*\(|os\.popen\s*\(|shell\s*=\s*True|"
                        r"pty\.spawn|__import__\s*\(|runpy\.|code\.interact")
    spawners = re.compile(r"subprocess\.|os\.exec|os\.spawn|os\.posix_spawn")
    found, spawning = [], set()
    for path in root.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if banned.search(code):
                found.append(f"{path.name}:{n}: {line.strip()}")
            if spawners.search(code):
                spawning.add(path.relative_to(root).as_posix())
    assert not found, found
    # gpu.py: nvidia-smi style probes for `doctor`; tools/: offline commands the user runs, not the server
    server_side = {p for p in spawning if not p.startswith("tools/")}
    assert server_side <= {"backends/managed.py", "catalog.py", "gpu.py"}, spawning


def test_action_answers_are_only_text(tmp_path):
    """The answer-handling functions on a hostile answer: they return text; the payload never runs."""
    from lsp_server import actions as A
    from lsp_server.context import get_parser

    marker = tmp_path / "pwned"
    payload = f"import os\nos.system('touch {marker}')\nopen({str(marker)!r}, 'w').write('x')\n"
    answer = f"```python\ndef add(a, b):\n    {payload.replace(chr(10), chr(10) + '    ')}return a + b\n```\n"
    text = "def add(a, b):\n    return a - b\n"
    tree = get_parser("python").parse(text.encode())
    spec = A.load_actions()[0]["refactor"]
    target = A.pick_target(text, tree, "python", 0, len(text))
    planned = A.plan_replacement(answer, "stop", spec, text, target, "python")
    assert "os.system" in planned.new_text  # it is there, as text
    A.syntax_errors(planned.new_text, "python")
    A.markdown_answer(answer)
    tests = A.load_actions()[0]["tests"]
    try:
        A.plan_new_file(answer, "stop", tests, "python", str(tmp_path / "test_add.py"), module="add", symbol="add")
    except A.UnusableAnswer:
        pass
    assert not marker.exists()
