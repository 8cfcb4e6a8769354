"""Entropy, selected log-probabilities, and both in one pass over the logits.

Public functions (all differentiable, any leading shape ``[..., V]``):

* :func:`entropy_from_logits` -- drop-in for ``trl.trainer.utils.entropy_from_logits`` (nats).  Returns the
  input dtype, like TRL's torch path (TRL's CUDA kernel returns float32); computed in float32.
* :func:`selective_log_softmax` -- drop-in for ``trl.trainer.utils.selective_log_softmax`` (index of shape
  ``[...]`` or ``[..., K]``, ``temperature``, ``row_mask``).  Returns the input dtype, like TRL's torch path.
* :func:`selective_log_softmax_and_entropy` -- ``(logps, entropy)``, both float32.

Numerical contract.  Every path reads the logits in their dtype and accumulates in float32 (float64 inputs:
float64 on the torch path).  float32 results are within ~1e-6 (relative) of the float64 reference; functions
that return the input dtype round that float32 result once at the end.  TRL's torch path instead runs
``log_softmax`` in the input dtype, so at bf16 ours is closer to float64 and *not* bit-equal to TRL's (TRL's own
bf16 tests, which demand equality with a bf16 ``log_softmax``, fail on ours by design).  Measured errors and
their command: ``benchmarks/README.md`` ("Numerical contract").

Implementation: one online pass per row keeping ``m`` (running max), ``d = sum exp(x - m)`` and
``t = sum exp(x - m) (x - m)``; when the max rises to ``m'``: ``d' = e^{m-m'} d``,
``t' = e^{m-m'} (t + (m - m') d)``.  Then ``lse = m + log d`` and ``H = log d - t / d`` (no cancellation
between ``lse`` and ``E[x]``).  The raw row max ``m`` and ``log d`` are saved (not their sum, so that
``log p = (x - m)/T - log d`` keeps full precision for large logits).  Backward recomputes ``p`` and uses
``dlogp_y/dx = e_y - p`` and ``dH/dx = -p (log p + H)``, both times ``1/T`` with a temperature.

Rows.  Batch/row-strided views (``logits[:, :-1]``, a vocab-padded ``[..., :V]``) are read in place (see
``kernels/_launch.py``); the gradient is a fresh contiguous tensor.  ``row_mask`` rows are skipped inside the
kernels (never read, outputs 0, gradient 0), so they may hold any index.  An index outside ``[0, V)`` on a
kept row raises ``IndexError`` (value, position and V in the message) on both paths, checked once per call
before any kernel (see :func:`check_index_range` for its cost on CUDA).

Backends: Triton (one program per row, looping over the vocabulary in blocks of 8,192 with 16 warps at
V >= 4k) for CUDA tensors; a chunked torch implementation otherwise whose extra memory is two ``rows x V``
float32 buffers (``CHUNK_ELEMENTS`` on CPU, sized per device on CUDA), independent of the number of tokens.
The public ops are ``torch.library`` custom ops (``torch.ops.weakstrong.lse_entropy`` and its backward) with
fake implementations: ``torch.compile(fullgraph=True)`` sees one node and compiles once for all token counts
with dynamic shapes.  ``*_reference`` functions give the plain float64 math for tests.

On a GPU the forward merges its two block sums into one tuple ``tl.reduce`` (one reduction tree; the
interpreter keeps two ``tl.sum``, it runs tuple reductions element by element).  What is and is not yet measured
on a GPU (vectorised loads at V not divisible by 16, occupancy below ~500 rows): ``benchmarks/README.md``
("GPU performance notes").
"""

from __future__ import annotations

from typing import Optional

import torch

from ._dispatch import HAS_TRITON, backend_for
from ._launch import (
    RowView,
    block_config,
    check_same_device,
    chunk_elements,
    fused_reduce,
    launch,
    row_chunks,
    row_view,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = [
    "entropy_from_logits",
    "entropy_from_logits_reference",
    "selective_log_softmax",
    "selective_log_softmax_reference",
    "selective_log_softmax_and_entropy",
    "selective_log_softmax_and_entropy_reference",
]

#: elements per chunk buffer of the torch path (two float32 buffers of this size are the extra memory).
#: 2**18 float32 = 1 MiB: both buffers stay in a 2 MiB L2; at V = 151,936 a chunk is one row.
CHUNK_ELEMENTS = 1 << 18
#: log-probabilities below this are exactly 0 after exp in float32 and float64; clamping to it turns
#: ``0 * (-inf)`` into ``0 * (-1e4) = 0`` without changing any result.
_NEG_CLAMP = -1.0e4


# ----------------------------------------------------------------------------------------------------------
# fp64 references (plain autograd-able math)
# ----------------------------------------------------------------------------------------------------------
def selective_log_softmax_and_entropy_reference(logits, index, temperature: float = 1.0):
    """float64 ``(log_softmax(x/T)[index], entropy(softmax(x/T)))``; differentiable by autograd."""
    x = logits.double() / temperature
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    ent = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)  # 0 * (-inf) -> 0, grads too
    sel = logp.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)
    return sel, ent


def entropy_from_logits_reference(logits, temperature: float = 1.0):
    index = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return selective_log_softmax_and_entropy_reference(logits, index, temperature)[1]


def selective_log_softmax_reference(logits, index, temperature: float = 1.0):
    x = logits.double() / temperature
    logp = torch.log_softmax(x, dim=-1)
    if index.ndim == logits.ndim - 1:
        return logp.gather(-1, index.long().unsqueeze(-1)).squeeze(-1)
    return logp.gather(-1, index.long())


# ----------------------------------------------------------------------------------------------------------
# chunked torch implementation
# ----------------------------------------------------------------------------------------------------------
def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(
    n_rows: int, n_cols: int, max_rows: int | None = None, elements: int | None = None, device=None
) -> int:
    """Rows per chunk so that one chunk buffer holds about ``elements`` values (default: sized for ``device``,
    see :func:`kernels._launch.chunk_elements`; CPU: ``CHUNK_ELEMENTS``)."""
    if elements is None:
        dev = torch.device("cpu") if device is None else torch.device(device)
        elements = chunk_elements(dev, CHUNK_ELEMENTS)
    rows = max(1, elements // max(1, n_cols))
    if max_rows:
        rows = min(rows, max(1, int(max_rows)))
    return max(1, min(rows, max(1, n_rows)))


def chunk_lse_entropy(xc, inv_t: float, s, e, want_entropy: bool = True):
    """Row statistics of one chunk ``xc`` [n, V] (any float dtype) in the accumulation dtype of ``s``.

    ``s`` and ``e`` are scratch buffers of shape [n, V].  Returns ``(m, log_d, entropy or None)`` of
    ``softmax(xc * inv_t)`` where ``m`` is the row max of the *unscaled* ``xc`` and
    ``lse = m * inv_t + log_d``; ``log p_i = (x_i - m) * inv_t - log_d`` is then exact up to rounding of
    ``log_d`` (no large ``m * inv_t`` cancelling).
    """
    m = xc.amax(dim=1, keepdim=True).to(s.dtype)  # max of x/T is max(x)/T for T > 0
    torch.sub(xc, m, out=s)  # promotes a bf16/fp16 chunk to the fp32 buffer, no extra copy
    if inv_t != 1.0:
        s.mul_(inv_t)
    torch.exp(s, out=e)
    d = e.sum(dim=1)
    log_d = d.log()
    m = m.squeeze(1)
    if not want_entropy:
        return m, log_d, None
    s.clamp_(min=_NEG_CLAMP)  # -inf columns: e = 0 and s finite, so e * s = 0 instead of NaN
    if e.shape[0] == 1:
        t = torch.dot(e[0], s[0]).view(1)
    else:
        t = e.mul_(s).sum(dim=1)  # e is scratch from here on
    return m, log_d, log_d - t / d


def check_index_range(index, v: int, keep=None, what: str = "index") -> None:
    """Raise ``IndexError`` naming the first kept ``index`` outside ``[0, v)``, its position and ``v``.

    Called once per op call, before any kernel, on both paths (the Triton kernels never see a bad index).
    Cost: one elementwise pass over ``index`` (N integers) and, on CPU, no host synchronisation at all
    (``nonzero`` runs on the host).  On CUDA it is one reduction plus ONE host sync per call (reading whether any
    index is bad), never per chunk; while a CUDA graph is being captured (where a sync is not allowed) it is a
    device-side assert instead (no sync; a bad index then aborts with CUDA's "device-side assert triggered",
    without the value: rerun on CPU to see it)."""
    bad = (index < 0) | (index >= v)
    if keep is not None:
        bad &= keep
    if index.device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            torch._assert_async(~bad.any(), f"{what} out of range: every kept {what} must be in [0, {v})")
            return
        if not bool(bad.any()):  # the one host sync of the call
            return
    pos = bad.reshape(-1).nonzero()
    if pos.numel() == 0:
        return
    first = int(pos[0, 0])
    value = int(index.reshape(-1)[first])
    raise IndexError(
        f"{what} {value} at (flattened) position {first} is out of range [0, {v}) (the vocabulary size is {v}): every "
        f"{what} must be a token id of the LM head's vocabulary on rows that are not masked or ignored "
        f"({int(pos.shape[0])} such rows); check the label shift, the ignore_index and that the tokenizer matches "
        "the model's vocabulary"
    )


def lse_entropy_torch(rv: RowView, index=None, inv_t: float = 1.0, want_entropy: bool = True, max_rows=None, keep=None):
    """Chunked forward over the rows of ``rv``; ``keep`` [N] bool (or None): rows to compute.

    Returns ``(logp or None, entropy or None, stats)``; ``stats`` [N, 3] holds ``(m, log_d, entropy)`` per row
    (see :func:`chunk_lse_entropy`; the entropy column is 0 when ``want_entropy`` is False), all that the
    backward needs.  ``stats`` is a separate buffer from the returned entropy, so a caller may edit the returned
    outputs in place before the backward.  Rows not kept give 0.
    """
    n, v = rv.n, rv.v
    acc = acc_dtype(rv.x3.dtype)
    dev = rv.x3.device
    stats = torch.zeros(n, 3, dtype=acc, device=dev)
    ent = torch.empty(n, dtype=acc, device=dev) if want_entropy else None
    logp = torch.empty(n, dtype=acc, device=dev) if index is not None else None
    if n == 0:
        return logp, ent, stats
    if index is not None:
        safe = index if keep is None else torch.where(keep, index, torch.zeros_like(index))
    rows = chunk_rows(n, v, max_rows, device=dev)
    s_buf = torch.empty(rows, v, dtype=acc, device=dev)
    e_buf = torch.empty(rows, v, dtype=acc, device=dev)
    for i, k, (xc,) in row_chunks(rows, rv):
        m_c, logd_c, ent_c = chunk_lse_entropy(xc, inv_t, s_buf[:k], e_buf[:k], want_entropy)
        stats[i : i + k, 0] = m_c
        stats[i : i + k, 1] = logd_c
        if want_entropy:
            ent[i : i + k] = ent_c
            stats[i : i + k, 2] = ent_c
        if index is not None:
            xy = xc.gather(1, safe[i : i + k].unsqueeze(1)).squeeze(1).to(acc)
            logp[i : i + k] = (xy - m_c) * inv_t - logd_c
    if keep is not None:
        for t in (logp, ent, stats):
            if t is not None:
                t.masked_fill_(~(keep if t.ndim == 1 else keep.unsqueeze(1)), 0.0)
    return logp, ent, stats


def lse_entropy_grad_torch(rv: RowView, index, inv_t, stats, g_lp, g_ent, out, max_rows=None, keep=None):
    """Write ``d(sum g_lp*logp + g_ent*H)/dx`` for every row of ``rv`` into ``out`` [N, V] (chunked); rows not
    kept get 0.  ``stats`` [N, 3] = ``(m, log_d, H)`` from the forward."""
    n, v = rv.n, rv.v
    if n == 0:
        return out
    acc = stats.dtype
    if keep is not None:  # masked rows: zero row gradient (their stats are 0, any finite value works)
        g_lp = None if g_lp is None else torch.where(keep, g_lp, torch.zeros_like(g_lp))
        g_ent = None if g_ent is None else torch.where(keep, g_ent, torch.zeros_like(g_ent))
        if index is not None:
            index = torch.where(keep, index, torch.zeros_like(index))
    rows = chunk_rows(n, v, max_rows, device=rv.x3.device)
    direct = out.dtype == acc and out.is_contiguous()
    lp_buf = None if direct else torch.empty(rows, v, dtype=acc, device=rv.x3.device)
    p_buf = torch.empty(rows, v, dtype=acc, device=rv.x3.device)
    for i, k, (xc,) in row_chunks(rows, rv):
        lp = out[i : i + k] if direct else lp_buf[:k]
        p = p_buf[:k]
        torch.sub(xc, stats[i : i + k, 0:1], out=lp)
        if inv_t != 1.0:
            lp.mul_(inv_t)
        lp.sub_(stats[i : i + k, 1:2])  # log p
        torch.exp(lp, out=p)
        glp_c = g_lp[i : i + k].unsqueeze(1) if g_lp is not None else None
        if g_ent is not None:
            lp.clamp_(min=_NEG_CLAMP)
            lp.add_(stats[i : i + k, 2:3]).mul_(g_ent[i : i + k].unsqueeze(1))
            if glp_c is not None:
                lp.add_(glp_c)
            lp.mul_(p).neg_()  # -p * (g_lp + g_H (log p + H))
        else:
            torch.mul(p, -glp_c, out=lp)
        if glp_c is not None:  # one-hot term; an index outside [0, V) adds none (target in another vocab tile)
            idx_c = index[i : i + k]
            in_range = ((idx_c >= 0) & (idx_c < v)).unsqueeze(1)
            lp.scatter_add_(1, idx_c.clamp(0, v - 1).unsqueeze(1), torch.where(in_range, glp_c, 0.0))
        if inv_t != 1.0:
            lp.mul_(inv_t)
        if not direct:
            out[i : i + k].copy_(lp)
    if keep is not None:
        out.masked_fill_(~keep.unsqueeze(1), 0.0)  # exact zeros (p of a masked row is not 0)
    return out


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _sum2(a0, a1, b0, b1):
        return a0 + b0, a1 + b1

    @triton.jit
    def _row_start(ptr, R, stride_b, stride_r):
        """First element of this program's row of a [B, R, V] view with strides (stride_b, stride_r, 1).

        The division runs on the int32 program id (a 64-bit division is a slow subroutine that spilled in
        the compile gate); the offsets are int64 (row * stride overflows int32 at 8k x 152k)."""
        pid = tl.program_id(0)
        b = pid // R
        r = pid - b * R
        return ptr + b.to(tl.int64) * stride_b + r.to(tl.int64) * stride_r

    @triton.jit
    def _lse_entropy_fwd_kernel(
        x_ptr,
        stride_b,
        stride_r,
        R,
        idx_ptr,
        mask_ptr,
        logp_ptr,
        ent_ptr,
        stats_ptr,
        V,
        inv_t,
        HAS_INDEX: tl.constexpr,
        HAS_MASK: tl.constexpr,
        FUSED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        skip = False
        if HAS_MASK:
            skip = tl.load(mask_ptr + row) == 0
        if skip:  # masked row: no read of the logits, defined (zero) outputs
            tl.store(stats_ptr + 3 * row, 0.0)
            tl.store(stats_ptr + 3 * row + 1, 0.0)
            tl.store(stats_ptr + 3 * row + 2, 0.0)
            tl.store(ent_ptr + row, 0.0)
            if HAS_INDEX:
                tl.store(logp_ptr + row, 0.0)
        else:
            x_row = _row_start(x_ptr, R, stride_b, stride_r)
            cols = tl.arange(0, BLOCK)
            # Start at m = -inf, not a finite sentinel: with a tiny temperature (1/T > ~3e8) the rescale
            # (sentinel - x) / T overflowed to -inf and alpha * (shift * d) became 0 * (-inf) = NaN (issue 22,
            # defect 5).  Guards: a row that is all -inf so far shifts by 0 (its e are all 0), and when alpha
            # underflows to 0 the old terms are dropped as a whole (their limit e^shift * shift * d is 0).
            m = float("-inf")
            d = 0.0
            t = 0.0
            for start in range(0, V, BLOCK):
                offs = start + cols
                x = tl.load(x_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))  # max of raw x; scaled shifts below
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
                shift = (m - m_ref) * inv_t  # -inf at the first finite block: alpha = 0 while d = t = 0
                alpha = tl.exp(shift)
                s = (x - m_ref) * inv_t
                e = tl.exp(s)
                es = e * tl.where(e > 0.0, s, 0.0)  # masked / -inf lanes: 0 * (-inf) guarded
                if FUSED:
                    d_blk, t_blk = tl.reduce((e, es), 0, _sum2)  # one reduction tree for both sums
                else:
                    d_blk = tl.sum(e, axis=0)
                    t_blk = tl.sum(es, axis=0)
                t = tl.where(alpha > 0.0, alpha * (t + tl.where(d > 0.0, shift, 0.0) * d), 0.0) + t_blk
                d = alpha * d + d_blk
                m = m_new
            log_d = tl.log(d)
            ent = log_d - t / d
            tl.store(stats_ptr + 3 * row, m)
            tl.store(stats_ptr + 3 * row + 1, log_d)
            tl.store(stats_ptr + 3 * row + 2, ent)  # the backward's copy: the returned entropy may be edited
            tl.store(ent_ptr + row, ent)
            if HAS_INDEX:
                y = tl.load(idx_ptr + row).to(tl.int64)
                ok = (y >= 0) & (y < V)
                xy = tl.load(x_row + tl.where(ok, y, 0)).to(tl.float32)  # never an out-of-range read
                tl.store(logp_ptr + row, tl.where(ok, (xy - m) * inv_t - log_d, float("nan")))

    @triton.jit
    def _lse_entropy_bwd_kernel(
        x_ptr,
        stride_b,
        stride_r,
        R,
        gx_ptr,
        idx_ptr,
        mask_ptr,
        stats_ptr,
        glp_ptr,
        gent_ptr,
        V,
        inv_t,
        HAS_GLP: tl.constexpr,
        HAS_GENT: tl.constexpr,
        HAS_MASK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        gx_row = gx_ptr + row * V  # the gradient is a fresh contiguous [N, V] buffer
        cols = tl.arange(0, BLOCK)
        skip = False
        if HAS_MASK:
            skip = tl.load(mask_ptr + row) == 0
        if skip:  # masked row: zero gradient, no read of the logits
            for start in range(0, V, BLOCK):
                offs = start + cols
                tl.store(gx_row + offs, tl.zeros([BLOCK], dtype=gx_ptr.dtype.element_ty), mask=offs < V)
        else:
            x_row = _row_start(x_ptr, R, stride_b, stride_r)
            m = tl.load(stats_ptr + 3 * row)
            log_d = tl.load(stats_ptr + 3 * row + 1)
            ent = tl.load(stats_ptr + 3 * row + 2)
            glp = 0.0
            gent = 0.0
            y = -1
            if HAS_GLP:
                # an index outside [0, V) adds no one-hot term: the target lies in another vocabulary tile
                # (hidden-state ops); public ops reject out-of-range targets before any launch
                y = tl.load(idx_ptr + row).to(tl.int64)
                glp = tl.load(glp_ptr + row).to(tl.float32)
            if HAS_GENT:
                gent = tl.load(gent_ptr + row).to(tl.float32)
            for start in range(0, V, BLOCK):
                offs = start + cols
                mask = offs < V
                x = tl.load(x_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
                logp = (x - m) * inv_t - log_d
                p = tl.exp(logp)
                coef = glp + gent * (tl.where(p > 0.0, logp, 0.0) + ent)  # p = 0 lanes: no 0 * (-inf)
                g = -p * coef
                g = g + tl.where(offs == y, glp, 0.0)
                g = g * inv_t
                tl.store(gx_row + offs, g.to(gx_ptr.dtype.element_ty), mask=mask)


def lse_entropy_triton(rv: RowView, index=None, inv_t: float = 1.0, mask=None):
    n, v = rv.n, rv.v
    dev = rv.x3.device
    stats = torch.empty(n, 3, dtype=torch.float32, device=dev)
    ent = torch.empty(n, dtype=torch.float32, device=dev)
    logp = torch.empty(n, dtype=torch.float32, device=dev) if index is not None else None
    if n == 0:
        return logp, ent, stats
    block, warps = block_config(v)
    args = (
        *rv.kernel_args(),
        rv.r,
        index if index is not None else ent,
        mask if mask is not None else ent,
        logp if logp is not None else ent,
        ent,
        stats,
        v,
        float(inv_t),
    )
    meta = {"HAS_INDEX": index is not None, "HAS_MASK": mask is not None, "FUSED": fused_reduce(), "BLOCK": block}
    launch(_lse_entropy_fwd_kernel, n, args, meta, warps, dev)
    return logp, ent, stats


def lse_entropy_grad_triton(rv: RowView, index, inv_t, stats, g_lp, g_ent, out, mask=None):
    n, v = rv.n, rv.v
    if n == 0:
        return out
    block, warps = block_config(v)
    args = (
        *rv.kernel_args(),
        rv.r,
        out,
        index if index is not None else stats,
        mask if mask is not None else stats,
        stats,
        g_lp if g_lp is not None else stats,
        g_ent if g_ent is not None else stats,
        v,
        float(inv_t),
    )
    meta = {"HAS_GLP": g_lp is not None, "HAS_GENT": g_ent is not None, "HAS_MASK": mask is not None, "BLOCK": block}
    launch(_lse_entropy_bwd_kernel, n, args, meta, warps, rv.x3.device)
    return out


# ----------------------------------------------------------------------------------------------------------
# dispatch (also used by the hidden-state path in linear.py)
# ----------------------------------------------------------------------------------------------------------
def lse_entropy_forward(x, index, inv_t, backend, want_entropy=True, row_mask=None, max_rows=None):
    """``(logp [N] or None, entropy [N] or None, stats [N, 3])`` of ``x`` [..., V] (strided rows read in place)."""
    rv = row_view(x)
    if backend == "triton":
        return lse_entropy_triton(rv, index, inv_t, row_mask)
    keep = None if row_mask is None else row_mask.to(torch.bool)
    return lse_entropy_torch(rv, index, inv_t, want_entropy=want_entropy, max_rows=max_rows, keep=keep)


def lse_entropy_backward(x, index, inv_t, stats, g_lp, g_ent, out, backend, row_mask=None):
    """Fill ``out`` [N, V] (contiguous) with the gradient of ``sum g_lp * logp + g_ent * H``."""
    rv = row_view(x)
    if backend == "triton":
        return lse_entropy_grad_triton(rv, index, inv_t, stats, g_lp, g_ent, out, row_mask)
    keep = None if row_mask is None else row_mask.to(torch.bool)
    return lse_entropy_grad_torch(rv, index, inv_t, stats, g_lp, g_ent, out, keep=keep)


# ----------------------------------------------------------------------------------------------------------
# custom ops: opaque to torch.compile (no graph break, no recompile per token count), autograd registered
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("weakstrong::lse_entropy", mutates_args=())
def _lse_entropy_op(
    logits: torch.Tensor,
    index: Optional[torch.Tensor],
    row_mask: Optional[torch.Tensor],
    inv_t: float,
    max_rows: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp [N] (empty without index), entropy [N], stats [N, 3])``; N = rows of ``logits`` [..., V].

    ``stats`` = (row max, log of the shifted exp-sum, entropy) is what the backward saves; the returned
    ``logp`` and ``entropy`` are never saved, so callers may edit them in place before the backward."""
    if index is not None:
        check_index_range(index, logits.shape[-1], None if row_mask is None else row_mask.to(torch.bool))
    logp, ent, stats = lse_entropy_forward(logits, index, inv_t, backend, row_mask=row_mask, max_rows=max_rows or None)
    if logp is None:
        logp = ent.new_empty(0)
    return logp, ent, stats


@_lse_entropy_op.register_fake
def _(logits, index, row_mask, inv_t, max_rows, backend):
    n = 1
    for size in logits.shape[:-1]:  # symbolic product (torch.Size.numel() would specialise the sizes)
        n = n * size
    acc = acc_dtype(logits.dtype)
    return (
        logits.new_empty(n if index is not None else 0, dtype=acc),
        logits.new_empty(n, dtype=acc),
        logits.new_empty(n, 3, dtype=acc),
    )


@torch.library.custom_op("weakstrong::lse_entropy_backward", mutates_args=())
def _lse_entropy_bwd_op(
    logits: torch.Tensor,
    index: Optional[torch.Tensor],
    row_mask: Optional[torch.Tensor],
    stats: torch.Tensor,
    g_lp: Optional[torch.Tensor],
    g_ent: Optional[torch.Tensor],
    inv_t: float,
    backend: str,
) -> torch.Tensor:
    """Gradient w.r.t. ``logits`` (contiguous, ``logits.shape``, ``logits.dtype``)."""
    v = logits.shape[-1]
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    lse_entropy_backward(logits, index, inv_t, stats, g_lp, g_ent, out.view(-1, v), backend, row_mask)
    return out


@_lse_entropy_bwd_op.register_fake
def _(logits, index, row_mask, stats, g_lp, g_ent, inv_t, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _lse_entropy_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero-filled extra term)
    logits, index, row_mask, inv_t, _max_rows, backend = inputs
    ctx.save_for_backward(logits, index, row_mask, output[2])  # stats only: logp / entropy may be edited in place
    ctx.inv_t, ctx.backend = inv_t, backend


def _lse_entropy_grad(ctx, g_logp, g_ent, _g_stats):
    logits, index, row_mask, stats = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or (g_logp is None and g_ent is None):
        return None, None, None, None, None, None
    g_logp = g_logp.contiguous().to(stats.dtype) if (g_logp is not None and index is not None) else None
    g_ent = g_ent.contiguous().to(stats.dtype) if g_ent is not None else None
    gx = _lse_entropy_bwd_op(logits, index, row_mask, stats, g_logp, g_ent, ctx.inv_t, ctx.backend)
    return gx, None, None, None, None, None


torch.library.register_autograd("weakstrong::lse_entropy", _lse_entropy_grad, setup_context=_lse_entropy_setup)


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def _check_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return 1.0 / float(temperature)


def _flat_index(index: torch.Tensor) -> torch.Tensor:
    if index.is_floating_point() or index.is_complex():
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    return index.reshape(-1).to(torch.long)


def _flat_mask(row_mask: torch.Tensor | None, lead) -> torch.Tensor | None:
    if row_mask is None:
        return None
    if row_mask.shape != lead:
        raise ValueError(f"row_mask shape {tuple(row_mask.shape)} must equal logits.shape[:-1] = {tuple(lead)}")
    return row_mask.reshape(-1).to(torch.bool).view(torch.uint8)


def selective_log_softmax_and_entropy(
    logits: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
    *,
    entropy_requires_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax(logits/T)[index], entropy(softmax(logits/T)))`` in one pass, both float32 [...].

    Differentiable with respect to ``logits`` through both outputs.  ``index`` has shape ``logits.shape[:-1]``.
    ``row_mask`` (optional, same shape as ``index``): rows where it is 0 are skipped inside the kernel (never
    read, 0 for both outputs, 0 gradient) and may carry any index (e.g. -100).  An index outside
    ``[0, V)`` on a kept row raises ``IndexError`` on both paths.  ``entropy_requires_grad=False`` returns a detached entropy (TRL's
    keyword; keyword-only here because TRL has it in third position while this signature keeps
    ``temperature`` third).  float64 logits give float64 outputs (torch path).
    """
    inv_t = _check_temperature(temperature)
    lead = logits.shape[:-1]
    if index.shape != lead:
        raise ValueError(f"index shape {tuple(index.shape)} must equal logits.shape[:-1] = {tuple(lead)}")
    check_same_device(logits=logits, index=index, row_mask=row_mask)
    backend = backend_for(logits)
    logp, ent, _ = _lse_entropy_op(logits, _flat_index(index), _flat_mask(row_mask, lead), inv_t, 0, backend)
    logp, ent = logp.view(lead), ent.view(lead)
    if not entropy_requires_grad:
        ent = ent.detach()
    return logp, ent


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis; drop-in for TRL's ``entropy_from_logits``, differentiable.

    Returns ``logits.dtype`` (as TRL's torch path), shape ``logits.shape[:-1]``; accumulated in float32.
    ``chunk_size`` is accepted for signature compatibility: the torch path sizes its chunks by element
    count (``CHUNK_ELEMENTS`` on CPU, per device on CUDA), never more than ``chunk_size`` rows.
    """
    lead = logits.shape[:-1]
    backend = backend_for(logits)
    _, ent, _ = _lse_entropy_op(logits, None, None, 1.0, int(chunk_size or 0), backend)
    return ent.view(lead).to(logits.dtype)


def selective_log_softmax(
    logits: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log_softmax(logits / T)`` gathered at ``index``; drop-in for TRL's ``selective_log_softmax``.

    ``index`` of shape ``[...]`` (one per row, fused kernel) or ``[..., K]`` (chunked torch gather).
    Returns ``logits.dtype`` like TRL's torch path.  ``row_mask`` zeros rows where it is 0 (skipped inside the
    kernel for one index per row).
    """
    inv_t = _check_temperature(temperature)
    lead = logits.shape[:-1]
    if index.ndim == logits.ndim - 1:
        if index.shape != lead:
            raise ValueError(f"index shape {tuple(index.shape)} must equal logits.shape[:-1] = {tuple(lead)}")
        check_same_device(logits=logits, index=index, row_mask=row_mask)
        backend = backend_for(logits)
        logp, _, _ = _lse_entropy_op(logits, _flat_index(index), _flat_mask(row_mask, lead), inv_t, 0, backend)
        return logp.view(lead).to(logits.dtype)
    check_same_device(logits=logits, index=index, row_mask=row_mask)
    check_index_range(index, logits.shape[-1])  # [..., K] indices: every one is gathered, masked rows too
    out = _multi_index_logp(logits, index, inv_t)
    if row_mask is not None:
        out = out.masked_fill(~row_mask.to(torch.bool).unsqueeze(-1), 0.0)
    return out


def _multi_index_logp(logits, index, inv_t):
    """``[..., K]`` indices (top-K style): chunked ``x_k / T - logsumexp(x / T)`` through autograd (the
    fused kernel handles one index per row)."""
    v = logits.shape[-1]
    rv = row_view(logits)
    idx2d = index.reshape(-1, index.shape[-1]).to(torch.long)
    rows = chunk_rows(rv.n, v, device=logits.device)
    outs = []
    for i, k, (xc,) in row_chunks(rows, rv):
        xc = xc.to(acc_dtype(logits.dtype))
        if inv_t != 1.0:
            xc = xc * inv_t
        lse = torch.logsumexp(xc, dim=-1, keepdim=True)
        outs.append(xc.gather(1, idx2d[i : i + k]) - lse)
    out = torch.cat(outs, 0) if outs else logits.new_empty(0, index.shape[-1], dtype=torch.float32)
    return out.view(index.shape).to(logits.dtype)
