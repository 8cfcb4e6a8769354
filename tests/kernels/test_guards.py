"""Argument guards shared by both paths: out-of-range targets (defect 4), devices and dtypes of every tensor a
Triton kernel is launched with (defect 6)."""

import pytest
import torch

from weakstrong.kernels import (
    linear_mixed_cross_entropy,
    linear_selective_log_softmax_and_entropy,
    mixed_cross_entropy,
    selective_log_softmax,
    selective_log_softmax_and_entropy,
)

V, H = 41, 8


def _calls():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, V, generator=g)
    hid = torch.randn(2, 3, H, generator=g)
    w = torch.randn(V, H, generator=g)
    return {
        "selective_log_softmax_and_entropy": lambda idx, keep: selective_log_softmax_and_entropy(x, idx, row_mask=keep),
        "selective_log_softmax": lambda idx, keep: selective_log_softmax(x, idx, row_mask=keep),
        "mixed_cross_entropy": lambda idx, keep: mixed_cross_entropy(x, x * 0.5, torch.where(keep, idx, -100)),
        "linear_selective_log_softmax_and_entropy": lambda idx, keep: linear_selective_log_softmax_and_entropy(
            hid, w, torch.where(keep, idx, 0), chunk_size=2
        ),
        "linear_mixed_cross_entropy": lambda idx, keep: linear_mixed_cross_entropy(
            hid, w, hid, w, torch.where(keep, idx, -100), chunk_size=2
        ),
    }


@pytest.mark.parametrize("bad", [V, V + 7, -1, -100])
@pytest.mark.parametrize("name", list(_calls()))
def test_out_of_range_target_raises_on_both_paths(backend, name, bad):
    """Defect 4: the torch path raised, the Triton path returned NaN log-probs.  Both now raise IndexError naming
    the value and the vocabulary size.  (-100 is out of range too where it is not the ignore_index: the
    log-prob ops have no ignore_index, and a mixed-CE label of -100 is ignored, so it is not bad there.)"""
    fn = _calls()[name]
    idx = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(2, 3, dtype=torch.bool)
    idx[1, 2] = bad
    if name.startswith(("mixed", "linear_mixed")) and bad == -100:
        fn(idx, keep)  # the ignore_index itself: allowed
        return
    with pytest.raises(IndexError, match=rf"{bad} at \(flattened\) position 5 is outside \[0, {V}\).*size {V}"):
        fn(idx, keep)


@pytest.mark.parametrize("name", list(_calls()))
def test_out_of_range_target_allowed_on_masked_rows(backend, name):
    """A bad target on a masked / ignored row is never read: no error, finite outputs."""
    if name == "linear_selective_log_softmax_and_entropy":
        pytest.skip("no row mask on this op")
    idx = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(1))
    keep = torch.ones(2, 3, dtype=torch.bool)
    idx[0, 1], keep[0, 1] = V + 3, False
    out = _calls()[name](idx, keep)
    for t in out if isinstance(out, tuple) else (out,):
        assert torch.isfinite(t).all()
