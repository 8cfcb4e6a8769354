"""What a GPU run needs that the interpreter tests did not cover (issue 13, defects 2-5 and 7): in-kernel
skipping of masked / ignored / out-of-range rows, strided rows read in place, the CUDA device guard, the
per-device torch chunk size, and the GPU block configuration."""

import pytest
import torch

import weakstrong.kernels._launch as L
import weakstrong.kernels.entropy as E
from weakstrong.kernels import (
    entropy_from_logits,
    entropy_from_logits_reference,
    mixed_cross_entropy,
    mixed_cross_entropy_reference,
    selective_log_softmax,
    selective_log_softmax_and_entropy,
    selective_log_softmax_and_entropy_reference,
)


def _close(a, b, atol, rtol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------- defect 2
def test_masked_rows_skipped_in_kernel(backend):
    """Masked rows may carry any index (-100, V) and any values (NaN): outputs and gradients there are exactly
    0 and nothing leaks into kept rows.  (Before: the mask was applied after the kernel, so NaN rows gave NaN
    gradients and the Triton path read index -100 / V out of bounds.)"""
    g = torch.Generator().manual_seed(0)
    v = 41
    x = torch.randn(2, 4, v, generator=g)
    idx = torch.randint(0, v, (2, 4), generator=g)
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    idx[0, 1], idx[1, 0], idx[0, 3] = -100, v, v + 1000
    x[0, 1] = float("nan")
    x = x.requires_grad_()
    lp, ent = selective_log_softmax_and_entropy(x, idx, 0.8, mask)
    rlp, rent = selective_log_softmax_and_entropy_reference(x.detach()[mask], idx[mask], 0.8)
    assert (lp[~mask] == 0).all() and (ent[~mask] == 0).all()
    _close(lp[mask], rlp, 2e-5)
    _close(ent[mask], rent, 2e-5)
    (gx,) = torch.autograd.grad(lp.sum() + ent.sum(), x)
    assert torch.isfinite(gx).all()
    assert (gx[~mask] == 0).all()
    only = selective_log_softmax(x, idx, 0.8, mask)
    torch.testing.assert_close(only, lp)


def test_ignored_rows_skipped_mixed_ce(backend):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 41, generator=g)
    b = torch.randn(6, 41, generator=g)
    labels = torch.randint(0, 41, (6,), generator=g)
    labels[[1, 4]] = -100
    a[1] = float("nan")
    b[4] = float("inf")
    a, b = a.requires_grad_(), b.requires_grad_()
    loss, st = mixed_cross_entropy(a, b, labels, lam=0.4, reduction="none", return_stats=True)
    keep = labels != -100
    ref = mixed_cross_entropy_reference(a.detach()[keep], b.detach()[keep], labels[keep], lam=0.4, reduction="none")
    _close(loss[keep], ref, 2e-5)
    assert (loss[~keep] == 0).all() and all((s[~keep] == 0).all() for s in st)
    ga, gb = torch.autograd.grad(loss.sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert (ga[~keep] == 0).all() and (gb[~keep] == 0).all()


@pytest.mark.parametrize("bad", [-1, -100, 41, 10**6])
def test_out_of_range_targets(backend, bad):
    """Both paths raise IndexError naming the value and V (issue 22, defect 4: the Triton path used to return
    NaN for that row, so a caller that masks by multiplying got a NaN loss on a GPU only)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 41, generator=g, requires_grad=True)
    y = torch.tensor([3, bad, 7])
    ignore = -7  # so that -100 is an ordinary (bad) label here
    with pytest.raises(IndexError, match=rf"label {bad} .*out of range \[0, 41\)"):
        mixed_cross_entropy(x, x * 0.5, y, lam=0.5, ignore_index=ignore, reduction="none")
    with pytest.raises(IndexError, match=rf"index {bad} .*out of range \[0, 41\)"):
        selective_log_softmax_and_entropy(x, y)


# ---------------------------------------------------------------------------------------------- defect 3
def test_device_guard_wraps_every_launch(monkeypatch):
    """Fault injection: a fake torch.cuda.device records what is current when a (fake) kernel launches."""
    entered = []
    current = [None]

    class FakeDevice:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            entered.append(self.device)
            current[0] = self.device

        def __exit__(self, *exc):
            current[0] = None

    class FakeKernel:
        seen = []

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                FakeKernel.seen.append((grid, current[0], kwargs["num_warps"]))

            return run

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    L.launch(FakeKernel(), 3, (1,), {"BLOCK": 16}, 4, torch.device("cuda", 1))
    assert entered == [torch.device("cuda", 1)]
    assert FakeKernel.seen == [((3,), torch.device("cuda", 1), 4)]
    L.launch(FakeKernel(), 2, (), {}, 4, torch.device("cpu"))  # CPU (interpreter): no CUDA call at all
    assert entered == [torch.device("cuda", 1)] and FakeKernel.seen[-1] == ((2,), None, 4)


def test_wrappers_launch_with_the_inputs_device(backend, monkeypatch):
    """Every kernel launch of the public ops goes through launch() with the input tensor's device."""
    if backend != "triton":
        pytest.skip("Triton path only")
    devices = []
    real = L.device_guard
    monkeypatch.setattr(L, "device_guard", lambda d: devices.append(d) or real(d))
    x = torch.randn(3, 41, requires_grad=True)
    y = torch.tensor([1, 2, 3])
    lp, ent = selective_log_softmax_and_entropy(x, y)
    (lp.sum() + ent.sum()).backward()
    mixed_cross_entropy(x, x, y, return_stats=True)[0].backward()
    assert len(devices) == 4 and all(d == x.device for d in devices)


# ---------------------------------------------------------------------------------------------- defect 4
def _strided_cases():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 41, generator=g)
    padded = torch.randn(2, 5, 48, generator=g)  # vocabulary padded to a multiple of 16
    return {
        "shifted": base[:, :-1],  # batch stride 6*V, row stride V: not one 2-D view
        "vocab_padded": padded[..., :41],  # row stride 48
        "every_other_row": base[:, ::2],
    }


@pytest.mark.parametrize("case", ["shifted", "vocab_padded", "every_other_row"])
def test_strided_logits_without_copy(backend, case, monkeypatch):
    x = _strided_cases()[case]
    assert not x.is_contiguous()
    rv = L.row_view(x)
    assert rv.x3.data_ptr() == x.data_ptr() and rv.x3.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()

    def no_copy(self, *a, **k):
        raise AssertionError("the strided logits were copied")

    x = x.detach().requires_grad_()
    idx = torch.randint(0, 41, x.shape[:-1], generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(torch.Tensor, "contiguous", no_copy)
    lp, ent = selective_log_softmax_and_entropy(x, idx, 0.9)
    h = entropy_from_logits(x)
    loss, st = mixed_cross_entropy(x, x.flip(-1), idx, lam=0.3, reduction="none", return_stats=True)
    monkeypatch.undo()
    rlp, rent = selective_log_softmax_and_entropy_reference(x.detach(), idx, 0.9)
    _close(lp, rlp, 2e-5)
    _close(ent, rent, 2e-5)
    _close(h, entropy_from_logits_reference(x.detach()), 2e-5)
    rloss, rst = mixed_cross_entropy_reference(x.detach(), x.detach().flip(-1), idx, 0.3, reduction="none", return_stats=True)
    _close(loss, rloss, 2e-5)
    for got, exp in zip(st, rst):
        _close(got, exp, 2e-5)
    xr = x.detach().double().requires_grad_()
    (gx,) = torch.autograd.grad(lp.sum() + ent.sum() + loss.sum(), x)
    rl, re_ = selective_log_softmax_and_entropy_reference(xr, idx, 0.9)
    rm = mixed_cross_entropy_reference(xr, xr.flip(-1), idx, 0.3, reduction="none")
    (rgx,) = torch.autograd.grad(rl.sum() + re_.sum() + rm.sum(), xr)
    assert gx.shape == x.shape
    _close(gx, rgx, 2e-5, 1e-4)


def test_row_view_copies_only_when_unavoidable():
    x = torch.randn(4, 5, 7)
    assert L.row_view(x).x3.data_ptr() == x.data_ptr()
    assert L.row_view(x.transpose(0, 1)).x3.data_ptr() == x.data_ptr()  # [5, 4, V] with batch stride V
    t = torch.randn(3, 4, 5, 7)[:, :, :-1]  # leading dims [3, 4] cannot merge into one batch stride
    assert L.row_view(t).x3.shape == (12, 4, 7)
    col = torch.randn(7, 6).T  # last stride != 1: must copy
    assert L.row_view(col).x3.is_contiguous()


# ---------------------------------------------------------------------------------------------- defect 5
def test_torch_chunk_sized_per_device(monkeypatch):
    class Props:
        total_memory = 80 * 10**9

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    cuda = torch.device("cuda", 0)
    rows = E.chunk_rows(8192, 151_936, device=cuda)
    assert rows >= 128, rows  # was 1 row per chunk (2**18 elements) at V = 151,936
    assert rows * 151_936 * 4 <= 80 * 10**9 // 256  # each scratch buffer stays a small part of the device
    assert E.chunk_rows(8192, 151_936, device=torch.device("cpu")) == 1  # CPU budget unchanged (L2-sized)
    Props.total_memory = 8 * 10**9
    assert E.chunk_rows(8192, 151_936, device=cuda) < rows


# ---------------------------------------------------------------------------------------------- defect 7
@pytest.fixture
def gpu_config(monkeypatch):
    monkeypatch.setattr(L, "FORCE_GPU_CONFIG", True)
    return L.gpu_block_config


def test_interpreter_at_gpu_block_config(backend, gpu_config):
    """The (8192 columns, 16 warps) block a GPU picks at V = 151,936: 18 full blocks + a 4,480-column tail,
    a +50 spike in the tail block, -inf columns; forward and backward vs fp64 (3 rows: cheap)."""
    if backend != "triton":
        pytest.skip("block sizes are a Triton-path property")
    v = 151_936
    assert L.block_config(v) == (8192, 16)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, v, generator=g) * 2
    x[0, v - 7] += 50.0  # tail block (cols >= 18 * 8192 = 147,456)
    x[1, 147_456 + 100] += 50.0
    x[:, 1000:1100] = float("-inf")
    x[2, 150_000:] = float("-inf")
    idx = torch.tensor([v - 7, 147_556, 5])
    x = x.requires_grad_()
    lp, ent = selective_log_softmax_and_entropy(x, idx)
    rlp, rent = selective_log_softmax_and_entropy_reference(x.detach(), idx)
    _close(lp, rlp, 1e-4)
    _close(ent, rent, 1e-4)
    loss, st = mixed_cross_entropy(x, x.detach().roll(3, -1), idx, lam=0.7, reduction="none", return_stats=True)
    rloss, rst = mixed_cross_entropy_reference(x.detach(), x.detach().roll(3, -1), idx, 0.7, reduction="none", return_stats=True)
    _close(loss, rloss, 1e-4)
    for got, exp in zip(st, rst):
        _close(got, exp, 1e-4)
    (gx,) = torch.autograd.grad(lp.sum() + ent.sum() + loss.sum(), x)
    xr = x.detach().double().requires_grad_()
    a, b = selective_log_softmax_and_entropy_reference(xr, idx)
    c = mixed_cross_entropy_reference(xr, x.detach().double().roll(3, -1), idx, 0.7, reduction="none")
    (rgx,) = torch.autograd.grad(a.sum() + b.sum() + c.sum(), xr)
    assert torch.isfinite(gx).all() and (gx[:, 1000:1100] == 0).all()
    _close(gx, rgx, 1e-5, 1e-4)


def test_fused_reductions_match(backend, monkeypatch):
    """The GPU kernels merge their reductions into one tuple tl.reduce (fewer barriers); the interpreter runs
    that path element by element, so it is checked here at a small V."""
    if backend != "triton":
        pytest.skip("Triton path only")
    monkeypatch.setattr(L, "FORCE_FUSED_REDUCE", True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 41, generator=g) * 3
    x[0, 40] += 50.0
    x[1, :5] = float("-inf")
    idx = torch.tensor([40, 7])
    lp, ent = selective_log_softmax_and_entropy(x, idx)
    rlp, rent = selective_log_softmax_and_entropy_reference(x, idx)
    _close(lp, rlp, 2e-5)
    _close(ent, rent, 2e-5)
    loss, st = mixed_cross_entropy(x, x.roll(1, -1), idx, lam=0.5, reduction="none", return_stats=True)
    rloss, rst = mixed_cross_entropy_reference(x, x.roll(1, -1), idx, 0.5, reduction="none", return_stats=True)
    _close(loss, rloss, 2e-5)
    for got, exp in zip(st, rst):
        _close(got, exp, 2e-5)
