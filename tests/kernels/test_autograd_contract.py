"""The autograd contract of every public op, on both paths: outputs may be edited in place before the backward
(nothing returned is saved for the backward), and the custom ops pass ``torch.library.opcheck`` with
transposed, shifted and vocab-padded inputs (the gradients' layout matches the fake implementations)."""

import pytest
import torch

from weakstrong.kernels import (
    entropy_from_logits,
    entropy_from_logits_reference,
    linear_mixed_cross_entropy,
    linear_mixed_cross_entropy_reference,
    linear_selective_log_softmax_and_entropy,
    linear_selective_log_softmax_and_entropy_reference,
    mixed_cross_entropy,
    mixed_cross_entropy_reference,
    selective_log_softmax,
    selective_log_softmax_and_entropy,
    selective_log_softmax_and_entropy_reference,
    selective_log_softmax_reference,
)

V, H = 37, 8


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, V, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, V, generator=g, dtype=torch.float64)
    idx = torch.randint(0, V, (2, 5), generator=g)
    hs = torch.randn(2, 5, H, generator=g, dtype=torch.float64)
    hw = torch.randn(2, 5, H + 3, generator=g, dtype=torch.float64)
    ws = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    ww = torch.randn(V, H + 3, generator=g, dtype=torch.float64) * 0.5
    mask = torch.rand(2, 5, generator=g) > 0.3
    return x, y, idx, hs, hw, ws, ww, mask


def _ops():
    """name -> (fn(inputs, idx, mask) -> tuple of outputs, reference(inputs, idx, mask), number of inputs)."""
    labels = lambda idx, mask: torch.where(mask, idx, torch.full_like(idx, -100))  # noqa: E731
    return {
        "selective_log_softmax_and_entropy": (
            lambda t, idx, m: selective_log_softmax_and_entropy(t[0], idx, 0.8),
            lambda t, idx, m: selective_log_softmax_and_entropy_reference(t[0], idx, 0.8),
            "x",
        ),
        "entropy_from_logits": (
            lambda t, idx, m: (entropy_from_logits(t[0]),),
            lambda t, idx, m: (entropy_from_logits_reference(t[0]),),
            "x",
        ),
        "selective_log_softmax": (
            lambda t, idx, m: (selective_log_softmax(t[0], idx, 0.8),),
            lambda t, idx, m: (selective_log_softmax_reference(t[0], idx, 0.8),),
            "x",
        ),
        "mixed_cross_entropy": (
            lambda t, idx, m: (mixed_cross_entropy(t[0], t[1], labels(idx, m), lam=0.3, reduction="none"),),
            lambda t, idx, m: (mixed_cross_entropy_reference(t[0], t[1], labels(idx, m), lam=0.3, reduction="none"),),
            "xy",
        ),
        "linear_selective_log_softmax_and_entropy": (
            lambda t, idx, m: linear_selective_log_softmax_and_entropy(t[0], t[1], idx, temperature=0.8, chunk_size=3),
            lambda t, idx, m: linear_selective_log_softmax_and_entropy_reference(t[0], t[1], idx, temperature=0.8),
            "hs ws",
        ),
        "linear_mixed_cross_entropy": (
            lambda t, idx, m: (
                linear_mixed_cross_entropy(*t, labels(idx, m), lam=0.3, reduction="none", chunk_size=3),
            ),
            lambda t, idx, m: (linear_mixed_cross_entropy_reference(*t, labels(idx, m), lam=0.3, reduction="none"),),
            "hs ws hw ww",
        ),
    }


def _inputs(kind, data):
    x, y, idx, hs, hw, ws, ww, mask = data
    table = {"x": x, "y": y, "hs": hs, "ws": ws, "hw": hw, "ww": ww}
    return [table[k] for k in (kind.split() if " " in kind else list(kind))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(_ops()))
def test_inplace_edit_of_every_output_before_backward(backend, name, dtype):
    """Defect 1: ``lp, ent = op(...); ent[~mask] = nan; (lp * mask).sum().backward()`` raised "modified by an
    inplace operation" (the entropy output was the tensor saved for the backward).  Every output of every op
    is edited in place (NaN at masked rows, then doubled) and the backward through the other outputs -- and
    through the edited output itself -- must give the reference gradient."""
    if dtype == torch.bfloat16 and backend == "triton" and name.startswith("linear"):
        pytest.skip("bf16 matmuls feed the interpreter's bf16 loads; covered at fp32 there")
    fn, ref, kind = _ops()[name]
    data = _data()
    idx, mask = data[2], data[7]
    base = _inputs(kind, data)
    n_out = len(fn([t.to(dtype) for t in base], idx, mask))
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(idx.shape, generator=g, dtype=torch.float64) for _ in range(n_out)]
    for edited in range(n_out):
        ins = [t.to(dtype).requires_grad_() for t in base]
        outs = list(fn(ins, idx, mask))
        outs[edited][~mask] = float("nan")  # TRL's kernel test: NaN where masked, in place
        outs[edited].mul_(2.0)
        loss = sum((o * w.to(o.dtype) * mask).nansum() if j == edited else (o * w.to(o.dtype)).sum()
                   for j, (o, w) in enumerate(zip(outs, weights)))
        grads = torch.autograd.grad(loss, ins)
        refs = [t.to(dtype).double().requires_grad_() for t in base]
        routs = list(ref(refs, idx, mask))
        rloss = sum((o * w * (2.0 * mask if j == edited else 1.0)).sum() for j, (o, w) in enumerate(zip(routs, weights)))
        rgrads = torch.autograd.grad(rloss, refs)
        tol = 2e-5 if dtype == torch.float32 else 5e-2
        for got, exp in zip(grads, rgrads):
            assert torch.isfinite(got).all(), (name, edited)
            torch.testing.assert_close(got.double(), exp, atol=tol, rtol=tol)
