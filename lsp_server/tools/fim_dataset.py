"""Build a fill-in-the-middle training set from a source tree, with the prompts the server sends.

    python -m lsp_server.tools.fim_dataset SRC_DIR --out data/fim      (or scripts/build_fim_dataset.py)

Each example is a hole cut out of a real file: the text around it becomes the editor's document with the
cursor at the hole, and the server's own pipeline turns it into a prompt: the completion-mode decision
(positions where the server would not ask are dropped), the tree-sitter prefix/suffix windows within the
token budgets, and the FIM template from prompts/fim.toml. The target is the hole's text followed by the
template's end token. So an adapter is trained on exactly the prompt layout it will see in the editor.

Holes come in three kinds: `line` (the rest of a line from a cursor inside it), `block` (a block body or
whole statements, cut at tree-sitter node boundaries) and `random` (an arbitrary character span).

Files: `git ls-files` when the tree is a git work tree (so .gitignore applies exactly), else a walk that
reads .gitignore files itself. Binary, minified, oversized and generated files are skipped, and so is any
file that looks like it holds a secret (key files by name; private keys and API tokens by content): the
manifest lists skipped files with the reason, never their content. Train and held-out sets are split
by file (identical files go together), so no held-out hole has its own file in the training set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterator

from lsp_server.context import Budgets, Mode, build_context, byte_to_offset, decide_mode, get_parser, grammar_for
from lsp_server.context.languages import spec_for
from lsp_server.privacy import parse_gitignore
from lsp_server.prompts import FimTemplate, get_template, render

KINDS = ("line", "block", "random")
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".tox", ".mypy_cache",
             ".pytest_cache", ".ruff_cache", "site-packages", ".idea", ".vscode"}

# -- secrets -------------------------------------------------------------------------------------------------
SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
                "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".npmrc", ".pypirc", "*.tfstate",
                "*.tfvars", "credentials*", "*secret*", "*.gpg", "*.asc")
SECRET_CONTENT = [
    ("private key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    ("API secret key", re.compile(r"\b(?:sk|rk)[-_](?:live|proj|ant)?[-_]?[A-Za-z0-9]{32,}")),
    ("hard-coded credential", re.compile(
        r"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password|passwd)\b['\"]?\s*[:=]\s*"
        r"['\"][A-Za-z0-9+/=_\-.]{20,}['\"]")),
]


def secret_reason(name: str, text: str | None) -> str | None:
    """Why a file must stay out of a training set (a key file, or a secret in its content), else None."""
    lower = name.lower()
    for pattern in SECRET_NAMES:
        if fnmatch(lower, pattern):
            return f"secret file name ({pattern})"
    if text is not None:
        for label, regex in SECRET_CONTENT:
            if regex.search(text):
                return f"contains a {label}"
    return None


# -- .gitignore ----------------------------------------------------------------------------------------------
# parse_gitignore is the privacy rules' parser (lsp_server/privacy.py): one reading of git's syntax for both.


def is_ignored(rel: str, is_dir: bool, stack: list[tuple[str, list]]) -> bool:
    """Git's rule: the last matching pattern wins, deeper .gitignore files after shallower ones."""
    ignored = False
    for base, rules in stack:
        if base and not rel.startswith(base + "/"):
            continue
        sub = rel[len(base) + 1 :] if base else rel
        for rule in rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(sub):
                ignored = not rule.negate
    return ignored


def _walk(root: Path) -> Iterator[str]:
    """Files under root, honouring .gitignore files (an ignored directory is not entered, as in git)."""
    def visit(rel_dir: str, stack: list[tuple[str, list]]) -> Iterator[str]:
        here = root / rel_dir if rel_dir else root
        gi = here / ".gitignore"
        if gi.is_file():
            stack = stack + [(rel_dir, parse_gitignore(gi.read_text(encoding="utf-8", errors="replace")))]
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in SKIP_DIRS and not is_ignored(rel, True, stack):
                    yield from visit(rel, stack)
            elif entry.is_file() and not is_ignored(rel, False, stack):
                yield rel

    yield from visit("", [])


def list_files(root: Path) -> list[str]:
    """Relative paths of the tree's files that are not ignored: git's own answer in a work tree."""
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=30)
        # a tree that an enclosing repository ignores (a virtualenv, a vendored copy) is walked instead
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--", str(root)],
                                 capture_output=True, timeout=30).returncode == 0
        if inside.returncode == 0 and inside.stdout.strip() == "true" and not ignored:
            out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard", "--", "."], capture_output=True, timeout=120, check=True)
            paths = [p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
            keep = []
            for p in paths:
                full = root / p
                if full.is_file() and not full.is_symlink() and not (set(Path(p).parts[:-1]) & SKIP_DIRS):
                    keep.append(p)
            return sorted(keep)
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(_walk(root))


# -- reading files -------------------------------------------------------------------------------------------
def read_source(path: Path, max_bytes: int) -> tuple[str | None, str]:
    """(text, "") for a usable source file, else (None, why it was skipped)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, f"larger than {max_bytes} bytes"
        if size == 0:
            return None, "empty"
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    if b"\0" in data[:8192]:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "binary or not UTF-8"
    lines = text.splitlines() or [""]
    if max(len(line) for line in lines) > 1000 or len(text) / len(lines) > 300:
        return None, "minified or generated (very long lines)"
    head = text[:1024].lower()
    if "do not edit" in head and "generated" in head:
        return None, "generated (says so)"
    return text.replace("\r\n", "\n"), ""


# -- holes ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hole:
    start: int
    end: int
    kind: str


def line_holes(text: str, rng: random.Random, n: int) -> list[Hole]:
    """The rest of a line from a cursor inside it (what single-line completion fills)."""
    starts, pos = [], 0
    for line in text.split("\n"):
        body = line.rstrip()
        indent = len(body) - len(body.lstrip())
        if len(body) - indent >= 4:
            starts.append((pos + indent, pos + len(body)))
        pos += len(line) + 1
    out = []
    for lo, hi in rng.sample(starts, min(n, len(starts))):
        cut = rng.randint(lo, hi - 1)
        out.append(Hole(cut, hi, "line"))
    return out


def _lines_of(text: str, start: int, end: int) -> int:
    return text.count("\n", start, end) + 1


def block_holes(text: str, grammar: str | None, rng: random.Random, n: int, max_lines: int,
                max_chars: int) -> list[Hole]:
    """Block bodies and whole statements, cut at tree-sitter node boundaries."""
    spec = spec_for(grammar)
    parser = get_parser(grammar) if grammar else None
    if spec is None or parser is None:
        return []
    data = text.encode("utf-8")
    tree = parser.parse(data)

    def offset(byte: int) -> int:
        return byte_to_offset(text, byte)

    blocks = set(spec.blocks) | {"block", "compound_statement", "statement_block", "body"}
    candidates: list[tuple[int, int]] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        named = [c for c in node.children if c.is_named and c.type not in spec.comments]
        if node.type in blocks and named:
            candidates.append((named[0].start_byte, named[-1].end_byte))  # the body, without its braces
        if node.type in blocks or node.parent is None:
            for child in named:  # whole statements that start their line and end it
                line_start = data.rfind(b"\n", 0, child.start_byte) + 1
                line_end = data.find(b"\n", child.end_byte)
                line_end = len(data) if line_end == -1 else line_end
                if not data[line_start : child.start_byte].strip() and not data[child.end_byte : line_end].strip():
                    candidates.append((child.start_byte, child.end_byte))
        stack.extend(node.children)
    holes = []
    for sb, eb in set(candidates):
        start, end = offset(sb), offset(eb)
        if 0 < end - start <= max_chars and _lines_of(text, start, end) <= max_lines:
            holes.append(Hole(start, end, "block"))
    holes.sort(key=lambda h: (h.start, h.end))
    return rng.sample(holes, min(n, len(holes)))


def random_holes(text: str, rng: random.Random, n: int, max_chars: int) -> list[Hole]:
    """Arbitrary character spans (the classic FIM split), so no position is unseen in training."""
    out = []
    for _ in range(n if len(text) > 1 else 0):
        length = rng.randint(1, min(max_chars, len(text) - 1))
        start = rng.randint(0, len(text) - length)
        out.append(Hole(start, start + length, "random"))
    return out


# -- examples ------------------------------------------------------------------------------------------------
@dataclass
class Options:
    template: str = "qwen2.5-coder"
    per_file: int = 12  # holes tried per file, spread over the kinds
    kinds: tuple[str, ...] = KINDS
    heldout: float = 0.1  # share of files held out
    seed: int = 0
    max_file_bytes: int = 200_000
    max_block_lines: int = 20
    max_middle_chars: int = 800
    max_random_chars: int = 160
    budgets: Budgets = field(default_factory=Budgets)


def approx_tokens(text: str) -> int:
    """Token count without a tokenizer: about 3.5 characters a token for code."""
    return (len(text) * 2 + 6) // 7


def model_token_counter(model: str) -> Callable[[str], int]:
    """Exact token counts from a GGUF's vocabulary (catalog name or path; the model weights are not loaded)."""
    import llama_cpp

    from lsp_server.catalog import resolve_model_file

    path, _entry = resolve_model_file(model)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def file_examples(rel: str, text: str, template: FimTemplate, opts: Options,
                  count_tokens: Callable[[str], int]) -> tuple[list[dict], int]:
    """The examples of one file, and how many holes were dropped (where the server would not complete)."""
    grammar = grammar_for(None, rel)
    rng = random.Random(f"{opts.seed}:{rel}")  # per file: independent of the order files are visited in
    per_kind = {k: opts.per_file // len(opts.kinds) + (1 if i < opts.per_file % len(opts.kinds) else 0)
                for i, k in enumerate(opts.kinds)}
    holes: list[Hole] = []
    if per_kind.get("line"):
        holes += line_holes(text, rng, per_kind["line"])
    if per_kind.get("block"):
        holes += block_holes(text, grammar, rng, per_kind["block"], opts.max_block_lines, opts.max_middle_chars)
    if per_kind.get("random"):
        holes += random_holes(text, rng, per_kind["random"], opts.max_random_chars)
    end_token = template.stop[0] if template.stop else ""
    examples, dropped, seen = [], 0, set()
    for hole in holes:
        middle = text[hole.start : hole.end]
        if not middle.strip() or (hole.start, hole.end) in seen:
            continue
        seen.add((hole.start, hole.end))
        document = text[: hole.start] + text[hole.end :]  # the editor's text, the cursor at the hole
        mode = decide_mode(document, hole.start, grammar)
        if mode == Mode.SKIP:
            dropped += 1
            continue
        ctx = build_context(document, hole.start, grammar, count_tokens, opts.budgets, mode=mode)
        prompt = render(template, ctx.prefix, ctx.suffix if template.fim else "", path=rel, grammar=grammar)
        examples.append({"path": rel, "language": grammar, "kind": hole.kind, "mode": mode.value,
                         "prefix": ctx.prefix, "middle": middle, "suffix": ctx.suffix,
                         "prompt": prompt, "completion": middle + end_token, "template": template.name})
    return examples, dropped


def _split_of(rel: str, digest: str, opts: Options) -> str:
    h = int(hashlib.sha256(f"{opts.seed}:{digest}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < opts.heldout else "train"


def build(root: Path, out: Path, opts: Options, count_tokens: Callable[[str], int] = approx_tokens,
          log: Callable[[str], None] = lambda s: None) -> dict:
    """Write out/train.jsonl, out/heldout.jsonl and out/manifest.json; returns the manifest."""
    template = get_template(opts.template)
    root = root.resolve()
    files = list_files(root)
    skipped: dict[str, str] = {}
    sources: list[tuple[str, str, str]] = []  # (rel, text, content digest)
    seen_digests: dict[str, str] = {}
    for rel in files:
        if grammar_for(None, rel) is None:
            continue  # only languages the server parses
        reason = secret_reason(Path(rel).name, None)
        text = None
        if reason is None:
            text, reason = read_source(root / rel, opts.max_file_bytes)
            reason = reason or secret_reason(Path(rel).name, text) or ""
        if reason:
            skipped[rel] = reason
            continue
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in seen_digests:
            skipped[rel] = f"duplicate of {seen_digests[digest]}"
            continue
        seen_digests[digest] = rel
        sources.append((rel, text, digest))
    splits = {rel: _split_of(rel, digest, opts) for rel, _text, digest in sources}
    if len(sources) >= 2 and len(set(splits.values())) == 1:
        # tiny trees: still hold one file out (or keep one for training)
        rel = min(sources, key=lambda s: hashlib.sha256(f"{opts.seed}:{s[2]}".encode()).hexdigest())[0]
        splits[rel] = "heldout" if splits[rel] == "train" else "train"
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "heldout": 0}
    kinds: dict[str, int] = {}
    dropped = 0
    with open(out / "train.jsonl", "w", encoding="utf-8") as train, \
            open(out / "heldout.jsonl", "w", encoding="utf-8") as held:
        for rel, text, _digest in sources:
            examples, n_dropped = file_examples(rel, text, template, opts, count_tokens)
            dropped += n_dropped
            split = splits[rel]
            fh = train if split == "train" else held
            for ex in examples:
                ex["split"] = split
                fh.write(json.dumps(ex, ensure_ascii=False) + "\n")
                kinds[ex["kind"]] = kinds.get(ex["kind"], 0) + 1
            counts[split] += len(examples)
            log(f"{rel}: {len(examples)} examples ({split})")
    options = asdict(opts)
    manifest = {
        "root": str(root), "template": template.name, "options": options,
        "files": {"used": len(sources), "train": sum(1 for s in splits.values() if s == "train"),
                  "heldout": sum(1 for s in splits.values() if s == "heldout"), "skipped": len(skipped)},
        "examples": counts, "kinds": kinds, "dropped_no_completion_position": dropped,
        "heldout_files": sorted(r for r, s in splits.items() if s == "heldout"),
        "skipped": skipped,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_fim_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the source tree (a git work tree: .gitignore applies)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (train.jsonl, heldout.jsonl)")
    parser.add_argument("--template", default="qwen2.5-coder", help="FIM template of prompts/fim.toml")
    parser.add_argument("--tokenizer", default="approx",
                        help="token counts for the context budgets: 'approx' (3.5 chars a token) or a model "
                             "(catalog name or GGUF path, vocabulary only), e.g. 'default'")
    parser.add_argument("--per-file", type=int, default=12, help="holes per file, spread over the kinds")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: line, block, random")
    parser.add_argument("--heldout", type=float, default=0.1, help="share of files held out (0..1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--suffix-tokens", type=int, default=256)
    parser.add_argument("--max-file-bytes", type=int, default=200_000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    problems = [f"unknown kind {k!r} (known: {', '.join(KINDS)})" for k in kinds if k not in KINDS]
    if not args.source.is_dir():
        problems.append(f"not a directory: {args.source}")
    if not 0 <= args.heldout < 1:
        problems.append("--heldout must be in [0, 1)")
    if args.per_file < 1 or not kinds:
        problems.append("--per-file must be at least 1 and --kinds not empty")
    try:
        get_template(args.template)
    except KeyError as exc:
        problems.append(str(exc.args[0]))
    if problems:
        for p in problems:
            print(f"build_fim_dataset: {p}", file=sys.stderr)
        return 2
    counter = approx_tokens if args.tokenizer == "approx" else model_token_counter(args.tokenizer)
    opts = Options(template=args.template, per_file=args.per_file, kinds=kinds, heldout=args.heldout,
                   seed=args.seed, max_file_bytes=args.max_file_bytes,
                   budgets=Budgets(prefix_tokens=args.prefix_tokens, suffix_tokens=args.suffix_tokens))
    manifest = build(args.source, args.out, opts, counter, log=(lambda s: None) if args.quiet else
                     (lambda s: print(s, file=sys.stderr)))
    print(json.dumps({k: manifest[k] for k in ("files", "examples", "kinds", "dropped_no_completion_position")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
