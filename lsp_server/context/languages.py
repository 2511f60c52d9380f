"""Language identification and per-grammar syntax knowledge for the context engine.

Maps LSP ``languageId`` values / file extensions to the bundled
tree-sitter-language-pack grammars, hands out cached parsers, and describes for
each grammar which nodes are definitions (whose headers we keep), which are
imports, and which are strings/comments (for the completion-mode decision).
Anything unknown maps to ``None`` and the callers fall back to plain text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

GRAMMARS = (
    "python", "javascript", "typescript", "tsx", "go", "rust", "java",
    "c", "cpp", "csharp", "ruby", "php", "lua", "bash",
)

_LANGUAGE_IDS = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",  # the JS grammar parses JSX
    "jsx": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "tsx": "tsx",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "cuda-cpp": "cpp",
    "objective-c": "c",
    "csharp": "csharp",
    "c#": "csharp",
    "ruby": "ruby",
    "php": "php",
    "lua": "lua",
    "shellscript": "bash",
    "bash": "bash",
    "sh": "bash",
    "zsh": "bash",
}

_EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".ipp": "cpp", ".cu": "cpp",
    ".cs": "csharp",
    ".rb": "ruby", ".rake": "ruby", ".gemspec": "ruby",
    ".php": "php", ".phtml": "php",
    ".lua": "lua",
    ".sh": "bash", ".bash": "bash", ".zsh": "bash",
}


def grammar_for(language_id: str | None, path: str | None = None) -> str | None:
    """LSP languageId (preferred) or file extension -> grammar name, else None."""
    if language_id:
        grammar = _LANGUAGE_IDS.get(language_id.strip().lower())
        if grammar:
            return grammar
    if path:
        base = os.path.basename(path.split("?", 1)[0]).lower()
        _, ext = os.path.splitext(base)
        grammar = _EXTENSIONS.get(ext)
        if grammar:
            return grammar
        if base in ("rakefile", "gemfile"):
            return "ruby"
        if base in (".bashrc", ".bash_profile", ".zshrc", ".profile"):
            return "bash"
    return None


# Parsers are not thread-safe, so each thread gets its own per grammar.
_local = threading.local()
_failed: set[str] = set()


def get_parser(grammar: str):
    """Cached tree-sitter Parser for ``grammar``; None on any failure."""
    if not grammar or grammar in _failed:
        return None
    parsers = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = _local.parsers = {}
    parser = parsers.get(grammar)
    if parser is None:
        try:
            from tree_sitter_language_pack import get_parser as _pack_parser

            parser = _pack_parser(grammar)
        except Exception as exc:  # missing package, unknown grammar, ABI mismatch
            log.warning("no tree-sitter parser for %r: %s", grammar, exc)
            _failed.add(grammar)
            return None
        parsers[grammar] = parser
    return parser


@dataclass(frozen=True)
class LanguageSpec:
    """What the context engine needs to know about one grammar's node types."""

    # Nodes whose header line(s) are worth keeping when their body is far away.
    definitions: frozenset[str]
    # Definitions whose members are listed (collapsed) when they are far away.
    containers: frozenset[str] = frozenset()
    # Top-level nodes that are imports / includes / package clauses.
    imports: frozenset[str] = frozenset()
    # Top-level nodes that are imports only if their text matches ``import_pattern``
    # (require()-style imports that are ordinary calls in the grammar).
    import_calls: frozenset[str] = frozenset()
    import_pattern: re.Pattern | None = None
    # Nodes that wrap a definition (decorators, `export`, `template<>`).
    wrappers: frozenset[str] = frozenset()
    # String / comment node types (the mode decision treats them as prose).
    strings: frozenset[str] = frozenset()
    comments: frozenset[str] = frozenset()
    # How a far-away definition is collapsed after its header: "python" (`: ...`),
    # "brace" (`{ ... }`), "end" (`... end`).
    collapse: str = "brace"
    # Block/body nodes: an empty one under the cursor means "write a body" (multi-line).
    blocks: frozenset[str] = field(default_factory=frozenset)


def _fs(*names: str) -> frozenset[str]:
    return frozenset(names)


_JS_DEFS = _fs(
    "function_declaration", "generator_function_declaration", "function_expression",
    "function", "generator_function", "arrow_function", "method_definition",
    "class_declaration", "class", "abstract_class_declaration", "interface_declaration",
    "enum_declaration", "internal_module", "module",
)
_JS_CONTAINERS = _fs(
    "class_declaration", "class", "abstract_class_declaration", "interface_declaration",
    "internal_module", "module",
)
_JS = dict(
    definitions=_JS_DEFS,
    containers=_JS_CONTAINERS,
    imports=_fs("import_statement", "import_alias"),
    import_calls=_fs("lexical_declaration", "variable_declaration", "expression_statement"),
    import_pattern=re.compile(r"[^\n]*\brequire\s*\("),
    wrappers=_fs("export_statement", "lexical_declaration", "variable_declaration", "variable_declarator"),
    strings=_fs("string", "template_string", "string_fragment", "regex"),
    comments=_fs("comment"),
    blocks=_fs("statement_block", "class_body", "object_type", "interface_body"),
)

_C_DEFS = _fs("function_definition", "struct_specifier", "union_specifier", "enum_specifier")
_CPP_DEFS = _C_DEFS | _fs("class_specifier", "namespace_definition", "lambda_expression")

SPECS: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        definitions=_fs("function_definition", "class_definition"),
        containers=_fs("class_definition"),
        imports=_fs("import_statement", "import_from_statement", "future_import_statement"),
        wrappers=_fs("decorated_definition"),
        strings=_fs("string", "string_content", "concatenated_string"),
        comments=_fs("comment"),
        collapse="python",
        blocks=_fs("block"),
    ),
    "javascript": LanguageSpec(**_JS),
    "typescript": LanguageSpec(**_JS),
    "tsx": LanguageSpec(**_JS),
    "go": LanguageSpec(
        definitions=_fs("function_declaration", "method_declaration", "func_literal"),
        imports=_fs("package_clause", "import_declaration"),
        strings=_fs("interpreted_string_literal", "raw_string_literal",
                    "interpreted_string_literal_content", "raw_string_literal_content"),
        comments=_fs("comment"),
        blocks=_fs("block"),
    ),
    "rust": LanguageSpec(
        definitions=_fs("function_item", "impl_item", "trait_item", "mod_item", "struct_item",
                        "enum_item", "union_item", "macro_definition"),
        containers=_fs("impl_item", "trait_item", "mod_item"),
        imports=_fs("use_declaration", "extern_crate_declaration"),
        strings=_fs("string_literal", "raw_string_literal", "string_content", "char_literal"),
        comments=_fs("line_comment", "block_comment", "doc_comment"),
        wrappers=_fs("attribute_item"),
        blocks=_fs("block", "declaration_list", "field_declaration_list"),
    ),
    "java": LanguageSpec(
        definitions=_fs("class_declaration", "interface_declaration", "enum_declaration",
                        "record_declaration", "annotation_type_declaration",
                        "method_declaration", "constructor_declaration"),
        containers=_fs("class_declaration", "interface_declaration", "enum_declaration",
                       "record_declaration"),
        imports=_fs("package_declaration", "import_declaration"),
        strings=_fs("string_literal", "string_fragment", "text_block", "character_literal"),
        comments=_fs("line_comment", "block_comment"),
        blocks=_fs("block", "class_body", "constructor_body", "interface_body", "enum_body"),
    ),
    "c": LanguageSpec(
        definitions=_C_DEFS,
        containers=_fs(),
        imports=_fs("preproc_include"),
        strings=_fs("string_literal", "string_content", "char_literal", "raw_string_literal"),
        comments=_fs("comment"),
        blocks=_fs("compound_statement", "field_declaration_list"),
    ),
    "cpp": LanguageSpec(
        definitions=_CPP_DEFS,
        containers=_fs("class_specifier", "struct_specifier", "namespace_definition"),
        imports=_fs("preproc_include", "using_declaration", "alias_declaration"),
        wrappers=_fs("template_declaration"),
        strings=_fs("string_literal", "string_content", "char_literal", "raw_string_literal"),
        comments=_fs("comment"),
        blocks=_fs("compound_statement", "field_declaration_list", "declaration_list"),
    ),
    "csharp": LanguageSpec(
        definitions=_fs("class_declaration", "struct_declaration", "interface_declaration",
                        "record_declaration", "enum_declaration", "namespace_declaration",
                        "method_declaration", "constructor_declaration", "local_function_statement",
                        "property_declaration", "operator_declaration"),
        containers=_fs("class_declaration", "struct_declaration", "interface_declaration",
                       "record_declaration", "namespace_declaration"),
        imports=_fs("using_directive", "file_scoped_namespace_declaration"),
        strings=_fs("string_literal", "string_literal_content", "verbatim_string_literal",
                    "interpolated_string_expression", "raw_string_literal", "character_literal"),
        comments=_fs("comment"),
        blocks=_fs("block", "declaration_list", "accessor_list"),
    ),
    "ruby": LanguageSpec(
        definitions=_fs("method", "singleton_method", "class", "module", "singleton_class", "do_block"),
        containers=_fs("class", "module", "singleton_class"),
        import_calls=_fs("call", "identifier"),
        import_pattern=re.compile(r"(require|require_relative|load)\b"),
        strings=_fs("string", "string_content", "heredoc_body", "heredoc_content"),
        comments=_fs("comment"),
        collapse="end",
        blocks=_fs("body_statement", "do_block", "block"),
    ),
    "php": LanguageSpec(
        definitions=_fs("function_definition", "method_declaration", "class_declaration",
                        "interface_declaration", "trait_declaration", "enum_declaration",
                        "namespace_definition", "anonymous_function"),
        containers=_fs("class_declaration", "interface_declaration", "trait_declaration",
                       "enum_declaration", "namespace_definition"),
        imports=_fs("namespace_use_declaration", "php_tag"),
        import_calls=_fs("expression_statement", "namespace_definition"),
        import_pattern=re.compile(r"(require|require_once|include|include_once)\b|namespace\s+[\w\\]+\s*;"),
        strings=_fs("string", "string_content", "encapsed_string", "heredoc", "nowdoc", "string_value"),
        comments=_fs("comment"),
        blocks=_fs("compound_statement", "declaration_list"),
    ),
    "lua": LanguageSpec(
        definitions=_fs("function_declaration", "function_definition"),
        import_calls=_fs("variable_declaration", "assignment_statement", "function_call"),
        import_pattern=re.compile(r"[^\n]*\brequire\s*[\(\"']"),
        strings=_fs("string", "string_content"),
        comments=_fs("comment", "comment_content"),
        collapse="end",
        blocks=_fs("block"),
    ),
    "bash": LanguageSpec(
        definitions=_fs("function_definition"),
        import_calls=_fs("command"),
        import_pattern=re.compile(r"(source|\.)\s"),
        strings=_fs("string", "raw_string", "string_content", "heredoc_body", "ansi_c_string"),
        comments=_fs("comment"),
        blocks=_fs("compound_statement", "do_group"),
    ),
}


def spec_for(grammar: str | None) -> LanguageSpec | None:
    return SPECS.get(grammar) if grammar else None
