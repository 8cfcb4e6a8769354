"""Parity with TRL 1.16's torch implementations (the drop-in contract)."""

import pytest
import torch

from weakstrong.kernels import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy

trl_utils = pytest.importorskip("trl.trainer.utils")


@pytest.mark.parametrize("shape", [(768,), (3, 768), (2, 4, 769), (2, 3, 4099)])
@pytest.mark.parametrize("chunk_size", [1, 16, 128])
def test_entropy_from_logits_matches_trl(backend, shape, chunk_size):
    x = torch.randn(*shape) * 3
    ours = entropy_from_logits(x, chunk_size=chunk_size)
    theirs = trl_utils.entropy_from_logits(x, chunk_size=chunk_size)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_entropy_dtypes_match_trl(torch_backend, dtype):
    x = (torch.randn(2, 4, 768) * 3).to(dtype)
    ours = entropy_from_logits(x)
    theirs = trl_utils.entropy_from_logits(x)
    assert ours.dtype == theirs.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    # TRL computes log_softmax in the input dtype; ours accumulates in fp32 and is closer to fp64
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_selective_log_softmax_matches_trl(backend, temperature):
    x = torch.randn(2, 5, 4099) * 3
    idx = torch.randint(0, 4099, (2, 5))
    ours = selective_log_softmax(x, idx, temperature=temperature)
    theirs = trl_utils.selective_log_softmax(x, idx, temperature=temperature)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    lp, ent = selective_log_softmax_and_entropy(x, idx, temperature=temperature)
    tlp, tent = trl_utils.selective_log_softmax_and_entropy(x, idx, temperature=temperature)
    torch.testing.assert_close(lp, tlp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, tent, rtol=1e-5, atol=1e-5)


def test_selective_log_softmax_topk_matches_trl(torch_backend):
    x = torch.randn(2, 5, 300)
    idx = torch.randint(0, 300, (2, 5, 3))
    torch.testing.assert_close(selective_log_softmax(x, idx), trl_utils.selective_log_softmax(x, idx))


def test_gradients_match_trl_torch_path(torch_backend):
    x = (torch.randn(3, 4, 515) * 2).requires_grad_()
    idx = torch.randint(0, 515, (3, 4))
    lp, ent = selective_log_softmax_and_entropy(x, idx)
    (g_ours,) = torch.autograd.grad(lp.sum() + 0.3 * ent.sum(), x)
    tlp, tent = trl_utils.selective_log_softmax_and_entropy(x, idx)
    (g_trl,) = torch.autograd.grad(tlp.sum() + 0.3 * tent.sum(), x)
    torch.testing.assert_close(g_ours, g_trl, rtol=1e-4, atol=1e-6)
