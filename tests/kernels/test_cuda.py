"""Compiled kernels on a CUDA GPU against the fp64 reference (run by benchmarks/gpu_check.py with
WEAKSTRONG_CUDA_TESTS=1; skipped without CUDA).  bf16 and fp32, V = 151,936, strided and masked rows,
the cuda:1 case when a second GPU exists, torch.compile with inductor, TRL's Triton kernel side by side."""

import os

import pytest
import torch

from weakstrong.kernels import (
    entropy_from_logits,
    entropy_from_logits_reference,
    linear_mixed_cross_entropy,
    linear_mixed_cross_entropy_reference,
    mixed_cross_entropy,
    mixed_cross_entropy_reference,
    selective_log_softmax_and_entropy,
    selective_log_softmax_and_entropy_reference,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    reason="needs a CUDA GPU and compiled kernels (WEAKSTRONG_CUDA_TESTS=1, as benchmarks/gpu_check.py sets)",
)

V = 151_936
TOL = {torch.float32: (2e-4, 1e-4), torch.bfloat16: (2e-3, 2e-2)}  # (outputs atol, gradient rtol)


def _close(a, b, atol, rtol=1e-4):
    torch.testing.assert_close(a.double(), b.double().to(a.device), atol=atol, rtol=rtol)


def _inputs(dtype, device="cuda", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    base = torch.randn(2, 33, V, generator=g) * 2
    base[0, 3, V - 5] += 50.0  # spike in the tail block
    base[1, 7, 1000:1200] = float("-inf")
    x = base.to(device=device, dtype=dtype)[:, :-1]  # strided: [2, 32, V] view, no copy
    idx = torch.randint(0, V, (2, 32), generator=g).to(device)
    idx[0, 3] = V - 5
    return x, idx


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logp_entropy_cuda(dtype):
    atol, grtol = TOL[dtype]
    x, idx = _inputs(dtype)
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[1, ::3] = False
    idx = torch.where(mask, idx, torch.full_like(idx, -100))  # masked rows carry -100: never read
    x = x.detach().requires_grad_()
    lp, ent = selective_log_softmax_and_entropy(x, idx, 0.9, mask)
    ref_x = x.detach().double().requires_grad_()
    rlp, rent = selective_log_softmax_and_entropy_reference(ref_x, idx.clamp(min=0), 0.9)
    m = mask.to(rlp.dtype)
    _close(lp, rlp * m, atol)
    _close(ent, rent * m, atol)
    (gx,) = torch.autograd.grad(lp.sum() + ent.sum(), x)
    (rgx,) = torch.autograd.grad((rlp * m).sum() + (rent * m).sum(), ref_x)
    assert (gx[~mask] == 0).all()
    _close(gx, rgx, atol, grtol)
    h = entropy_from_logits(x.detach())
    _close(h.float(), entropy_from_logits_reference(x.detach()), 5e-2 if dtype == torch.bfloat16 else atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mixed_ce_cuda(dtype, lam):
    atol, grtol = TOL[dtype]
    a, y = _inputs(dtype, seed=1)
    b, _ = _inputs(dtype, seed=2)
    y[0, :4] = -100
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    loss, st = mixed_cross_entropy(a, b, y, lam=lam, reduction="none", return_stats=True)
    ar, br = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    rloss, rst = mixed_cross_entropy_reference(ar, br, y, lam, reduction="none", return_stats=True)
    _close(loss, rloss, atol)
    for got, exp in zip(st, rst):
        _close(got, exp, atol)
    ga, gb = torch.autograd.grad(loss.sum(), (a, b))
    ra, rb = torch.autograd.grad(rloss.sum(), (ar, br))
    _close(ga, ra, atol, grtol)
    _close(gb, rb, atol, grtol)


def test_linear_cuda_bf16():
    g = torch.Generator(device="cpu").manual_seed(3)
    h = torch.randn(300, 64, generator=g).cuda().bfloat16().requires_grad_()
    w = (torch.randn(V, 64, generator=g) * 0.125).cuda().bfloat16().requires_grad_()
    y = torch.randint(0, V, (300,), generator=g).cuda()
    loss, st = linear_mixed_cross_entropy(h, w, h, w, y, lam=0.5, return_stats=True, chunk_size=128)
    ref, rst = linear_mixed_cross_entropy_reference(h.detach(), w.detach(), h.detach(), w.detach(), y, 0.5, return_stats=True)
    _close(loss, ref, 2e-2, 1e-2)  # bf16 matmul rounding
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert torch.isfinite(gh).all() and torch.isfinite(gw).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device():
    """Tensors on cuda:1 while cuda:0 is current: the launch must run on cuda:1 (device guard)."""
    torch.cuda.set_device(0)
    x, idx = _inputs(torch.float32, device="cuda:1")
    lp, ent = selective_log_softmax_and_entropy(x, idx)
    rlp, rent = selective_log_softmax_and_entropy_reference(x.cpu(), idx.cpu())
    assert lp.device == torch.device("cuda", 1) and torch.cuda.current_device() == 0
    _close(lp.cpu(), rlp, 2e-4)
    _close(ent.cpu(), rent, 2e-4)
    loss = mixed_cross_entropy(x, x.flip(-1), idx, lam=0.5)
    _close(loss.cpu(), mixed_cross_entropy_reference(x.cpu(), x.cpu().flip(-1), idx.cpu(), 0.5), 2e-4)


def test_inductor_fullgraph_cuda():
    torch._dynamo.reset()
    f = torch.compile(
        lambda x, i: sum(t.sum() for t in selective_log_softmax_and_entropy(x, i)), fullgraph=True, dynamic=True
    )
    for n in (64, 96):
        x = torch.randn(n, V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        i = torch.randint(0, V, (n,), device="cuda")
        out = f(x, i)
        out.backward()
        ref = sum(t.sum() for t in selective_log_softmax_and_entropy(x.detach(), i))
        _close(out, ref, 1e-2, 1e-4)


def test_against_trl_triton_kernel():
    """Side by side with TRL 1.16's Triton kernel on the same bf16 logits: both against fp64."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    x, idx = _inputs(torch.bfloat16, seed=4)
    x = x.reshape(-1, V).contiguous()
    idx = idx.reshape(-1)
    ours = selective_log_softmax_and_entropy(x, idx)
    theirs = trl_utils.selective_log_softmax_and_entropy(x, idx)
    ref = selective_log_softmax_and_entropy_reference(x, idx)
    err_ours = max((o.double() - r).abs().max().item() for o, r in zip(ours, ref))
    err_trl = max((t.double() - r).abs().max().item() for t, r in zip(theirs, ref))
    print(f"max |error| vs fp64 at [{x.shape[0]}, {V}] bf16: weakstrong {err_ours:.2e}, TRL Triton {err_trl:.2e}")
    assert err_ours <= 2e-3
