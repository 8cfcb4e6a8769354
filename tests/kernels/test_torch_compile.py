"""The public ops under torch.compile (CPU: backends "eager" / "aot_eager"; inductor needs a C++ toolchain and
adds nothing about our ops, which are opaque to it)."""

import pytest
import torch

from weakstrong.kernels import mixed_cross_entropy


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("flags", [{}, {"return_entropies": True}, {"return_stats": True}])
def test_mixed_ce_compiles_without_entropies(torch_backend, compile_backend, flags):
    """Defect 1: return_entropies=False returned one empty tensor twice from the autograd.Function, which
    crashed AOT autograd ('Placeholder node not found in env')."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 41, generator=g, requires_grad=True)
    b = torch.randn(2, 3, 41, generator=g, requires_grad=True)
    y = torch.randint(0, 41, (2, 3), generator=g)

    def f(a, b, y):
        out = mixed_cross_entropy(a, b, y, lam=0.5, **flags)
        return out if not flags else out[0]

    loss = torch.compile(f, backend=compile_backend)(a, b, y)
    ga, gb = torch.autograd.grad(loss, (a, b))
    eager = f(a, b, y)
    ea, eb = torch.autograd.grad(eager, (a, b))
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(ga, ea)
    torch.testing.assert_close(gb, eb)
