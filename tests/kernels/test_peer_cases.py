"""Cases from the peers' own kernel tests (TRL #7244's kernel test, verl #2899 / #7439 / #2656), written for our
ops, on both paths (the Triton path through the interpreter), against float64."""

import pytest
import torch

import weakstrong.kernels as K


def _f64(logits, idx, temperature=1.0):
    lp = torch.log_softmax(logits.double() / temperature, -1)
    return lp.gather(-1, idx[..., None])[..., 0], -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize("which", ["logp", "entropy"])
def test_output_edited_in_place_before_backward(backend, which):
    """TRL's kernel test writes into an output before backward; the gradient must be that of the edited loss."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 5, 41, generator=g, dtype=torch.float64).float().requires_grad_()
    idx = torch.randint(0, 41, (2, 4), generator=g)
    lp, ent = K.selective_log_softmax_and_entropy(base[:, 1:], idx, 0.7)
    (lp if which == "logp" else ent)[0, 2] = 0.0
    (2.0 * lp.sum() + 0.5 * ent.sum()).backward()
    ref = base.detach().double().requires_grad_()
    rlp, rent = _f64(ref[:, 1:], idx, 0.7)
    (rlp if which == "logp" else rent)[0, 2] = 0.0
    (2.0 * rlp.sum() + 0.5 * rent.sum()).backward()
    # float32 softmax gradient vs float64: |error| ~ a few fp32 ulps of values <= 2 / T (bound 1e-5)
    torch.testing.assert_close(base.grad.double(), ref.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("v", [41, 1025, 4099])  # 1 block + 1 column, several blocks + a partial one
def test_peaked_rows_with_a_partial_last_block(backend, v):
    """verl #2899: lanes past V counted exp(0) = 1 into the denominator; only a peaked row shows it
    (p(target) ~ 1, entropy ~ 0)."""
    g = torch.Generator().manual_seed(v)
    x = torch.randn(3, v, generator=g, dtype=torch.float64)
    idx = torch.randint(0, v, (3,), generator=g)
    x[torch.arange(3), idx] += 50.0
    lp, ent = K.selective_log_softmax_and_entropy(x.float(), idx)
    rlp, rent = _f64(x.float(), idx)
    # exact answers are ~ -V e^-50 and ~ 50 V e^-50 (< 1e-16): one stray exp(0) would give ~ -log 2 and ~ 0.7
    assert (lp.double() - rlp).abs().max() < 1e-6 and (ent.double() - rent).abs().max() < 1e-6


@pytest.mark.parametrize("offset", [-3e4, -1e30])
def test_all_logits_very_negative(backend, offset):
    """verl #7439: fused entropy unstable when every logit is very negative; log-probs must stay <= 0 (#2656)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 300, generator=g, dtype=torch.float64) + offset).float()
    idx = torch.randint(0, 300, (3,), generator=g)
    lp, ent = K.selective_log_softmax_and_entropy(x, idx)
    rlp, rent = _f64(x, idx)  # same float32 inputs in float64: the shift by the row max is exact there
    # the fp32 subtraction x - max is exact for |x| < 2**24 ulps apart (Sterbenz); what is left is exp/log rounding
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and (lp <= 0).all()
    assert (lp.double() - rlp).abs().max() < 1e-5 and (ent.double() - rent).abs().max() < 1e-5
