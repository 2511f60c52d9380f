"""`python -m lsp_server` is the same as the `infill-ls` command."""

from lsp_server.cli import main

raise SystemExit(main())
