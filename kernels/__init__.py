"""Triton kernels and their torch fallbacks; installed as ``weakstrong.kernels``.

Public ops are also registered as ``torch.library`` custom ops (``torch.ops.weakstrong.*``) with fake
implementations, so ``torch.compile(fullgraph=True)`` traces them as single nodes.
"""

import sys as _sys

if __name__ != "weakstrong.kernels":  # pragma: no cover - depends on sys.path
    # With the repository root on sys.path (``python -m pytest``) this folder is also importable as a top-level
    # ``kernels``, and transformers imports that name while probing for Hugging Face's ``kernels`` package.  A
    # second copy would register the ``weakstrong::`` custom ops again with its own module globals: alias the
    # one real package instead.
    import importlib as _importlib

    _sys.modules[__name__] = _importlib.import_module("weakstrong.kernels")
else:
    from .entropy import (
        entropy_from_logits,
        entropy_from_logits_reference,
        selective_log_softmax,
        selective_log_softmax_and_entropy,
        selective_log_softmax_and_entropy_reference,
        selective_log_softmax_reference,
    )
    from .linear import (
        linear_mixed_cross_entropy,
        linear_mixed_cross_entropy_reference,
        linear_selective_log_softmax_and_entropy,
        linear_selective_log_softmax_and_entropy_reference,
    )
    from .mixed_ce import MixedCEStats, mixed_cross_entropy, mixed_cross_entropy_reference

    __all__ = [
        "MixedCEStats",
        "entropy_from_logits",
        "entropy_from_logits_reference",
        "linear_mixed_cross_entropy",
        "linear_mixed_cross_entropy_reference",
        "linear_selective_log_softmax_and_entropy",
        "linear_selective_log_softmax_and_entropy_reference",
        "mixed_cross_entropy",
        "mixed_cross_entropy_reference",
        "selective_log_softmax",
        "selective_log_softmax_and_entropy",
        "selective_log_softmax_and_entropy_reference",
        "selective_log_softmax_reference",
    ]
