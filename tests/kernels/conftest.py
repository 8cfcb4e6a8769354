"""Kernel tests: the Triton path runs through the CPU interpreter, on CPU tensors.

TRITON_INTERPRET must be set before ``weakstrong.kernels`` (and so the ``@triton.jit`` kernels) is imported.
``WEAKSTRONG_CUDA_TESTS=1`` (benchmarks/gpu_check.py) leaves it unset so that test_cuda.py runs compiled
kernels on a GPU.
"""

import os

if os.environ.get("WEAKSTRONG_CUDA_TESTS") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def _triton_interpreted() -> bool:
    try:
        from weakstrong.kernels import entropy
    except Exception:  # pragma: no cover
        return False
    if not getattr(entropy, "HAS_TRITON", False):
        return False
    return type(entropy._lse_entropy_fwd_kernel).__name__ == "InterpretedFunction"


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run a test once on the chunked torch path and once on the Triton path (interpreter)."""
    if request.param == "triton" and not _triton_interpreted():
        pytest.skip("Triton kernels were imported without TRITON_INTERPRET=1 (or triton is missing)")
    monkeypatch.setenv("WEAKSTRONG_KERNELS", request.param)
    return request.param


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("WEAKSTRONG_KERNELS", "torch")
    return "torch"


def make_logits(case: str, shape, seed: int = 0, dtype=torch.float32):
    """Adversarial logits in float64 (cast by the caller): normal, flat, spike (+50), neginf columns."""
    g = torch.Generator().manual_seed(seed)
    v = shape[-1]
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2.0
    if case == "flat":
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * 1e-3
    elif case == "spike":
        pos = torch.randint(0, v, shape[:-1], generator=g)
        x.scatter_add_(-1, pos.unsqueeze(-1), torch.full(pos.unsqueeze(-1).shape, 50.0, dtype=torch.float64))
    elif case == "neginf":
        cols = torch.randperm(v, generator=g)[: max(1, v // 3)]
        cols = cols[cols != 0]  # column 0 stays finite (tests pick targets there)
        x[..., cols] = float("-inf")
    elif case == "offset":
        x = x + 1000.0  # large common offset: only a max-subtracting fp32 pass survives it
    return x.to(dtype)


def finite_targets(logits, seed: int = 1):
    """Random targets that avoid -inf columns (column 0 is always finite in make_logits)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=g)
    bad = torch.isinf(logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1))
    return torch.where(bad, torch.zeros_like(idx), idx)


@pytest.fixture
def mk():
    """Helpers for test modules (importlib mode cannot import this conftest by name)."""

    class _Helpers:
        logits = staticmethod(make_logits)
        targets = staticmethod(finite_targets)

    return _Helpers
