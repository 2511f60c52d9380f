"""Snippets from other files and local import resolution (lsp_server.context.extra)."""

import os

from lsp_server.context import Chunk, local_imports, select_chunks

COUNT = lambda s: len(s) // 4 + 1  # noqa: E731


def _file(prefix, n, words):
    return "".join(f"{prefix}_{i} = {words}\n" for i in range(n))


def test_select_chunks_ranks_by_similarity_and_returns_stable_order():
    cursor = "result = parse_config(path)\nvalidate_config(result, schema)\n"
    files = [
        ("b.py", _file("noise", 20, "random_thing()") + _file("cfg", 20, "parse_config(path) or validate_config(result, schema)")),
        ("a.py", _file("other", 20, "validate_config(result)") + _file("junk", 20, "unrelated()")),
        ("c.py", _file("zzz", 40, "nothing_here()")),
    ]
    chunks = select_chunks(cursor, files, COUNT, budget_tokens=10_000, chunk_lines=20)
    assert all(isinstance(c, Chunk) for c in chunks)
    paths = [c.path for c in chunks]
    assert "c.py" not in paths  # no shared identifiers
    assert paths == sorted(paths)  # stable order: path, then position
    assert [c.text.split("_")[0] for c in chunks] == ["other", "cfg"]


def test_select_chunks_budget_keeps_best():
    cursor = "alpha beta gamma delta"
    files = [
        ("x.py", "alpha\n" * 20 + "alpha beta gamma delta\n" * 20 + "beta\n" * 20),
    ]
    one = COUNT("alpha beta gamma delta\n" * 20)
    chunks = select_chunks(cursor, files, COUNT, budget_tokens=one)
    assert len(chunks) == 1 and "gamma" in chunks[0].text
    assert sum(COUNT(c.text) for c in chunks) <= one
    assert select_chunks(cursor, files, COUNT, budget_tokens=0) == []
    assert select_chunks("", files, COUNT, budget_tokens=1000) == []


def test_select_chunks_order_does_not_depend_on_input_order():
    cursor = "load_user(user_id) save_user(user)"
    files = [("m.py", "load_user(1)\n" * 5 + "\n" * 15 + "save_user(u)\n" * 5), ("k.py", "save_user(user)\n" * 3)]
    a = select_chunks(cursor, files, COUNT, 1000, chunk_lines=5)
    b = select_chunks(cursor, list(reversed(files)), COUNT, 1000, chunk_lines=5)
    assert a == b


def _write(root, rel, text=""):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_python_imports(tmp_path):
    root = str(tmp_path)
    main = _write(root, "pkg/main.py")
    helpers = _write(root, "pkg/helpers.py")
    sub_init = _write(root, "pkg/sub/__init__.py")
    leaf = _write(root, "pkg/sub/leaf.py")
    util = _write(root, "util.py")
    src = _write(root, "src/lib/core.py")
    text = (
        "import os\nimport util\nfrom . import helpers\nfrom .sub import leaf\n"
        "from pkg.sub import thing\nfrom lib.core import X\nimport numpy as np\n"
    )
    got = local_imports(text, main, "python", root)
    assert got == [util, helpers, sub_init, leaf, src]


def test_js_ts_imports(tmp_path):
    root = str(tmp_path)
    app = _write(root, "src/app.ts")
    a = _write(root, "src/a.ts")
    b = _write(root, "src/lib/index.tsx")
    c = _write(root, "src/c.js")
    d = _write(root, "src/d.ts")  # imported as './d.js' (TS ESM style)
    text = (
        "import { x } from './a';\nimport y from \"./lib\";\nconst c = require('./c.js');\n"
        "import './d.js';\nimport react from 'react';\nimport z from '../outside';\n"
    )
    assert local_imports(text, app, "typescript", root) == [a, b, c, d]


def test_c_includes(tmp_path):
    root = str(tmp_path)
    main = _write(root, "src/main.c")
    local = _write(root, "src/local.h")
    inc = _write(root, "include/api.h")
    text = '#include <stdio.h>\n#include "local.h"\n#include "api.h"\n#include "missing.h"\n'
    assert local_imports(text, main, "c", root) == [local, inc]


def test_go_and_rust_best_effort(tmp_path):
    root = str(tmp_path)
    _write(root, "go.mod", "module example.com/app\n\ngo 1.22\n")
    main = _write(root, "cmd/main.go")
    util = _write(root, "internal/util/util.go")
    _write(root, "internal/util/util_test.go")
    text = 'package main\n\nimport (\n\t"fmt"\n\t"example.com/app/internal/util"\n)\n'
    assert local_imports(text, main, "go", root) == [util]

    lib = _write(root, "src/lib.rs")
    parser = _write(root, "src/parser.rs")
    model = _write(root, "src/model/mod.rs")
    text = "mod parser;\nmod model;\nuse crate::model::Thing;\nuse std::io;\n"
    assert local_imports(text, lib, "rust", root) == [parser, model]


def test_other_languages_and_outside_root(tmp_path):
    root = str(tmp_path / "ws")
    rb = _write(root, "lib/a.rb")
    rb2 = _write(root, "lib/b.rb")
    assert local_imports("require_relative 'b'\nrequire 'json'\n", rb, "ruby", root) == [rb2]
    lua = _write(root, "main.lua")
    mod = _write(root, "util/strings.lua")
    assert local_imports("local s = require('util.strings')\n", lua, "lua", root) == [mod]
    sh = _write(root, "run.sh")
    lib = _write(root, "lib.sh")
    assert local_imports("source ./lib.sh\n. lib.sh\n", sh, "bash", root) == [lib]
    outside = _write(str(tmp_path), "secret.py")
    main = _write(root, "main.py")
    assert local_imports("from .. import secret\n", main, "python", root) == []
    assert os.path.exists(outside)
    assert local_imports("import x", main, None, root) == []
