"""Lazy package exports: names resolved from their modules on first attribute access (PEP 562)."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, names: dict[str, str], extra: tuple[str, ...] = ()):
    """``(__all__, __getattr__, __dir__)`` for a package whose ``names`` map to the modules defining them."""
    public = sorted(names) + list(extra)

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return public

    return public, __getattr__, __dir__
