"""Triton kernels and their torch fallbacks; installed as ``weakstrong.kernels``."""

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
