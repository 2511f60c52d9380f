"""Protocol features beyond completion, one module per LSP area.

Each module in this package exposes `register(server)`, which adds its handlers with
`@server.feature(...)`; `register_all` imports them all, so a new feature is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def register_all(server: Any) -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}").register(server)
