"""WMSS — Weak-Driven Learning (Chen et al., arXiv 2602.08222): a weak earlier checkpoint makes the strong model
stronger. Phase 1 SFT (M0 → M1), phase 2 entropy-based data selection, phase 3 joint training on the mixed logits
``λ·z_strong + (1-λ)·z_weak``; the strong model is kept.

Heavy imports (TRL, transformers) happen on first use of ``WMSSConfig``/``WMSSTrainer``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "WMSSConfig": "weakstrong.wmss.config",
    "WMSSTrainer": "weakstrong.wmss.trainer",
    "JointModel": "weakstrong.wmss.joint",
    "mixed_loss": "weakstrong.wmss.joint",
    "example_entropies": "weakstrong.wmss.selection",
    "sampling_weights": "weakstrong.wmss.selection",
    "resample": "weakstrong.wmss.selection",
    "selection_stats": "weakstrong.wmss.selection",
    "write_entropies": "weakstrong.wmss.plots",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'weakstrong.wmss' has no attribute {name!r}")


def __dir__():
    return __all__
