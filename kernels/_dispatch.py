"""Backend selection shared by every kernel family.

Rules (read at call time, so tests can flip them with ``monkeypatch.setenv``):

* ``WEAKSTRONG_KERNELS=torch``  -> always the chunked torch implementation.
* ``WEAKSTRONG_KERNELS=triton`` -> always Triton.  Needs CUDA tensors, or CPU tensors with
  ``TRITON_INTERPRET=1`` (set before ``weakstrong.kernels`` is imported; the interpreter is only for
  tests, it is very slow).
* unset / ``auto``              -> Triton for CUDA tensors when Triton imports, torch otherwise.

float64 inputs always take the torch path (the Triton kernels accumulate in float32).
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: the torch path must work without it.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "backend_for", "interpreting", "next_power_of_2"]

_VALID = ("", "auto", "torch", "triton")


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def _requested() -> str:
    value = os.environ.get("WEAKSTRONG_KERNELS", "").strip().lower()
    if value not in _VALID:
        raise ValueError(f"WEAKSTRONG_KERNELS must be one of 'triton', 'torch' or unset, got {value!r}")
    return value


def backend_for(*tensors: torch.Tensor | None) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op over ``tensors`` (``None`` entries ignored)."""
    ts = [t for t in tensors if t is not None]
    requested = _requested()
    if requested == "torch":
        return "torch"
    if any(t.dtype == torch.float64 for t in ts if t.is_floating_point()):
        return "torch"
    on_cuda = bool(ts) and all(t.is_cuda for t in ts)
    if requested == "triton":
        if not HAS_TRITON:
            raise RuntimeError("WEAKSTRONG_KERNELS=triton but triton cannot be imported")
        if on_cuda or interpreting():
            return "triton"
        raise RuntimeError(
            "WEAKSTRONG_KERNELS=triton needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "weakstrong.kernels is imported (CPU interpreter, for tests)"
        )
    return "triton" if (HAS_TRITON and on_cuda) else "torch"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
