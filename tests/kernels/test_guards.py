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
    with pytest.raises(IndexError, match=rf"{bad} at \(flattened\) position 5 is out of range \[0, {V}\).*size is {V}"):
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


# ---------------------------------------------------------------------------------------------- devices
def test_launch_guard_checks_every_tensor_argument():
    """Defect 6: the launch guard only looked at the strong logits; the weak logits on another device reached
    the kernel.  ``launch`` now checks every tensor argument's device and dtype before running anything."""
    import weakstrong.kernels._launch as L

    ran = []

    def kernel(*args, **kwargs):  # pragma: no cover - must not run
        ran.append(args)

    class Fake:
        fn = kernel

        def __getitem__(self, grid):
            return kernel

    cpu = torch.zeros(4)
    meta = torch.empty(4, device="meta")
    with pytest.raises(ValueError, match=r"kernel: tensor argument 2 is on meta but the kernel launches on cpu"):
        L.launch(Fake(), 1, (cpu, 3, meta), {}, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"tensor argument 1 has dtype torch.float64"):
        L.launch(Fake(), 1, (cpu, cpu.double()), {}, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="argument 0 is on cpu but the kernel launches on meta"):
        L.check_launch_args("k", (cpu,), torch.device("meta"))
    L.check_launch_args("k", (cpu, 1, 2.0, cpu.long(), cpu.bfloat16(), cpu.bool()), torch.device("cpu"))
    assert not ran


def test_mixed_ce_triton_launch_guard_sees_the_weak_logits(backend):
    """The wrappers' own launches pass the guard with both logits on one device, and a weak-logits row view on
    another device is refused at the launch (the Triton wrapper called directly, as a GPU pair would reach it)."""
    import weakstrong.kernels.mixed_ce as M
    from weakstrong.kernels._launch import row_view

    if backend != "triton":
        pytest.skip("Triton path only")
    a = torch.randn(3, V)
    labels = torch.tensor([1, 2, 3])
    loss, _, _ = M.mixed_ce_triton(row_view(a), row_view(a * 0.5), labels, 0.5, -100, False)
    assert torch.isfinite(loss).all()
    with pytest.raises(ValueError, match="is on meta but the kernel launches on cpu"):
        M.mixed_ce_triton(row_view(a), row_view(torch.empty(3, V, device="meta")), labels, 0.5, -100, False)


@pytest.mark.parametrize("name", ["mixed", "linear_mixed", "logp", "linear_logp"])
def test_public_ops_refuse_mixed_devices(backend, name):
    """Every public op names the arguments and their devices when they differ (both paths, before dispatch)."""
    x = torch.randn(3, V)
    meta_x = torch.empty(3, V, device="meta")
    y = torch.tensor([1, 2, 3])
    h, w = torch.randn(3, H), torch.randn(V, H)
    calls = {
        "mixed": lambda: mixed_cross_entropy(x, meta_x, y),
        "linear_mixed": lambda: linear_mixed_cross_entropy(h, w, h, torch.empty(V, H, device="meta"), y),
        "logp": lambda: selective_log_softmax_and_entropy(x, y.to("meta")),
        "linear_logp": lambda: linear_selective_log_softmax_and_entropy(h, w, y, bias=torch.empty(V, device="meta")),
    }
    with pytest.raises(ValueError, match=r"different devices \(.* on cpu, .* on meta"):
        calls[name]()


def test_out_of_range_topk_index_raises(torch_backend):
    """``[..., K]`` indices (chunked torch gather) get the same IndexError as one index per row."""
    x = torch.randn(2, 3, V)
    idx = torch.randint(0, V, (2, 3, 4))
    idx[1, 0, 2] = V
    with pytest.raises(IndexError, match=rf"index {V} at \(flattened\) position 14 is out of range \[0, {V}\)"):
        selective_log_softmax(x, idx)
