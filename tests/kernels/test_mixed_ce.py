"""mixed_cross_entropy: values, entropies and gradients vs the fp64 reference, on both paths."""

import pytest
import torch
import torch.nn.functional as F

from weakstrong.kernels import MixedCEStats, mixed_cross_entropy, mixed_cross_entropy_reference


def _close(actual, expected, atol, rtol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def _inputs(mk, case, shape, dtype=torch.float32, ignore_frac=0.25):
    a64 = mk.logits(case, shape, seed=shape[-1])
    b64 = mk.logits("normal" if case == "spike" else case, shape, seed=shape[-1] + 1)
    labels = mk.targets(a64)
    g = torch.Generator().manual_seed(3)
    ign = torch.rand(labels.shape, generator=g) < ignore_frac
    labels = torch.where(ign, torch.full_like(labels, -100), labels)
    return a64.to(dtype), b64.to(dtype), labels


def _check(a, b, labels, lam, reduction, atol, atol_grad, return_entropies=True):
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    ar = a.detach().double().requires_grad_()
    br = b.detach().double().requires_grad_()
    out = mixed_cross_entropy(a, b, labels, lam=lam, reduction=reduction, return_entropies=return_entropies)
    ref = mixed_cross_entropy_reference(ar, br, labels, lam=lam, reduction=reduction, return_entropies=True)
    loss = out[0] if return_entropies else out
    assert loss.dtype == torch.float32
    _close(loss, ref[0], atol)
    if return_entropies:
        assert out[1].shape == labels.shape and out[2].shape == labels.shape
        assert not out[1].requires_grad and not out[2].requires_grad
        _close(out[1], ref[1], atol)
        _close(out[2], ref[2], atol)
    g = torch.randn(loss.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ga, gb = torch.autograd.grad((loss * g.float()).sum(), (a, b))
    ra, rb = torch.autograd.grad((ref[0] * g).sum(), (ar, br))
    assert ga.shape == a.shape and gb.shape == b.shape and ga.dtype == a.dtype and gb.dtype == b.dtype
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    _close(ga, ra, atol_grad, 1e-4)
    _close(gb, rb, atol_grad, 1e-4)
    ignored = labels == -100
    assert (ga[ignored] == 0).all() and (gb[ignored] == 0).all()


@pytest.mark.parametrize("lam", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("vocab", [41, 4099])
@pytest.mark.parametrize("case", ["normal", "flat", "spike", "neginf"])
def test_mixed_ce_fp32(backend, mk, lam, vocab, case):
    a, b, labels = _inputs(mk, case, (2, 4, vocab))
    _check(a, b, labels, lam, "mean", atol=2e-5, atol_grad=2e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(backend, mk, reduction):
    a, b, labels = _inputs(mk, "normal", (3, 5, 97))
    _check(a, b, labels, 0.3, reduction, atol=2e-5, atol_grad=2e-6, return_entropies=False)
    out = mixed_cross_entropy(a, b, labels, lam=0.3, reduction=reduction)
    assert out.shape == (labels.shape if reduction == "none" else ())
    if reduction == "none":
        assert (out[labels == -100] == 0).all()


@pytest.mark.parametrize("vocab", [41, 4099])
def test_lambda_one_is_cross_entropy(backend, mk, vocab):
    a, b, labels = _inputs(mk, "normal", (6, vocab))
    a = a.requires_grad_()
    b = b.requires_grad_()
    loss = mixed_cross_entropy(a, b, labels, lam=1.0)
    a2 = a.detach().clone().requires_grad_()
    expected = F.cross_entropy(a2, labels, ignore_index=-100)
    _close(loss, expected, 1e-5)
    ga, gb = torch.autograd.grad(loss, (a, b))
    (ea,) = torch.autograd.grad(expected, a2)
    _close(ga, ea, 1e-6)
    assert gb.shape == b.shape and (gb == 0).all()


def test_lambda_one_weak_neginf_is_ignored(backend, mk):
    # 0 * (-inf) in (1 - lam) * weak must not poison the loss when lam = 1
    a, b, labels = _inputs(mk, "normal", (4, 41), ignore_frac=0.0)
    b[:, 3] = float("-inf")
    a = a.requires_grad_()
    b = b.requires_grad_()
    loss = mixed_cross_entropy(a, b, labels, lam=1.0)
    _close(loss, F.cross_entropy(a.detach(), labels), 1e-5)
    ga, gb = torch.autograd.grad(loss, (a, b))
    assert torch.isfinite(ga).all() and (gb == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(backend, reduction):
    a = torch.randn(3, 4099, requires_grad=True)
    b = torch.randn(3, 4099, requires_grad=True)
    labels = torch.full((3,), -100)
    loss, ha, hb = mixed_cross_entropy(a, b, labels, lam=0.5, reduction=reduction, return_entropies=True)
    assert torch.isfinite(loss).all() and (loss == 0).all()
    assert (ha == 0).all() and (hb == 0).all()
    ga, gb = torch.autograd.grad(loss.sum(), (a, b))
    assert (ga == 0).all() and (gb == 0).all()


def test_custom_ignore_index(backend, mk):
    a, b, labels = _inputs(mk, "normal", (8, 41), ignore_frac=0.0)
    labels[::2] = 7  # class 7 used as the ignore index
    out = mixed_cross_entropy(a, b, labels, lam=0.5, ignore_index=7, reduction="none")
    ref = mixed_cross_entropy_reference(a, b, labels, lam=0.5, ignore_index=7, reduction="none")
    _close(out, ref, 2e-5)
    assert (out[::2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lam", [0.05, 0.5, 1.0])
def test_low_precision_torch(torch_backend, mk, dtype, lam):
    a, b, labels = _inputs(mk, "spike", (2, 3, 4099), dtype=dtype)
    _check(a, b, labels, lam, "mean", atol=1e-4, atol_grad=2e-3 if dtype == torch.bfloat16 else 2e-4)


def test_mixed_dtypes_torch(torch_backend, mk):
    a, b, labels = _inputs(mk, "normal", (5, 300))
    _check(a.bfloat16(), b, labels, 0.5, "sum", atol=1e-4, atol_grad=2e-3)


def test_bad_arguments():
    a = torch.randn(2, 5)
    with pytest.raises(ValueError):
        mixed_cross_entropy(a, a, torch.zeros(2, dtype=torch.long), lam=1.5)
    with pytest.raises(ValueError):
        mixed_cross_entropy(a, a, torch.zeros(2, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError):
        mixed_cross_entropy(a, torch.randn(2, 6), torch.zeros(2, dtype=torch.long))


def _manual_stats(a64, b64, labels, ignore_index=-100):
    """The four statistics written out from their definitions (independent of the fp64 reference code)."""
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    out = []
    for x in (a64, b64):
        p = torch.softmax(x, -1)
        out.append(torch.where(valid, -(torch.special.xlogy(p, p)).sum(-1), 0.0))
    for x in (a64, b64):
        nll = torch.logsumexp(x, -1) - x.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        out.append(torch.where(valid, nll, 0.0))
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("case", ["normal", "spike", "neginf"])
def test_return_stats(backend, mk, lam, case):
    """return_stats: strong/weak entropy and NLL vs the fp64 reference and the plain definitions; loss and
    gradients equal those without stats; 0 at ignored tokens; detached; NamedTuple fields."""
    a, b, labels = _inputs(mk, case, (2, 3, 4099))
    a = a.requires_grad_()
    b = b.requires_grad_()
    loss, st = mixed_cross_entropy(a, b, labels, lam=lam, reduction="none", return_stats=True)
    assert isinstance(st, MixedCEStats) and st._fields == ("strong_entropy", "weak_entropy", "strong_nll", "weak_nll")
    rloss, rst = mixed_cross_entropy_reference(a, b, labels, lam=lam, reduction="none", return_stats=True)
    manual = _manual_stats(a.detach().double(), b.detach().double(), labels)
    _close(loss, rloss, 2e-5)
    ignored = labels == -100
    for got, ref, man in zip(st, rst, manual):
        assert got.shape == labels.shape and got.dtype == torch.float32 and not got.requires_grad
        _close(got, ref, 3e-5)
        _close(ref, man, 1e-9)
        assert (got[ignored] == 0).all()
    plain = mixed_cross_entropy(a, b, labels, lam=lam, reduction="none")
    torch.testing.assert_close(plain, loss, atol=1e-6, rtol=1e-6)  # stats change only the summation order
    g1 = torch.autograd.grad(loss.sum(), (a, b))
    g2 = torch.autograd.grad(plain.sum(), (a, b))
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, atol=1e-7, rtol=1e-5)
    if lam == 1.0:  # the strong NLL of lam = 1 is the loss itself
        _close(st.strong_nll, loss, 1e-5)


def test_return_stats_entropies_agree(backend, mk):
    a, b, labels = _inputs(mk, "normal", (5, 97))
    _, ha, hb = mixed_cross_entropy(a, b, labels, lam=0.4, return_entropies=True)
    _, st = mixed_cross_entropy(a, b, labels, lam=0.4, return_stats=True)
    torch.testing.assert_close(ha, st.strong_entropy, atol=0, rtol=0)
    torch.testing.assert_close(hb, st.weak_entropy, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        mixed_cross_entropy(a, b, labels, return_entropies=True, return_stats=True)


def test_return_stats_float64_and_low_precision(torch_backend, mk):
    a, b, labels = _inputs(mk, "spike", (3, 300), dtype=torch.float64)
    _, st = mixed_cross_entropy(a, b, labels, lam=0.5, return_stats=True)
    _, rst = mixed_cross_entropy_reference(a, b, labels, lam=0.5, return_stats=True)
    for got, ref in zip(st, rst):
        assert got.dtype == torch.float64
        _close(got, ref, 1e-10)
    _, st16 = mixed_cross_entropy(a.bfloat16(), b.float(), labels, lam=0.5, return_stats=True)
    _, r16 = mixed_cross_entropy_reference(a.bfloat16(), b.float(), labels, lam=0.5, return_stats=True)
    for got, ref in zip(st16, r16):
        assert got.dtype == torch.float32
        _close(got, ref, 1e-4)
