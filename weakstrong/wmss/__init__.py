"""WMSS — Weak-Driven Learning (Chen et al., arXiv 2602.08222): a weak earlier checkpoint makes the strong model
stronger. Phase 1 SFT (M0 → M1), phase 2 entropy-based data selection, phase 3 joint training on the mixed logits
``λ·z_strong + (1-λ)·z_weak``; the strong model is kept.

* :class:`WMSSTrainer` / :class:`WMSSConfig` — one round (phases 2 + 3) as one TRL Trainer run, after your SFT.
* :func:`run_wmss` — the whole method, M0 → SFT → K rounds, as a resumable chain of ``SFTTrainer`` and
  ``WMSSTrainer`` runs.

Heavy imports (TRL, transformers) happen on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "WMSSConfig": "weakstrong.wmss.config",
    "WMSSTrainer": "weakstrong.wmss.trainer",
    "run_wmss": "weakstrong.wmss.pipeline",
    "WMSSResult": "weakstrong.wmss.pipeline",
    "JointModel": "weakstrong.wmss.joint",
    "mixed_loss": "weakstrong.wmss.joint",
    "example_entropies": "weakstrong.wmss.selection",
    "sampling_weights": "weakstrong.wmss.selection",
    "resample": "weakstrong.wmss.selection",
    "selection_stats": "weakstrong.wmss.selection",
    "write_entropies": "weakstrong.wmss.plots",
}

__all__, __getattr__, __dir__ = lazy_exports("weakstrong.wmss", _LAZY)
