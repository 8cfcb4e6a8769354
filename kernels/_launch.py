"""Plumbing shared by the kernel families: strided row views, chunk sizes, block sizes, and the one place
where every Triton kernel is launched (device guard + optional launch recording for the compile gate).

Row layout.  A ``[..., V]`` tensor whose last stride is 1 is seen as a 3-D view ``[B, R, V]`` with a batch
stride and a row stride (no copy): ``logits[:, :-1]`` of a ``[B, T, V]`` tensor and a vocab-padded
``padded[..., :V]`` are both such views.  Row ``i`` of the flattened ``N = B * R`` rows starts at
``(i // R) * stride_b + (i % R) * stride_r``.  Only leading dimensions that cannot be merged into one batch
dimension, or a last stride other than 1, make a copy.

Launch recording.  :func:`launch` is the only caller of ``kernel[grid](...)`` in the package.  Inside
:func:`record_launches` it appends what the JIT would see (kernel name, positional arguments described by type,
dtype and 16-byte alignment, constexprs, ``num_warps``) so that ``kernels/compile_gate.py`` can compile
exactly the variants the wrappers launch, for any GPU target, without a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch

from ._dispatch import interpreting, next_power_of_2

__all__ = [
    "RowView",
    "block_config",
    "check_launch_args",
    "check_same_device",
    "chunk_elements",
    "device_guard",
    "fused_reduce",
    "gpu_block_config",
    "launch",
    "record_launches",
    "row_chunks",
    "row_view",
]

#: torch-path chunk budget (elements per float32 scratch buffer) on CPU: 2**18 float32 = 1 MiB, so both
#: buffers stay in a 2 MiB L2.  Kept in ``kernels.entropy.CHUNK_ELEMENTS`` (tests patch it there).
CPU_CHUNK_ELEMENTS = 1 << 18
#: on CUDA the budget is sized per device: 1/512 of its memory per buffer (H100 80 GB: 2**25 float32 =
#: 128 MiB, ~220 rows at V = 151,936), clamped to [2**22, 2**26] elements.  One launch then covers hundreds of
#: rows instead of one (``2**18`` gave ~15 launches per row at V = 151,936).
CUDA_CHUNK_FRACTION = 512
CUDA_CHUNK_MIN, CUDA_CHUNK_MAX = 1 << 22, 1 << 26

#: Under the interpreter, blocks are capped at 1024 columns (it runs a block per numpy call: small blocks keep
#: the tests fast).  Tests and the compile gate set this to pick the GPU configuration there too.
FORCE_GPU_CONFIG = False
#: Kernels merge their row reductions into one tuple ``tl.reduce`` (fewer barriers) on a GPU.  The interpreter
#: runs a tuple reduction element by element in Python (~0.5 ms per element), so there it is off unless this
#: is set (a small-V test checks that path's values; the compile gate compiles it).
FORCE_FUSED_REDUCE = False


def fused_reduce() -> bool:
    """Whether kernels merge their reductions (the ``FUSED`` constexpr)."""
    return FORCE_FUSED_REDUCE or not interpreting()


def gpu_block_config(v: int, streams: int = 1) -> tuple[int, int]:
    """(BLOCK, num_warps) that a GPU launch uses for rows of ``v`` columns.

    ``streams``: rows read per program at once (2 for the mixed kernels: the strong and the weak logits).  With
    several streams the block shrinks and the warps stay, so each thread holds as many loaded elements per
    iteration, all streams together, as a one-stream kernel: 16 per thread at 16 warps.  At BLOCK = 8192 the
    two-stream mixed forward with statistics used 127 of the 128 registers 16 warps allow (R = 1, fp32,
    V = 50,257; kernels/compile_gate.py fails on that)."""
    block = min(8192, next_power_of_2(max(16, v)))
    warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    if streams > 1 and block > 1024:
        block = max(1024, block // next_power_of_2(streams))
    return block, warps


def block_config(v: int, streams: int = 1) -> tuple[int, int]:
    """(BLOCK, num_warps) for a launch over rows of ``v`` columns (small blocks under the interpreter)."""
    if interpreting() and not FORCE_GPU_CONFIG:
        block = min(1024, next_power_of_2(max(16, v)))
        return block, 4
    return gpu_block_config(v, streams)


def chunk_elements(device: torch.device, cpu_budget: int = CPU_CHUNK_ELEMENTS) -> int:
    """Elements per scratch buffer of the chunked torch path on ``device``."""
    if device.type != "cuda":
        return cpu_budget
    total = torch.cuda.get_device_properties(device).total_memory
    budget = total // CUDA_CHUNK_FRACTION // 4
    return int(min(CUDA_CHUNK_MAX, max(CUDA_CHUNK_MIN, budget)))


# ----------------------------------------------------------------------------------------------------------
# strided rows
# ----------------------------------------------------------------------------------------------------------
class RowView(NamedTuple):
    """``x3`` is a ``[B, R, V]`` view of the input (a copy only when unavoidable); ``n = B * R``."""

    x3: torch.Tensor
    n: int
    v: int

    @property
    def r(self) -> int:
        return self.x3.shape[1]

    @property
    def stride_b(self) -> int:
        return self.x3.stride(0)

    @property
    def stride_r(self) -> int:
        return self.x3.stride(1)

    def kernel_args(self) -> tuple:
        """``(tensor, stride_b, stride_r)``: how every kernel takes a strided row view."""
        return self.x3, self.stride_b, self.stride_r

    def flat(self) -> torch.Tensor | None:
        """The rows as one 2-D view ``[N, V]`` if the strides allow it without a copy, else None."""
        b, r, v = self.x3.shape
        try:
            return self.x3.view(b * r, v)
        except RuntimeError:  # batch stride != R * row stride (e.g. logits[:, :-1] with B > 1)
            return None


def row_view(x: torch.Tensor) -> RowView:
    """``[..., V]`` -> :class:`RowView` (no copy for batch/row-strided views whose last stride is 1)."""
    v = x.shape[-1]
    if x.ndim == 1:
        x3 = x.view(1, 1, v) if x.stride(-1) == 1 else x.contiguous().view(1, 1, v)
        return RowView(x3, 1, v)
    lead = x.shape[:-1]
    n = 1
    for s in lead:
        n *= s
    r = lead[-1]
    if n == 0:
        return RowView(x.new_empty(0, 1, v), 0, v)
    if x.stride(-1) != 1:
        x = x.contiguous()
    try:
        x3 = x.view(n // r, r, v)
    except RuntimeError:  # leading dims that no single batch stride describes
        x3 = x.reshape(n // r, r, v)
    return RowView(x3, n, v)


def row_chunks(rows: int, *views: RowView):
    """Yield ``(start, k, [2-D chunk of each view])`` over all rows in order, ``k <= rows``.

    Chunks span batch entries when every view flattens to 2-D without a copy, else stay inside one entry."""
    first = views[0]
    flats = [vw.flat() for vw in views]
    if all(f is not None for f in flats):
        for i in range(0, first.n, rows):
            yield i, min(rows, first.n - i), [f[i : i + rows] for f in flats]
        return
    r = first.r
    for b in range(first.x3.shape[0]):
        for j in range(0, r, rows):
            k = min(rows, r - j)
            yield b * r + j, k, [vw.x3[b, j : j + k] for vw in views]


# ----------------------------------------------------------------------------------------------------------
# launches
# ----------------------------------------------------------------------------------------------------------
def device_guard(device: torch.device):
    """Make ``device`` current for a launch (Triton launches on the current device and stream)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


_RECORDS: list[dict[str, Any]] | None = None
_EXECUTE = True


@contextlib.contextmanager
def record_launches(execute: bool = True):
    """Collect a description of every :func:`launch` made inside the block (for the compile gate).

    ``execute=False`` records without running the kernels (outputs stay uninitialised): the wrappers never
    branch on kernel outputs, so the launches recorded are the ones a real call makes."""
    global _RECORDS, _EXECUTE
    previous, _RECORDS = _RECORDS, []
    previous_exec, _EXECUTE = _EXECUTE, execute
    try:
        yield _RECORDS
    finally:
        _RECORDS, _EXECUTE = previous, previous_exec


def _describe(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return {"tensor": str(arg.dtype).removeprefix("torch."), "align16": arg.data_ptr() % 16 == 0}
    if isinstance(arg, bool):
        return {"bool": arg}
    if isinstance(arg, int):
        return {"int": arg}
    if isinstance(arg, float):
        return {"float": arg}
    raise TypeError(f"unexpected kernel argument {type(arg).__name__}")


#: element types the kernels load and store (float64 always takes the torch path)
_KERNEL_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
)


def check_launch_args(name: str, args: tuple, device: torch.device) -> None:
    """Raise ``ValueError`` unless every tensor in ``args`` is on ``device`` and of a dtype the kernels handle.

    Triton takes raw pointers: a tensor on another GPU (e.g. the weak model's logits on ``cuda:1``) would be read
    through a pointer that is meaningless on ``device``, and a float64 tensor would be read as float32 pairs."""
    device = torch.device(device)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        if a.device != device:
            raise ValueError(
                f"{name}: tensor argument {i} is on {a.device} but the kernel launches on {device}; every tensor "
                "of one call (both models' logits or hidden states and weights, labels, masks) must be on the same "
                "device: move them with .to(device) first"
            )
        if a.dtype not in _KERNEL_DTYPES:
            raise ValueError(
                f"{name}: tensor argument {i} has dtype {a.dtype}; the Triton kernels take float16, bfloat16 or "
                "float32 values and integer / bool indices and masks (float64 runs on the torch path)"
            )


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the arguments if the given tensors (``None`` skipped) are on different
    devices (checked by every public op, on both paths, before dispatch)."""
    named = {k: t for k, t in tensors.items() if t is not None}
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {t.device}" for k, t in named.items())
        raise ValueError(f"arguments are on different devices ({where}); move them to one device first")


def launch(kernel, n_programs: int, args: tuple, constexprs: dict[str, Any], num_warps: int, device: torch.device):
    """Launch ``kernel`` on a 1-D grid of ``n_programs`` with ``device`` current (and record it if asked).

    Every tensor argument is checked first (:func:`check_launch_args`): same device as the launch, a dtype
    the kernels handle."""
    if _RECORDS is not None:
        fn = getattr(kernel, "fn", kernel)
        _RECORDS.append(
            {
                "module": fn.__module__,
                "kernel": fn.__name__,
                "args": [_describe(a) for a in args],
                "constexprs": dict(constexprs),
                "num_warps": int(num_warps),
            }
        )
        if not _EXECUTE:
            return
    check_launch_args(getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel)), args, device)
    with device_guard(device):
        kernel[(n_programs,)](*args, **constexprs, num_warps=num_warps)
