"""Privacy and trust: what may enter a prompt, what may leave the machine, and who decides.

* `redact(text)`: secrets (private keys, cloud and API tokens, JWTs, credentials in URLs, passwords and
  tokens assigned to secret-named keys, `.env`-style lines) replaced by `[REDACTED]`. The HTTP backends
  apply it to every prompt they send (`privacy.redact_secrets`, default on; see `redact_request`).
* `allowed_context_file(path, settings, workspace_root)`: whether another file may enter a prompt as
  context: never when it matches an exclude glob (the built-in list of secret files plus
  `privacy.exclude`), nor when `.gitignore`d (`privacy.respect_gitignore`, default on).
* `completion_allowed(path, settings, workspace_root)`: no completion, and so no prompt, inside an
  excluded file; with a remote backend none inside a `.gitignore`d file either.
* Workspace trust (`enforce_trust`): settings arrive from the editor, which may have read them from the
  workspace (a cloned repository). Unless the client vouches for them (`"trusted": true` at the top level
  of initializationOptions, which editor integrations set only from user-scope settings) or the user's own
  config file ($XDG_CONFIG_HOME/infill-ls/config.toml) allows it, they cannot make the server start an
  executable, send code to a non-loopback URL, or weaken TLS and privacy settings.

Everything here is pure and cheap (parsed .gitignore files are cached by mtime): the engine calls it on
every request. Git itself is never run: a repository's config can make git execute commands (fsmonitor).
See docs/SECURITY.md for the threat model.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PLACEHOLDER = "[REDACTED]"

REMOTE_BACKENDS = ("llama_server", "openai", "ollama")

# Files that hold secrets by convention: never in a prompt, no completions inside them. A pattern without a
# "/" matches a file or directory name at any depth (a directory excludes everything in it).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".env", ".env.*", "*.env", ".envrc", ".secrets", "secrets.yml", "secrets.yaml", "secrets.json", "*.secret",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx", "*.ovpn",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh", ".gnupg",
    ".netrc", "_netrc", ".pgpass", ".npmrc", ".pypirc", ".git-credentials", ".htpasswd", ".dockercfg",
    ".aws", ".azure", ".kube", "kubeconfig", ".docker/config.json",
    "credentials.json", "service-account*.json", "*.tfstate", "*.tfstate.*", "*.tfvars",
)


# -- redaction -------------------------------------------------------------------------------------------------
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    # the body: base64, PEM headers (Proc-Type: 4,ENCRYPTED), and the quotes and \n escapes of a key kept in
    # a string literal; bounded by the first character that cannot be part of it
    r"(?:(?!-----)[A-Za-z0-9+/=\s:,.\\\"'_\[\]-])*"
    r"(?:-----END \1-----)?")

# Well-known token formats (prefixes are documented by their issuers), each with the substrings that must be in
# the text for it to match: most prompts contain none, and a substring test is much cheaper than a regex scan.
_TOKENS: tuple[tuple[tuple[str, ...], re.Pattern], ...] = tuple((t, re.compile(pattern)) for t, pattern in (
    (("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"),
     r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),  # AWS access key ids
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b"),  # GitHub
    (("github_pat_",), r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    (("glpat-",), r"\bglpat-[A-Za-z0-9_-]{20,}"),  # GitLab
    (("xox",), r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    (("hooks.slack.com",), r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"),
    (("sk-",), r"\bsk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic
    (("AIza",), r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API keys
    (("_live_", "_test_"), r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"),  # Stripe secret and restricted keys
    (("npm_",), r"\bnpm_[A-Za-z0-9]{36}\b"),  # npm
    (("hf_",), r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face
    (("SG.",), r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),  # SendGrid
    (("eyJ",), r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),  # JWTs (header.payload.signature)
))

# user:password@ in URLs, Authorization headers, Azure-style connection strings: keep the name, drop the value
_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^/\s:@\"'`]{1,256}:)([^/\s@\"'`]{1,256})(@)")
_AUTH_HEADER = re.compile(r"(\b(?:Authorization|Proxy-Authorization)[\"']?\s*[:=]\s*[\"']?"
                          r"(?:Bearer|Basic|Token|token)\s+)"
                          r"([A-Za-z0-9._~+/=-]{8,})")
_CONNECTION_KEY = re.compile(r"(\b(?:AccountKey|SharedAccessKey)=|(?<=[;\"'])(?:Password|Pwd)=)([^;\s\"']{4,})", re.I)

# A secret-named key assigned a string literal, anywhere: `password = "x"`, `"api_key": "x"`, `token: str = "x"`,
# `f(secret='x')`, `if pwd == "x"`.
_QUOTED = re.compile(
    r"(?<![\w.\-])(?P<key>[A-Za-z_][\w.\-]{0,60})[\"']?"
    r"(?P<op>[ \t]{0,8}(?::[ \t]{0,8}[A-Za-z_][\w\[\]., |]{0,40}?[ \t]{0,8})?(?:==|!=|:=|=>|=|:)[ \t]{0,8})"
    r"(?P<q>[\"'`])(?P<val>(?:(?!(?P=q))[^\\\n]|\\.){1,1024}?)(?P=q)")
# A secret-named key with an unquoted value at the start of a line: .env, YAML, INI, properties.
_UNQUOTED = re.compile(
    r"^(?P<lead>[ \t]*(?:export[ \t]+|-[ \t]+)?[\"']?)(?P<key>[A-Za-z_][\w.\-]{0,60})[\"']?"
    r"(?P<op>[ \t]*[=:][ \t]*)(?P<val>[^\s\"'`#][^\s]{0,255})(?P<tail>(?:[ \t]+#[^\n]*)?[ \t\r]*)$", re.M)

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SECRET_WORDS = {"password", "passwd", "passphrase", "pwd", "secret", "secrets", "token", "apikey", "credential",
                 "credentials", "privatekey", "accesskey", "secretkey"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("auth", "key"),
                 ("signing", "key"), ("encryption", "key"), ("session", "key"), ("master", "key"), ("account", "key"),
                 ("client", "secret"), ("access", "token"), ("refresh", "token"), ("api", "token")}
# A last word that makes the value a description of the secret rather than the secret itself.
_NOT_SECRET_LAST = {"url", "uri", "endpoint", "host", "path", "file", "filename", "dir", "name", "type", "length",
                    "len", "count", "size", "env", "var", "field", "header", "prefix", "suffix", "format", "pattern",
                    "regex", "label", "policy", "expiry", "expires", "ttl", "timeout", "limit", "max", "min", "id",
                    "ids", "index", "kind", "mode", "required", "enabled", "enable", "hint", "placeholder", "prompt",
                    "message", "msg", "error", "errors", "help", "description", "class", "validator", "rules",
                    "rule", "strength", "changed", "widget", "input", "column", "param", "location", "source"}
_LITERALS = {"true", "false", "null", "none", "nil", "undefined", "yes", "no", "on", "off"}
_CODEISH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*[,;]?")


def secret_name(key: str) -> bool:
    """Whether an identifier names a secret: `DB_PASSWORD`, `apiKey`, `client_secret`, not `max_tokens`."""
    words = [w.lower() for w in _WORDS.findall(key)]
    if not words or words[-1] in _NOT_SECRET_LAST:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def _placeholder_value(value: str) -> bool:
    """Values that are references or templates, not secrets: ${VAR}, $VAR, {{ var }}, %(var)s, <your-key>."""
    v = value.strip()
    return not v or v[0] in "${<%" or v == PLACEHOLDER


def _quoted(m: re.Match) -> str:
    if not secret_name(m.group("key")) or _placeholder_value(m.group("val")):
        return m.group(0)
    return m.group(0)[: m.start("val") - m.start()] + PLACEHOLDER + m.group("q")


def _unquoted(m: re.Match) -> str:
    key, value = m.group("key"), m.group("val")
    if not secret_name(key) or _placeholder_value(value) or value.startswith(PLACEHOLDER):
        return m.group(0)
    env_style = m.group("op") == "=" and key.upper() == key  # KEY=value: always a literal
    if not env_style:
        # `password = get_password()`, `token: str`, `secret = self.secret`, `pwd = None` are code, not secrets;
        # a bare word counts as a secret only with a digit in it or when it is long (heuristic, see SECURITY.md).
        if any(c in value for c in "([{") or value.lower().rstrip(",;") in _LITERALS:
            return m.group(0)
        if _CODEISH.fullmatch(value) and not any(c.isdigit() for c in value) and len(value) < 16:
            return m.group(0)
    return m.group(0)[: m.start("val") - m.start()] + PLACEHOLDER + m.group("tail")


def _pem(m: re.Match) -> str:
    label = m.group(1)
    end = f"-----END {label}-----" if m.group(0).endswith("-----END " + label + "-----") else ""
    nl = "\\n" if "\\n" in m.group(0) else "\n"  # a key inside a string literal keeps its \n escapes
    return f"-----BEGIN {label}-----{nl}{PLACEHOLDER}" + (f"{nl}{end}" if end else "")


def _keep_name(m: re.Match) -> str:
    """user:password@, Authorization: Bearer x, AccountKey=x: the name stays, the value goes."""
    return m.group(1) + PLACEHOLDER + (m.group(3) if m.re.groups >= 3 else "")


# Substrings (lower case) without which no secret-named key can be on a line.
_KEY_HINTS = ("pass", "pwd", "secret", "token", "key", "credential")


def redact_count(text: str) -> tuple[str, int]:
    """`text` with secrets replaced by [REDACTED], and how many were replaced."""
    if not text:
        return text, 0
    count = 0

    def counted(replace):
        def sub(m: re.Match) -> str:
            nonlocal count
            out = replace(m)
            if out != m.group(0):
                count += 1
            return out
        return sub

    if "PRIVATE KEY" in text:
        text = _PEM.sub(counted(_pem), text)
    for triggers, pattern in _TOKENS:
        if any(t in text for t in triggers):
            text = pattern.sub(counted(lambda m: PLACEHOLDER), text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(counted(_keep_name), text)
    lower = text.lower()
    if "authorization" in lower:
        text = _AUTH_HEADER.sub(counted(_keep_name), text)
    if "key=" in lower or "password=" in lower or "pwd=" in lower:
        text = _CONNECTION_KEY.sub(counted(_keep_name), text)
    if any(h in lower for h in _KEY_HINTS):
        # assignments are line-local: only lines that mention a secret-ish word are scanned
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            low = line.lower()
            if any(h in low for h in _KEY_HINTS):
                line = _QUOTED.sub(counted(_quoted), line)
                lines[i] = _UNQUOTED.sub(counted(_unquoted), line)
        text = "".join(lines)
    return text, count


def redact(text: str) -> str:
    """`text` with secrets replaced by [REDACTED] (idempotent; lines and code around them are kept)."""
    return redact_count(text)[0]


# Whether HTTP backends redact their prompts: `privacy.redact_secrets`, set by the server from the settings.
# Process-wide because there is one settings object per server process; on by default so that a backend
# made outside the server (tests, benchmarks) is private too.
_redact_enabled = True


def set_redaction(enabled: bool) -> None:
    global _redact_enabled
    _redact_enabled = bool(enabled)


def redaction_enabled() -> bool:
    return _redact_enabled


def redact_request(request: Any) -> tuple[Any, int]:
    """A GenerationRequest or ChatRequest with every text in it redacted, and the number of redactions."""
    from lsp_server.backends.base import ChatRequest

    if not _redact_enabled:
        return request, 0
    total = 0

    def clean(text: str | None) -> str | None:
        nonlocal total
        if text is None:
            return None
        out, n = redact_count(text)
        total += n
        return out

    if isinstance(request, ChatRequest):
        messages = [{**m, "content": clean(m.get("content") or "")} for m in request.messages]
        return dataclasses.replace(request, messages=messages), total
    extra = tuple(dataclasses.replace(e, text=clean(e.text)) if dataclasses.is_dataclass(e) else clean(str(e))
                  for e in request.extra)
    redacted = dataclasses.replace(request, prompt=clean(request.prompt), prefix=clean(request.prefix),
                                   suffix=clean(request.suffix), extra=extra)
    return redacted, total


# -- globs and .gitignore ----------------------------------------------------------------------------------------
def _glob_regex(pattern: str) -> str:
    """A gitignore-style glob as a regex body: `*` and `?` stop at "/", `**/` is any number of directories,
    a trailing `/**` everything inside."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i) and (i == 0 or pattern[i - 1] == "/"):
                if i + 2 < n and pattern[i + 2] == "/":
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if i + 2 == n:
                    out.append(".*")
                    i += 2
                    continue
            while i < n and pattern[i] == "*":
                i += 1
            out.append("[^/]*")
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[{'^/' if negate else ''}{body}]")
                i = j + 1
                continue
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern
    negate: bool
    dir_only: bool


def parse_gitignore(text: str) -> list[_Rule]:
    """The rules of one .gitignore file (git's syntax: comments, `!`, trailing `/`, anchoring, `**`)."""
    rules = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.endswith(" ") and not line.endswith("\\ "):
            line = line.rstrip(" ")
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line  # a slash at the start or in the middle: relative to the .gitignore's directory
        body = _glob_regex(line.lstrip("/"))
        try:
            regex = re.compile(("" if anchored else "(?:.*/)?") + body + r"\Z", re.S)
        except re.error:
            continue  # git ignores a pattern it cannot parse, too
        rules.append(_Rule(regex, negate, dir_only))
    return rules


_gitignore_cache: dict[str, tuple[tuple[int, int], list[_Rule]]] = {}


def _rules_of(path: str) -> list[_Rule]:
    try:
        st = os.stat(path)
    except OSError:
        return []
    key = (st.st_mtime_ns, st.st_size)
    known = _gitignore_cache.get(path)
    if known is not None and known[0] == key:
        return known[1]
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            rules = parse_gitignore(fh.read(1 << 20))
    except OSError:
        rules = []
    if len(_gitignore_cache) > 1024:
        _gitignore_cache.clear()
    _gitignore_cache[path] = (key, rules)
    return rules


def _git_root(path: str) -> str | None:
    d = os.path.dirname(path)
    while True:
        if os.path.exists(os.path.join(d, ".git")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(os.path.join(root, ""))


def gitignored(path: str, workspace_root: str | None = None) -> bool:
    """Whether git would ignore `path`: .gitignore files from the repository root down to the file's
    directory, .git/info/exclude and the user's global ignore file ($XDG_CONFIG_HOME/git/ignore). Outside
    a git repository the workspace root's .gitignore files count (an unpacked archive of a repository)."""
    path = os.path.abspath(path)
    root = _git_root(path)
    if root is None:
        ws = os.path.abspath(workspace_root) if workspace_root else None
        if ws is None or not _inside(path, ws):
            return False
        root = ws
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if rel.startswith("../") or rel == ".":
        return False
    parts = rel.split("/")
    if ".git" in parts[:-1] or parts[0] == ".git":
        return True  # git's own files are never content
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    sources: list[tuple[str, list[_Rule]]] = [("", _rules_of(os.path.join(xdg, "git", "ignore"))),
                                              ("", _rules_of(os.path.join(root, ".git", "info", "exclude")))]
    for depth in range(len(parts)):
        base = "/".join(parts[:depth])
        sources.append((base, _rules_of(os.path.join(root, *parts[:depth], ".gitignore"))))
    # git does not descend into an ignored directory: a file inside one is ignored whatever its own rules say
    for k in range(1, len(parts) + 1):
        candidate = "/".join(parts[:k])
        is_dir = k < len(parts)
        ignored = False
        for base, rules in sources:
            if base and not candidate.startswith(base + "/"):
                continue
            sub = candidate[len(base) + 1 :] if base else candidate
            for rule in rules:
                if rule.dir_only and not is_dir:
                    continue
                if rule.regex.match(sub):
                    ignored = not rule.negate
        if ignored:
            return True
    return False


@lru_cache(maxsize=64)
def _exclude_regex(patterns: tuple[str, ...]) -> tuple[re.Pattern | None, re.Pattern | None]:
    """(patterns matched against the workspace-relative path, patterns matched against the absolute path)."""
    rel, absolute = [], []
    for p in patterns:
        p = p.strip()
        if not p:
            continue
        if p.startswith("~"):
            p = os.path.expanduser(p)
        target = absolute if os.path.isabs(p) else rel
        body = _glob_regex(p.lstrip("/").rstrip("/"))
        anchored = "/" in p.strip("/") or os.path.isabs(p)
        # a matching directory excludes everything inside it
        target.append(("" if anchored else "(?:.*/)?") + body + "(?:/.*)?")
    compile_ = lambda items: re.compile("(?:" + "|".join(items) + r")\Z", re.S) if items else None  # noqa: E731
    return compile_(rel), compile_(absolute)


def excluded(path: str, patterns: Iterable[str], workspace_root: str | None = None) -> bool:
    """Whether `path` matches an exclude glob (built-in list plus `patterns`): relative to the workspace root
    (any depth for a pattern without "/"), or absolute for a pattern starting with "/" or "~"."""
    rel_re, abs_re = _exclude_regex(DEFAULT_EXCLUDE + tuple(patterns))
    path = os.path.abspath(path)
    posix = path.replace(os.sep, "/")
    if abs_re is not None and abs_re.match(posix.lstrip("/")) or abs_re is not None and abs_re.match(posix):
        return True
    if rel_re is None:
        return False
    root = os.path.abspath(workspace_root) if workspace_root else None
    if root and _inside(path, root):
        return bool(rel_re.match(os.path.relpath(path, root).replace(os.sep, "/")))
    return bool(rel_re.match(posix.lstrip("/")))


def _privacy(settings: Any) -> Any:
    return getattr(settings, "privacy", None)


def allowed_context_file(path: str, settings: Any, workspace_root: str | None) -> bool:
    """Whether the file at `path` may enter a prompt as context for another file (every backend)."""
    if not path:
        return True
    p = _privacy(settings)
    if excluded(path, tuple(getattr(p, "exclude", ())) + user_config().exclude, workspace_root):
        return False
    if getattr(p, "respect_gitignore", True) and gitignored(path, workspace_root):
        return False
    return True


def remote_backend(settings: Any, model: str | None = None) -> bool:
    """Whether the (named, else the completion) model is served over HTTP."""
    try:
        return settings.model_settings(model)[1].backend in REMOTE_BACKENDS
    except Exception:  # noqa: BLE001 - a settings object without models: the in-process default
        return False


def completion_allowed(path: str, settings: Any, workspace_root: str | None, model: str | None = None) -> str:
    """"" when a completion (or code action) may run in the file at `path`; else why not. An excluded file
    gets none with any backend; a .gitignored one none with a remote backend (it would send the file)."""
    if not path:
        return ""
    p = _privacy(settings)
    if excluded(path, tuple(getattr(p, "exclude", ())) + user_config().exclude, workspace_root):
        return f"{os.path.basename(path)} is excluded by the privacy settings (privacy.exclude)"
    if remote_backend(settings, model) and getattr(p, "respect_gitignore", True) and gitignored(path, workspace_root):
        return f"{os.path.basename(path)} is .gitignored and the model is remote (privacy.respect_gitignore)"
    return ""


# -- workspace trust ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserConfig:
    """The user's own file, $XDG_CONFIG_HOME/infill-ls/config.toml (INFILL_LS_CONFIG overrides the path):
    what settings from the editor may do even when the client does not vouch for them."""

    allow_remote_urls: bool | tuple[str, ...] = ()  # true: any; else URLs (scheme://host:port) or host names
    allow_executables: bool | tuple[str, ...] = ()  # true: any (and their arguments); else absolute paths
    exclude: tuple[str, ...] = ()  # extra exclude globs, always applied
    path: str = ""
    errors: tuple[str, ...] = ()


def user_config_path() -> Path:
    if env := os.environ.get("INFILL_LS_CONFIG"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "infill-ls" / "config.toml"


_user_cache: tuple[tuple[str, int, int, int, int], UserConfig] | None = None


def user_config() -> UserConfig:
    """The user config (cached by mtime). A file that others can write, or that another user owns, is
    ignored: whoever can write it could allow anything."""
    global _user_cache
    path = user_config_path()
    try:
        st = path.stat()
    except OSError:
        return UserConfig(path=str(path))
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)
    if _user_cache is not None and _user_cache[0] == key:
        return _user_cache[1]
    config = _read_user_config(path, st)
    _user_cache = (key, config)
    return config


def _read_user_config(path: Path, st: os.stat_result) -> UserConfig:
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        return UserConfig(path=str(path), errors=(f"{path} is ignored: it is writable by others or not yours "
                                                  f"(chmod 600 {path})",))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return UserConfig(path=str(path), errors=(f"{path} is ignored: {exc}",))
    errors: list[str] = []
    values: dict[str, Any] = {}
    for section, keys in (("trust", ("allow_remote_urls", "allow_executables")), ("privacy", ("exclude",))):
        table = data.pop(section, {})
        if not isinstance(table, dict):
            errors.append(f"{path}: [{section}] must be a table")
            continue
        for name, value in table.items():
            if name not in keys:
                errors.append(f"{path}: {section}.{name}: unknown setting (ignored)")
            elif isinstance(value, bool) and name != "exclude":
                values[name] = value
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                values[name] = tuple(value)
            else:
                wanted = "a list of strings" if name == "exclude" else "true, false or a list of strings"
                errors.append(f"{path}: {section}.{name}: expected {wanted}")
    for extra in data:
        errors.append(f"{path}: [{extra}]: unknown section (ignored)")
    return UserConfig(**values, path=str(path), errors=tuple(errors))


def loopback_url(url: str) -> bool:
    """Whether `url` points at this machine (localhost, 127.0.0.0/8, ::1)."""
    try:
        host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    except ValueError:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port


def url_allowed(url: str, allowed: bool | tuple[str, ...]) -> bool:
    if allowed is True:
        return True
    if not allowed:
        return False
    origin = _origin(url)
    if origin is None:
        return False
    for entry in allowed:
        if "://" in entry:
            if _origin(entry) == origin:
                return True
        elif entry.strip().lower() == origin[1]:  # a bare host name: any scheme and port
            return True
    return False


def executable_allowed(binary: str, allowed: bool | tuple[str, ...]) -> bool:
    if allowed is True:
        return True
    if not allowed:
        return False
    real = os.path.realpath(os.path.expanduser(binary))
    return any(os.path.realpath(os.path.expanduser(entry)) == real for entry in allowed)


def split_trust_flag(raw: Any, *, initial: bool) -> tuple[Any, bool, list[str]]:
    """(the settings payload without `trusted`, whether the client vouches for it, notes).

    Only `"trusted": true` at the top level of initializationOptions counts; `infill.trusted` (where a
    workspace settings file could put it) and a flag in didChangeConfiguration are dropped."""
    notes: list[str] = []
    if not isinstance(raw, dict):
        return raw, False, notes
    raw = dict(raw)
    flag = raw.pop("trusted", None)
    inner = raw.get("infill")
    if isinstance(inner, dict) and "trusted" in inner:
        raw["infill"] = {k: v for k, v in inner.items() if k != "trusted"}
        notes.append("infill.trusted is ignored: only the editor integration sets `trusted`, at the top level "
                     "of initializationOptions")
    if flag is not None and not initial:
        log.info("`trusted` in didChangeConfiguration is ignored: trust is decided at initialize")
        return raw, False, notes
    return raw, flag is True, notes


def enforce_trust(settings: Any, trusted: bool, user: UserConfig | None = None) -> tuple[Any, list[str]]:
    """`settings` with what untrusted settings may not do undone, and a note for each thing undone."""
    if trusted:
        return settings, []
    user = user or user_config()
    where = user.path or str(user_config_path())
    notes: list[str] = []
    models = dict(settings.models)
    for name, ms in settings.models.items():
        changes: dict[str, Any] = {}
        if ms.url and not loopback_url(ms.url) and not url_allowed(ms.url, user.allow_remote_urls):
            changes["url"] = ""
            notes.append(f"models.{name}.url {ms.url!r} ignored: sending code to a remote server needs "
                         f"trust.allow_remote_urls in {where} (or `trusted` from your editor's user settings)")
        if ms.server_binary and not executable_allowed(ms.server_binary, user.allow_executables):
            changes["server_binary"] = ""
            notes.append(f"models.{name}.server_binary {ms.server_binary!r} ignored: starting a program needs "
                         f"trust.allow_executables in {where} (or `trusted` from your editor's user settings)")
        if ms.server_args and user.allow_executables is not True:
            changes["server_args"] = ""
            notes.append(f"models.{name}.server_args ignored: needs trust.allow_executables = true in {where}")
        if not ms.verify_tls or ms.ca_bundle:
            changes.update(verify_tls=True, ca_bundle="")
            notes.append(f"models.{name}: verify_tls/ca_bundle ignored: weakening TLS needs `trusted` settings")
        if changes:
            models[name] = dataclasses.replace(ms, **changes)
    settings = dataclasses.replace(settings, models=models)
    p = _privacy(settings)
    if p is not None and (not p.redact_secrets or not p.respect_gitignore):
        settings = dataclasses.replace(settings, privacy=dataclasses.replace(p, redact_secrets=True,
                                                                             respect_gitignore=True))
        notes.append("privacy.redact_secrets/respect_gitignore = false ignored: turning privacy off needs "
                     "`trusted` settings")
    return settings, notes
