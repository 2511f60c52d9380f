#!/usr/bin/env python3
"""Build a FIM training set from a source tree with the server's own prompts (docs/CUSTOMIZE.md).

    .venv/bin/python scripts/build_fim_dataset.py ~/src/our-repo --out data/fim --tokenizer default

The work is done by lsp_server/tools/fim_dataset.py (also `python -m lsp_server.tools.fim_dataset`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsp_server.tools.fim_dataset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
