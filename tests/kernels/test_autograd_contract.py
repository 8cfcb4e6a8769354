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


# ----------------------------------------------------------------------------------------------------------
# torch.library.opcheck on every custom op (defect 2: the backward allocated gradients with the input's
# strides while the fake implementation declared them contiguous; inductor then crashed on transposed hidden
# states)
# ----------------------------------------------------------------------------------------------------------
N = 6


def _layouts(rows, cols, seed):
    """The same values as a transposed view, a shifted view (``x[1:]``) and a padded-last-dim view."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=g)
    transposed = base.T.contiguous().T  # strides (1, rows)
    shifted = torch.cat([torch.randn(1, cols, generator=g), base])[1:]  # storage offset, like x[:, 1:]
    padded = torch.cat([base, torch.randn(rows, 5, generator=g)], 1)[:, :cols]  # like padded[..., :V]
    out = {"transposed": transposed, "shifted": shifted, "padded": padded}
    assert all(torch.equal(t, base) for t in out.values())
    assert not out["transposed"].is_contiguous() and not out["padded"].is_contiguous()
    return out


LAYOUTS = ["transposed", "shifted", "padded"]
#: transform argument of the hidden-state ops: [logit_scale, final_logit_softcapping (0: none), 1 / temperature];
#: with V = 37 and a vocabulary tile of 16 the ops run three tiles (the last one partial)
TF = [0.7, 5.0, 1.25]


def _opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_lse_entropy(backend, layout):
    x = _layouts(N, V, 0)[layout]
    idx = torch.randint(0, V, (N,))
    mask = (torch.arange(N) % 3 != 0).to(torch.uint8)
    xg = x.detach().requires_grad_()
    _opcheck(torch.ops.weakstrong.lse_entropy.default, (xg, idx, None, 1.25, 0, backend))
    _opcheck(torch.ops.weakstrong.lse_entropy.default, (xg, idx, mask, 0.8, 0, backend))
    _opcheck(torch.ops.weakstrong.lse_entropy.default, (xg, None, None, 1.0, 2, backend))
    _, _, stats = torch.ops.weakstrong.lse_entropy(x, idx, None, 1.25, 0, backend)
    g = torch.randn(N)
    _opcheck(torch.ops.weakstrong.lse_entropy_backward.default, (x, idx, None, stats, g, g * 0.5, 1.25, backend))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_mixed_ce(backend, layout):
    a = _layouts(N, V, 1)[layout]
    b = _layouts(N, V, 2)[layout]
    labels = torch.randint(0, V, (N,))
    labels[2] = -100
    for want in (False, True):
        args = (a.detach().requires_grad_(), b.detach().requires_grad_(), labels, 0.3, -100, want, backend)
        _opcheck(torch.ops.weakstrong.mixed_ce.default, args)
    _, stats, _ = torch.ops.weakstrong.mixed_ce(a, b, labels, 0.3, -100, False, backend)
    g = torch.randn(N)
    _opcheck(torch.ops.weakstrong.mixed_ce_backward.default, (a, b, labels, stats, g, 0.3, -100, True, True, backend))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_linear_lse_entropy(backend, layout):
    hidden = _layouts(N, H, 3)[layout]
    weight = _layouts(V, H, 4)[layout] * 0.5
    bias = torch.randn(V)
    idx = torch.randint(0, V, (N,))
    hg, wg, bg = hidden.detach().requires_grad_(), weight.detach().requires_grad_(), bias.requires_grad_()
    for b in (None, bg):
        _opcheck(torch.ops.weakstrong.linear_lse_entropy.default, (hg, wg, b, idx, TF, 4, 16, torch.float32, torch.float32, backend))
    _, _, stats = torch.ops.weakstrong.linear_lse_entropy(
        hidden, weight, None, idx, TF, 4, 16, torch.float32, torch.float32, backend
    )
    g = torch.randn(N)
    args = (hidden, weight, None, idx, stats, g, g * 0.5, TF, 4, 16, torch.float32, torch.float32, True, True, False, backend)
    _opcheck(torch.ops.weakstrong.linear_lse_entropy_backward.default, args)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_linear_mixed_ce(backend, layout):
    sh, wh = _layouts(N, H, 5)[layout], _layouts(N, H + 3, 6)[layout]
    sw, ww = _layouts(V, H, 7)[layout] * 0.5, _layouts(V, H + 3, 8)[layout] * 0.5
    labels = torch.randint(0, V, (N,))
    labels[1] = -100
    ins = [t.detach().requires_grad_() for t in (sh, sw, wh, ww)]
    sb, wb = torch.randn(V).requires_grad_(), torch.randn(V).requires_grad_()
    ins = [ins[0], ins[1], sb, ins[2], ins[3], wb]
    f32 = torch.float32
    for want in (False, True):
        _opcheck(torch.ops.weakstrong.linear_mixed_ce.default, (*ins, labels, 0.3, -100, want, TF, 4, 16, f32, f32, f32, backend))
    _, stats, _ = torch.ops.weakstrong.linear_mixed_ce(
        sh, sw, None, wh, ww, None, labels, 0.3, -100, False, TF, 4, 16, f32, f32, f32, backend
    )
    g = torch.randn(N)
    args = (sh, sw, None, wh, ww, None, labels, stats, g, 0.3, -100, TF, 4, 16, f32, f32, f32, [True] * 6, backend)
    _opcheck(torch.ops.weakstrong.linear_mixed_ce_backward.default, args)


def test_compiled_transposed_hidden_states(torch_backend):
    """The user-level symptom of defect 2: compiled forward + backward with transposed hidden states (a
    ``[T, B, H]`` activation seen as ``[B, T, H]``) matches eager, gradient strides included in the graph."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 2, H, generator=g).transpose(0, 1).requires_grad_()  # [2, 5, H], not contiguous
    weight = torch.randn(V, H, generator=g).requires_grad_()
    idx = torch.randint(0, V, (2, 5), generator=g)

    def f(hd, w):
        lp, ent = linear_selective_log_softmax_and_entropy(hd, w, idx, chunk_size=4)
        loss = linear_mixed_cross_entropy(hd, w, hd, w, idx, lam=0.3, chunk_size=4)
        return lp.sum() + ent.sum() + loss

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(hidden, weight)
    grads = torch.autograd.grad(out, (hidden, weight))
    eager = f(hidden, weight)
    egrads = torch.autograd.grad(eager, (hidden, weight))
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, egrads):
        torch.testing.assert_close(a, b)
