"""The CPU path must not allocate O(N x V): measured with the kernel's peak-RSS counter (VmHWM, reset
through /proc/self/clear_refs) with glibc's mmap threshold pinned low so large buffers are really
returned on free.  A control shows the same measurement catches an O(N x V) implementation.
Plus: the chunk loop really runs chunk by chunk, and backend dispatch rules."""

import ctypes
import os
import sys

import pytest
import torch

import weakstrong.kernels.entropy as E
import weakstrong.kernels.mixed_ce as M
from weakstrong.kernels import entropy_from_logits, mixed_cross_entropy, selective_log_softmax_and_entropy
from weakstrong.kernels._dispatch import backend_for


def _peak_rss_supported():
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_bytes(fn):
    """Peak resident memory above the baseline while ``fn`` runs (bytes)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB: big buffers are mmap'd and unmapped on free
    fn()  # warm-up (lazy init, thread pools)
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    out = fn()
    peak = _status("VmHWM")
    del out
    return peak - base


needs_rss = pytest.mark.skipif(not _peak_rss_supported(), reason="needs Linux /proc/self/clear_refs")

N, V = 512, 8192  # logits: 16 MiB fp32


@needs_rss
def test_cpu_path_extra_memory_is_o_chunk(torch_backend, monkeypatch):
    monkeypatch.setattr(E, "CHUNK_ELEMENTS", 1 << 15)  # 4 rows x 8192: two 128 KiB buffers
    x = torch.randn(N, V)
    logits_bytes = x.numel() * 4
    idx = torch.randint(0, V, (N,))
    b = torch.randn(N, V)
    labels = torch.randint(0, V, (N,))
    with torch.no_grad():
        extra_ent = peak_extra_bytes(lambda: entropy_from_logits(x))
        extra_both = peak_extra_bytes(lambda: selective_log_softmax_and_entropy(x, idx))
        extra_mixed = peak_extra_bytes(lambda: mixed_cross_entropy(x, b, labels, lam=0.5, return_entropies=True))
        # control: an O(N x V) implementation must be caught by the same measurement
        extra_naive = peak_extra_bytes(lambda: -(x.softmax(-1) * x.log_softmax(-1)).sum(-1))
    assert extra_naive > logits_bytes * 0.9, extra_naive
    for extra in (extra_ent, extra_both, extra_mixed):
        assert extra < logits_bytes * 0.05, (extra, logits_bytes)


@needs_rss
def test_cpu_path_extra_memory_strided_inputs(torch_backend, monkeypatch):
    """Batch/row-strided views (logits[:, :-1], vocab-padded [..., :V]) are read in place: still O(chunk)."""
    monkeypatch.setattr(E, "CHUNK_ELEMENTS", 1 << 15)
    base = torch.randn(4, N // 4 + 1, V)
    shifted = base[:, :-1]  # [4, 128, V], batch stride != 128 * V
    padded = torch.randn(N, V + 64)[:, :V]
    logits_bytes = shifted.numel() * 4
    idx = torch.randint(0, V, shifted.shape[:-1])
    with torch.no_grad():
        extras = [
            peak_extra_bytes(lambda: entropy_from_logits(shifted)),
            peak_extra_bytes(lambda: selective_log_softmax_and_entropy(shifted, idx)),
            peak_extra_bytes(lambda: mixed_cross_entropy(shifted, shifted, idx, lam=0.5, return_stats=True)),
            peak_extra_bytes(lambda: entropy_from_logits(padded)),
        ]
        control = peak_extra_bytes(lambda: shifted.contiguous())  # what the old copy cost
    assert control > logits_bytes * 0.9, control
    for extra in extras:
        assert extra < logits_bytes * 0.05, (extras, logits_bytes)


def test_chunk_loop_bounds_rows(torch_backend, monkeypatch):
    """Every chunk seen by the row-statistics helper has at most CHUNK_ELEMENTS // V rows."""
    monkeypatch.setattr(E, "CHUNK_ELEMENTS", 3 * 100)
    seen = []
    real = E.chunk_lse_entropy

    def spy(xc, *args, **kwargs):
        seen.append(xc.shape[0])
        return real(xc, *args, **kwargs)

    monkeypatch.setattr(E, "chunk_lse_entropy", spy)
    monkeypatch.setattr(M, "chunk_lse_entropy", spy)
    x = torch.randn(10, 100)
    entropy_from_logits(x)
    assert seen == [3, 3, 3, 1]
    seen.clear()
    mixed_cross_entropy(x, x, torch.zeros(10, dtype=torch.long), return_entropies=True)
    assert max(seen) == 3 and len(seen) == 3 * 4


def test_backward_chunk_buffers_bounded(torch_backend, monkeypatch):
    """The torch backward allocates only chunk-sized scratch besides the gradient itself."""
    monkeypatch.setattr(E, "CHUNK_ELEMENTS", 2 * 64)
    sizes = []
    real_empty = torch.empty

    def spy_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        sizes.append(t.numel())
        return t

    x = torch.randn(20, 64, dtype=torch.bfloat16, requires_grad=True)
    lp, ent = selective_log_softmax_and_entropy(x, torch.zeros(20, dtype=torch.long))
    monkeypatch.setattr(E.torch, "empty", spy_empty)
    try:
        (lp.sum() + ent.sum()).backward()
    finally:
        monkeypatch.setattr(E.torch, "empty", real_empty)
    assert sizes and max(sizes) <= 2 * 64, sizes


def test_dispatch_rules(monkeypatch):
    cpu = torch.zeros(2, 3)
    monkeypatch.setenv("WEAKSTRONG_KERNELS", "torch")
    assert backend_for(cpu) == "torch"
    monkeypatch.delenv("WEAKSTRONG_KERNELS")
    assert backend_for(cpu) == "torch"  # CPU tensors default to torch even under the interpreter
    monkeypatch.setenv("WEAKSTRONG_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_for(cpu) == "triton"
    assert backend_for(cpu.double()) == "torch"  # fp64 always torch
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError):
        backend_for(cpu)
    monkeypatch.setenv("WEAKSTRONG_KERNELS", "cuda")
    with pytest.raises(ValueError):
        backend_for(cpu)


def test_no_item_host_sync_in_hot_path(monkeypatch):
    """Forward and backward never call Tensor.item() / bool() on a tensor (host syncs on CUDA)."""

    def boom(*a, **k):
        raise AssertionError("host sync in the hot path")

    monkeypatch.setattr(torch.Tensor, "item", boom)
    monkeypatch.setattr(torch.Tensor, "__bool__", boom)
    monkeypatch.setattr(torch.Tensor, "tolist", boom)
    monkeypatch.setenv("WEAKSTRONG_KERNELS", "torch")
    a = torch.randn(6, 50, requires_grad=True)
    b = torch.randn(6, 50, requires_grad=True)
    labels = torch.tensor([1, -100, 3, 4, -100, 6])
    loss, ha, hb = mixed_cross_entropy(a, b, labels, lam=0.5, return_entropies=True)
    loss.backward()
    lp, ent = selective_log_softmax_and_entropy(a, labels.clamp(min=0), temperature=0.5)
    (lp.sum() + ent.sum()).backward()
    entropy_from_logits(a).sum().backward()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter only")
def test_triton_path_is_interpreted_under_tests():
    assert type(E._lse_entropy_fwd_kernel).__name__ == "InterpretedFunction"


# ---------------------------------------------------------------------------------------------- vocab tiles
class _TensorShapes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (shape, bytes) of every tensor any aten op produces (buffers, GEMM outputs, casts, views; under the
    Triton interpreter also its byte copies of the kernel arguments)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.shapes.append((tuple(t.shape), t.numel() * t.element_size()))
        return out


def _hidden_state_shapes(op, vocab_chunk, backend):
    """Shapes produced by forward + backward of a hidden-state op's implementation (the custom ops are opaque to a
    dispatch mode, so their Python bodies are called directly)."""
    import weakstrong.kernels.linear as L

    g = torch.Generator().manual_seed(0)
    n, hid, vocab, chunk = 16, 4, 1000, 8
    h, w, b = torch.randn(n, hid, generator=g), torch.randn(vocab, hid, generator=g), torch.randn(vocab, generator=g)
    idx = torch.randint(0, vocab, (n,), generator=g)
    tf = L.LogitTransform(0.5, 3.0, 1.25)
    f32 = torch.float32
    with _TensorShapes() as seen:
        if op == "logp":
            _, _, stats = L.linear_lse_forward(h, w, b, idx, tf, chunk, vocab_chunk, f32, backend)
            L.linear_lse_backward(h, w, b, idx, stats, torch.ones(n), torch.ones(n), tf, chunk, vocab_chunk, f32, f32,
                                  True, True, True, backend)
        else:
            s, wk = L._Model(h, w, b, f32), L._Model(h * 0.5, w * 0.5, b, f32)
            _, stats, _ = L.linear_mixed_forward(s, wk, idx, 0.4, -100, True, tf, chunk, vocab_chunk, backend)
            L.linear_mixed_backward(s, wk, idx, 0.4, -100, stats, torch.ones(n), tf, chunk, vocab_chunk, f32,
                                    [True] * 6, backend)
    return seen.shapes, dict(n=n, hid=hid, vocab=vocab, chunk=chunk)


def _too_large(shapes, n, hid, vocab, chunk, tile):
    """Tensors above one float32 [chunk, tile] tile that are not parameter-, gradient- or per-token-shaped."""
    allowed = {(vocab, hid), (vocab,), (n, hid), (n,), (n, 3), (n, 4), (3, chunk)}
    return [s for s, nbytes in shapes if nbytes > 4 * chunk * tile and s not in allowed]


@pytest.mark.parametrize("op", ["logp", "mixed"])
def test_hidden_state_ops_working_set_is_one_vocab_tile(backend, op):
    """Vocabulary tiling: with 8-token chunks and 100-row tiles of a 1000-word vocabulary, no tensor of either
    pass exceeds 8 x 100 float32 values except the parameters, their float32 gradient accumulators and per-token
    vectors.  Control: one tile of the whole vocabulary (the old working set) is caught by the same check."""
    shapes, dims = _hidden_state_shapes(op, 100, backend)
    assert shapes and not _too_large(shapes, tile=100, **dims), _too_large(shapes, tile=100, **dims)
    assert (dims["chunk"], 100) in [s for s, _ in shapes]  # the tiles were seen
    untiled, dims = _hidden_state_shapes(op, dims["vocab"], backend)
    assert (dims["chunk"], dims["vocab"]) in _too_large(untiled, tile=100, **dims)
