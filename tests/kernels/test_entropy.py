"""entropy_from_logits / selective_log_softmax(_and_entropy): values and gradients vs the fp64 reference,
on the chunked torch path and on the Triton path (interpreter, fp32)."""

import math

import pytest
import torch

from weakstrong.kernels import (
    entropy_from_logits,
    entropy_from_logits_reference,
    selective_log_softmax,
    selective_log_softmax_and_entropy,
    selective_log_softmax_and_entropy_reference,
    selective_log_softmax_reference,
)

CASES = ["normal", "flat", "spike", "neginf", "offset"]


def _close(actual, expected, atol, rtol=0.0):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def _check_fwd_bwd(x64, idx, temperature, dtype, atol_fwd, atol_grad):
    x = x64.to(dtype).requires_grad_()
    xr = x.detach().double().requires_grad_()
    lp, ent = selective_log_softmax_and_entropy(x, idx, temperature=temperature)
    rlp, rent = selective_log_softmax_and_entropy_reference(xr, idx, temperature)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    assert lp.shape == idx.shape and ent.shape == idx.shape
    _close(lp, rlp, atol_fwd, 1e-5)
    _close(ent, rent, atol_fwd, 1e-5)
    g = torch.Generator().manual_seed(7)
    g_lp = torch.randn(idx.shape, generator=g, dtype=torch.float64)
    g_ent = torch.randn(idx.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad((lp * g_lp.float()).sum() + (ent * g_ent.float()).sum(), x)
    (gr,) = torch.autograd.grad((rlp * g_lp).sum() + (rent * g_ent).sum(), xr)
    assert gx.dtype == dtype and torch.isfinite(gx).all()
    _close(gx, gr, atol_grad, 1e-4)
    # each output alone (the other gradient is None inside the Function)
    (gx_lp,) = torch.autograd.grad(selective_log_softmax_and_entropy(x, idx, temperature=temperature)[0].sum(), x)
    (gr_lp,) = torch.autograd.grad(selective_log_softmax_and_entropy_reference(xr, idx, temperature)[0].sum(), xr)
    _close(gx_lp, gr_lp, atol_grad, 1e-4)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("vocab", [41, 4099])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logp_entropy_fp32(backend, mk, case, vocab, temperature):
    x64 = mk.logits(case, (2, 3, vocab), seed=vocab)
    idx = mk.targets(x64)
    _check_fwd_bwd(x64, idx, temperature, torch.float32, atol_fwd=2e-5, atol_grad=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["normal", "spike", "neginf"])
def test_logp_entropy_low_precision_torch(torch_backend, mk, dtype, case):
    # inputs rounded to bf16/fp16 are the ground truth: compare with fp64 math on the rounded values
    x64 = mk.logits(case, (4, 4099), seed=3).to(dtype).double()
    idx = mk.targets(x64)
    _check_fwd_bwd(x64, idx, 1.3, dtype, atol_fwd=1e-4, atol_grad=2e-3 if dtype == torch.bfloat16 else 2e-4)


def test_fp32_accumulation_fp16_input(torch_backend):
    # 4099 nearly equal probabilities: an fp16 sum would be off by ~1e-3 relative; fp32 is ~1e-7.
    x = (torch.randn(3, 4099, dtype=torch.float64) * 1e-2).half()
    ent = entropy_from_logits(x.float())
    ref = entropy_from_logits_reference(x.double())
    _close(ent, ref, 1e-5)
    lp, h = selective_log_softmax_and_entropy(x, torch.zeros(3, dtype=torch.long))
    _close(h, ref, 1e-5)


@pytest.mark.parametrize("vocab", [41, 4099])
def test_flat_logits_entropy_is_log_v(backend, vocab):
    x = torch.randn(5, vocab, dtype=torch.float64) * 1e-4
    ent = entropy_from_logits(x.float())
    assert torch.allclose(ent.double(), torch.full((5,), math.log(vocab), dtype=torch.float64), atol=1e-5)


def test_entropy_from_logits_dtype_shape_and_grad(backend, mk):
    x64 = mk.logits("normal", (2, 3, 4099), seed=11)
    x = x64.float().requires_grad_()
    ent = entropy_from_logits(x)
    assert ent.shape == (2, 3) and ent.dtype == torch.float32
    _close(ent, entropy_from_logits_reference(x64), 2e-5, 1e-5)
    (gx,) = torch.autograd.grad(ent.sum(), x)
    xr = x64.clone().requires_grad_()
    (gr,) = torch.autograd.grad(entropy_from_logits_reference(xr).sum(), xr)
    _close(gx, gr, 2e-6, 1e-4)
    with torch.no_grad():
        _close(entropy_from_logits(x, chunk_size=1), ent.detach(), 2e-5, 1e-6)


def test_entropy_from_logits_returns_input_dtype(torch_backend):
    x = torch.randn(4, 97, dtype=torch.bfloat16)
    assert entropy_from_logits(x).dtype == torch.bfloat16
    x = torch.randn(4, 97, dtype=torch.float64)
    assert entropy_from_logits(x).dtype == torch.float64
    _close(entropy_from_logits(x), entropy_from_logits_reference(x), 1e-12)


def test_selective_log_softmax(backend, mk):
    x64 = mk.logits("spike", (3, 4, 4099), seed=5)
    idx = mk.targets(x64)
    x = x64.float().requires_grad_()
    out = selective_log_softmax(x, idx, temperature=0.8)
    assert out.dtype == torch.float32 and out.shape == idx.shape
    _close(out, selective_log_softmax_reference(x64, idx, 0.8), 2e-5, 1e-5)
    (gx,) = torch.autograd.grad(out.sum(), x)
    xr = x64.clone().requires_grad_()
    (gr,) = torch.autograd.grad(selective_log_softmax_reference(xr, idx, 0.8).sum(), xr)
    _close(gx, gr, 2e-6, 1e-4)


def test_selective_log_softmax_topk_index_and_row_mask(torch_backend):
    x = torch.randn(2, 3, 50, dtype=torch.float64)
    idx = torch.randint(0, 50, (2, 3, 4))
    _close(selective_log_softmax(x, idx), selective_log_softmax_reference(x, idx), 1e-12)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])
    lp, h = selective_log_softmax_and_entropy(x.float(), idx[..., 0], row_mask=mask)
    assert (lp[mask == 0] == 0).all() and (h[mask == 0] == 0).all()


def test_temperature_must_be_positive():
    with pytest.raises(ValueError):
        selective_log_softmax_and_entropy(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)


def test_empty_rows(backend):
    x = torch.randn(0, 41, requires_grad=True)
    lp, h = selective_log_softmax_and_entropy(x, torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,) and h.shape == (0,)


@pytest.mark.parametrize("temperature", [3e-9, 1e-9, 1e-12, 1e-25])
def test_tiny_temperatures(backend, mk, temperature):
    """Defect 5: below T ~ 3e-9 the Triton forward gave NaN (running max started at -1e30, (-inf) * 0).  Both
    paths against float64: log-probs of order -1/T (relative tolerance), entropy ~0, gradients of order 1/T."""
    x64 = mk.logits("spike", (2, 3, 1029), seed=4)
    x64[..., 5] = float("-inf")
    idx = mk.targets(x64)
    idx[0, 0] = int(x64[0, 0].argmax())  # a target at the max (log-prob 0) beside ones far below it
    x = x64.float().requires_grad_()
    xr = x.detach().double().requires_grad_()
    lp, ent = selective_log_softmax_and_entropy(x, idx, temperature=temperature)
    rlp, rent = selective_log_softmax_and_entropy_reference(xr, idx, temperature)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    _close(lp, rlp, 1e-6, 1e-5)
    _close(ent, rent, 1e-6)
    (gx,) = torch.autograd.grad(lp.sum() + ent.sum(), x)
    (gr,) = torch.autograd.grad(rlp.sum() + rent.sum(), xr)
    assert torch.isfinite(gx).all()
    _close(gx, gr, 1e-6 / temperature, 1e-5)
