"""Cross entropy of a mixture of two models' logits (WMSS), without storing the mixed logits.

``mixed_cross_entropy(strong, weak, labels, lam)`` is ``CE(softmax(lam*strong + (1-lam)*weak), labels)`` with
gradients ``lam (p - e_y) g`` to ``strong`` and ``(1 - lam) (p - e_y) g`` to ``weak``.  The mixed logits
``z`` only exist chunk by chunk (torch path) or in registers (Triton path).  With ``return_entropies=True``
the same pass also returns the per-token entropies of ``softmax(strong)`` and ``softmax(weak)`` (detached
statistics, float32, 0 at ignored tokens).

Per-token statistics (``return_stats=True``): ``(loss, MixedCEStats(strong_entropy, weak_entropy, strong_nll,
weak_nll))``, computed in the same pass over the logits (no second read, no second matmul on the hidden-state
path).  ``strong_nll = logsumexp(strong) - strong[y]`` and ``weak_nll = logsumexp(weak) - weak[y]`` are the
cross entropies of each model alone against the target.  All four are float32 (float64 for float64 inputs on
the torch path), shape ``labels.shape``, detached (never differentiable), and exactly 0 at ignored tokens.
``return_entropies=True`` keeps its old return ``(loss, strong_entropy, weak_entropy)``; passing both flags is
an error.

Rows with ``ignore_index`` are skipped inside the kernels (never read, loss and statistics 0, gradient 0); a
target outside ``[0, V)`` that is not ``ignore_index`` raises ``IndexError`` on both paths.  Strided
``[..., V]`` views are read in place.  The op is the ``torch.library`` custom op
``torch.ops.weakstrong.mixed_ce`` (fake implementation registered: ``torch.compile(fullgraph=True)`` traces it
as one node).  On a GPU the statistics pass merges its reductions (three maxima in one tuple ``tl.reduce``, then
five sums in one); at ``lam`` in {0, 1} the mixed statistics are those of one input and are not recomputed.

Losses are float32 (float64 for float64 inputs on the torch path), accumulated in float32 from any input dtype
(closeness to float64: see ``kernels/entropy.py``).  ``lam`` is a Python float in [0, 1]
(0 * (-inf) is treated as 0: with ``lam = 1`` the weak logits do not enter ``z`` at all, yet the weak input
still receives a zero gradient of its shape).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._dispatch import HAS_TRITON, backend_for
from ._launch import RowView, block_config, check_same_device, fused_reduce, launch, row_chunks, row_view
from .entropy import acc_dtype, check_index_range, chunk_lse_entropy, chunk_rows

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["MixedCEStats", "mixed_cross_entropy", "mixed_cross_entropy_reference"]

_REDUCTIONS = ("mean", "sum", "none")
#: columns of the per-token statistics buffer ``aux`` [N, 4] that the forward fills when asked
AUX_FIELDS = ("strong_entropy", "weak_entropy", "strong_nll", "weak_nll")


class MixedCEStats(NamedTuple):
    """Detached per-token statistics of :func:`mixed_cross_entropy` (shape ``labels.shape``, 0 at ignored tokens).

    ``strong_entropy``/``weak_entropy``: entropy (nats) of ``softmax(strong)``/``softmax(weak)``;
    ``strong_nll``/``weak_nll``: ``logsumexp(strong) - strong[y]`` / ``logsumexp(weak) - weak[y]``.
    """

    strong_entropy: torch.Tensor
    weak_entropy: torch.Tensor
    strong_nll: torch.Tensor
    weak_nll: torch.Tensor


def _check_flags(return_entropies: bool, return_stats: bool) -> None:
    if return_entropies and return_stats:
        raise ValueError("pass return_entropies=True or return_stats=True, not both (stats include the entropies)")


def split_stats(aux: torch.Tensor, lead) -> MixedCEStats:
    """``aux`` [N, 4] (see AUX_FIELDS) -> MixedCEStats of tensors shaped ``lead``."""
    return MixedCEStats(*(aux[:, j].view(lead) for j in range(len(AUX_FIELDS))))


# ----------------------------------------------------------------------------------------------------------
# fp64 reference
# ----------------------------------------------------------------------------------------------------------
def mixed_cross_entropy_reference(
    strong_logits,
    weak_logits,
    labels,
    lam: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_entropies: bool = False,
    return_stats: bool = False,
):
    """Plain float64 math, differentiable by autograd (for tests); same returns as :func:`mixed_cross_entropy`."""
    a = strong_logits.double()
    b = weak_logits.double()
    if lam == 1.0:
        z = a + 0.0 * torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    elif lam == 0.0:
        z = b + 0.0 * torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    else:
        z = lam * a + (1.0 - lam) * b
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    logp = torch.log_softmax(z, dim=-1)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    nll = torch.where(valid, nll, torch.zeros_like(nll))
    if reduction == "none":
        loss = nll
    elif reduction == "sum":
        loss = nll.sum()
    else:
        loss = nll.sum() / valid.sum().clamp(min=1)
    _check_flags(return_entropies, return_stats)
    if not (return_entropies or return_stats):
        return loss

    def _zero_ignored(t):
        return torch.where(valid, t, torch.zeros_like(t)).detach()

    def _ent(x):
        lp = torch.log_softmax(x, dim=-1)
        p = lp.exp()
        return _zero_ignored(-(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum(-1))

    def _nll(x):
        return _zero_ignored(-torch.log_softmax(x, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1))

    if return_entropies:
        return loss, _ent(a), _ent(b)
    return loss, MixedCEStats(_ent(a), _ent(b), _nll(a), _nll(b))


# ----------------------------------------------------------------------------------------------------------
# chunked torch implementation
# ----------------------------------------------------------------------------------------------------------
def _mix_into(z, ac, bc, lam: float):
    z.copy_(ac if lam != 0.0 else bc)
    if lam not in (0.0, 1.0):
        z.mul_(lam)
        z.add_(bc, alpha=1.0 - lam)  # computed in z's (float32) dtype
    return z


def _mixed_acc(a_dtype, b_dtype):
    return acc_dtype(a_dtype) if a_dtype == b_dtype else torch.float32


def mixed_ce_torch(ra: RowView, rb: RowView, labels, lam, ignore_index, want_stats, max_rows=None):
    """Returns (per-token loss [N] (0 at ignored), stats [N, 2] = (max z, log sum e^{z - max}), aux).

    ``aux`` is [N, 4] (columns AUX_FIELDS, 0 at ignored rows) when ``want_stats``, else an empty [0, 4].
    Targets are checked by the op that calls this (:func:`check_index_range`, once per call).
    """
    n, v = ra.n, ra.v
    acc = _mixed_acc(ra.x3.dtype, rb.x3.dtype)
    dev = ra.x3.device
    loss = torch.empty(n, dtype=acc, device=dev)
    stats = torch.empty(n, 2, dtype=acc, device=dev)
    aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=acc, device=dev)
    if n == 0:
        return loss, stats, aux
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    rows = chunk_rows(n, v, max_rows, device=dev)
    z_buf = torch.empty(rows, v, dtype=acc, device=dev)
    e_buf = torch.empty(rows, v, dtype=acc, device=dev)
    for i, k, (ac, bc) in row_chunks(rows, ra, rb):
        z, e = z_buf[:k], e_buf[:k]
        _mix_into(z, ac, bc, lam)
        sy = safe[i : i + k].unsqueeze(1)
        zy = z.gather(1, sy).squeeze(1)
        m_c, logd_c, _ = chunk_lse_entropy(z, 1.0, e, z, want_entropy=False)  # e <- z - m, z <- exp (scratch)
        stats[i : i + k, 0] = m_c
        stats[i : i + k, 1] = logd_c
        loss[i : i + k] = logd_c - (zy - m_c)
        if want_stats:
            for j, xc in enumerate((ac, bc)):
                xy = xc.gather(1, sy).squeeze(1).to(acc)
                m_x, logd_x, h = chunk_lse_entropy(xc, 1.0, z, e)
                aux[i : i + k, j] = h
                aux[i : i + k, 2 + j] = logd_x - (xy - m_x)
    loss.masked_fill_(~valid, 0.0)
    stats.masked_fill_(~valid.unsqueeze(1), 0.0)
    if want_stats:
        aux.masked_fill_(~valid.unsqueeze(1), 0.0)
    return loss, stats, aux


def mixed_ce_grad_torch(ra: RowView, rb: RowView, labels, lam, ignore_index, stats, g_rows, ga, gb, max_rows=None):
    """Write lam*(p - e_y)*g into ``ga`` and (1-lam)*(p - e_y)*g into ``gb`` ([N, V] each, either may be None)."""
    n, v = ra.n, ra.v
    if n == 0:
        return
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    g = torch.where(valid, g_rows.to(stats.dtype), torch.zeros_like(g_rows, dtype=stats.dtype))
    rows = chunk_rows(n, v, max_rows, device=ra.x3.device)
    z_buf = torch.empty(rows, v, dtype=stats.dtype, device=ra.x3.device)
    for i, k, (ac, bc) in row_chunks(rows, ra, rb):
        z = _mix_into(z_buf[:k], ac, bc, lam)
        z.sub_(stats[i : i + k, 0:1]).sub_(stats[i : i + k, 1:2]).exp_()  # p
        gc = g[i : i + k].unsqueeze(1)
        z.scatter_add_(1, safe[i : i + k], torch.full_like(gc, -1.0))  # p - e_y
        z.mul_(gc)
        z.masked_fill_(~valid[i : i + k].unsqueeze(1), 0.0)  # exact zeros at ignored rows, whatever their values
        if ga is not None:
            if lam == 1.0:
                ga[i : i + k].copy_(z)
            else:
                torch.mul(z, lam, out=ga[i : i + k])
        if gb is not None:
            if lam == 0.0:
                gb[i : i + k].copy_(z)
            else:
                torch.mul(z, 1.0 - lam, out=gb[i : i + k])


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
if HAS_TRITON:
    from .entropy import _row_start, _sum2

    @triton.jit
    def _max3(a0, a1, a2, b0, b1, b2):
        return tl.maximum(a0, b0), tl.maximum(a1, b1), tl.maximum(a2, b2)

    @triton.jit
    def _max2(a0, a1, b0, b1):
        return tl.maximum(a0, b0), tl.maximum(a1, b1)

    @triton.jit
    def _sum4(a0, a1, a2, a3, b0, b1, b2, b3):
        return a0 + b0, a1 + b1, a2 + b2, a3 + b3

    @triton.jit
    def _sum5(a0, a1, a2, a3, a4, b0, b1, b2, b3, b4):
        return a0 + b0, a1 + b1, a2 + b2, a3 + b3, a4 + b4

    @triton.jit
    def _mix(a, b, lam, MIX: tl.constexpr):
        # MIX: 0 general, 1 only a (lam == 1), 2 only b (lam == 0): no 0 * (-inf)
        if MIX == 1:
            z = a
        elif MIX == 2:
            z = b
        else:
            z = lam * a + (1.0 - lam) * b
        return z

    @triton.jit
    def _exp_terms(x, m_new):
        """e = exp(x - m'), e * (x - m') with masked / -inf lanes giving 0 (no 0 * (-inf))."""
        s = x - m_new
        e = tl.exp(s)
        return e, e * tl.where(e > 0.0, s, 0.0)

    @triton.jit
    def _rescale(m, m_new, d, t, d_blk, t_blk):
        """(d, t) of the (m, d, t) recurrence after the running max moves from m to m_new."""
        alpha = tl.exp(m - m_new)
        return alpha * d + d_blk, alpha * (t + (m - m_new) * d) + t_blk

    @triton.jit
    def _mixed_ce_fwd_kernel(
        a_ptr,
        a_stride_b,
        a_stride_r,
        b_ptr,
        b_stride_b,
        b_stride_r,
        R,
        y_ptr,
        loss_ptr,
        stats_ptr,
        aux_ptr,
        V,
        lam,
        ignore_index,
        MIX: tl.constexpr,
        WANT_STATS: tl.constexpr,
        FUSED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        y = tl.load(y_ptr + row).to(tl.int64)
        ignored = y == ignore_index
        bad = ((y < 0) | (y >= V)) & (y != ignore_index)
        if ignored | bad:  # no pass over the vocabulary; 0 (ignored) or NaN (target out of range)
            flag = tl.where(bad, float("nan"), 0.0)
            tl.store(loss_ptr + row, flag)
            tl.store(stats_ptr + 2 * row, 0.0)
            tl.store(stats_ptr + 2 * row + 1, 0.0)
            if WANT_STATS:
                for j in tl.static_range(4):
                    tl.store(aux_ptr + 4 * row + j, flag)
        else:
            a_row = _row_start(a_ptr, R, a_stride_b, a_stride_r)
            b_row = _row_start(b_ptr, R, b_stride_b, b_stride_r)
            # target logits first: the 64-bit target index is then dead during the loop (keeping it live across
            # the loop spilled it to local memory in the mixed-dtype variants; see kernels/compile_gate.py)
            ay = tl.load(a_row + y).to(tl.float32)
            by = tl.load(b_row + y).to(tl.float32)
            zy = _mix(ay, by, lam, MIX)
            cols = tl.arange(0, BLOCK)
            mz = -1.0e30
            dz = 0.0
            ma = -1.0e30
            da = 0.0
            ta = 0.0
            mb = -1.0e30
            db = 0.0
            tb = 0.0
            for start in range(0, V, BLOCK):
                offs = start + cols
                mask = offs < V
                a = tl.load(a_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
                b = tl.load(b_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
                z = _mix(a, b, lam, MIX)
                if WANT_STATS and MIX == 0:  # FUSED: three maxima in one reduction, then five sums in one
                    if FUSED:
                        bz, ba, bb = tl.reduce((z, a, b), 0, _max3)
                    else:
                        bz = tl.max(z, axis=0)
                        ba = tl.max(a, axis=0)
                        bb = tl.max(b, axis=0)
                    mz_new = tl.maximum(mz, bz)
                    ma_new = tl.maximum(ma, ba)
                    mb_new = tl.maximum(mb, bb)
                    ez = tl.exp(z - mz_new)
                    ea, esa = _exp_terms(a, ma_new)
                    eb, esb = _exp_terms(b, mb_new)
                    if FUSED:
                        sz, sda, sta, sdb, stb = tl.reduce((ez, ea, esa, eb, esb), 0, _sum5)
                    else:
                        sz = tl.sum(ez, axis=0)
                        sda = tl.sum(ea, axis=0)
                        sta = tl.sum(esa, axis=0)
                        sdb = tl.sum(eb, axis=0)
                        stb = tl.sum(esb, axis=0)
                    dz = dz * tl.exp(mz - mz_new) + sz
                    da, ta = _rescale(ma, ma_new, da, ta, sda, sta)
                    db, tb = _rescale(mb, mb_new, db, tb, sdb, stb)
                    mz = mz_new
                    ma = ma_new
                    mb = mb_new
                elif WANT_STATS:  # z is a (MIX 1) or b (MIX 2): its (m, d) are those of a or b, not recomputed
                    if FUSED:
                        ba, bb = tl.reduce((a, b), 0, _max2)
                    else:
                        ba = tl.max(a, axis=0)
                        bb = tl.max(b, axis=0)
                    ma_new = tl.maximum(ma, ba)
                    mb_new = tl.maximum(mb, bb)
                    ea, esa = _exp_terms(a, ma_new)
                    eb, esb = _exp_terms(b, mb_new)
                    if FUSED:
                        sda, sta, sdb, stb = tl.reduce((ea, esa, eb, esb), 0, _sum4)
                    else:
                        sda = tl.sum(ea, axis=0)
                        sta = tl.sum(esa, axis=0)
                        sdb = tl.sum(eb, axis=0)
                        stb = tl.sum(esb, axis=0)
                    da, ta = _rescale(ma, ma_new, da, ta, sda, sta)
                    db, tb = _rescale(mb, mb_new, db, tb, sdb, stb)
                    ma = ma_new
                    mb = mb_new
                else:
                    m_new = tl.maximum(mz, tl.max(z, axis=0))
                    dz = dz * tl.exp(mz - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
                    mz = m_new
            if WANT_STATS and MIX == 1:
                mz = ma
                dz = da
            elif WANT_STATS and MIX == 2:
                mz = mb
                dz = db
            log_dz = tl.log(dz)
            tl.store(loss_ptr + row, log_dz - (zy - mz))
            tl.store(stats_ptr + 2 * row, mz)
            tl.store(stats_ptr + 2 * row + 1, log_dz)
            if WANT_STATS:
                log_da = tl.log(da)
                log_db = tl.log(db)
                tl.store(aux_ptr + 4 * row, log_da - ta / da)
                tl.store(aux_ptr + 4 * row + 1, log_db - tb / db)
                tl.store(aux_ptr + 4 * row + 2, log_da - (ay - ma))
                tl.store(aux_ptr + 4 * row + 3, log_db - (by - mb))

    @triton.jit
    def _mixed_ce_bwd_kernel(
        a_ptr,
        a_stride_b,
        a_stride_r,
        b_ptr,
        b_stride_b,
        b_stride_r,
        R,
        ga_ptr,
        gb_ptr,
        y_ptr,
        stats_ptr,
        g_ptr,
        V,
        lam,
        ignore_index,
        MIX: tl.constexpr,
        WRITE_A: tl.constexpr,
        WRITE_B: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        y = tl.load(y_ptr + row).to(tl.int64)
        ga_row = ga_ptr + row * V  # gradients are fresh contiguous [N, V] buffers
        gb_row = gb_ptr + row * V
        cols = tl.arange(0, BLOCK)
        if (y == ignore_index) | (y < 0) | (y >= V):  # ignored / invalid target: zero gradient, no read
            for start in range(0, V, BLOCK):
                offs = start + cols
                mask = offs < V
                if WRITE_A:
                    tl.store(ga_row + offs, tl.zeros([BLOCK], dtype=ga_ptr.dtype.element_ty), mask=mask)
                if WRITE_B:
                    tl.store(gb_row + offs, tl.zeros([BLOCK], dtype=gb_ptr.dtype.element_ty), mask=mask)
        else:
            a_row = _row_start(a_ptr, R, a_stride_b, a_stride_r)
            b_row = _row_start(b_ptr, R, b_stride_b, b_stride_r)
            mz = tl.load(stats_ptr + 2 * row)
            log_dz = tl.load(stats_ptr + 2 * row + 1)
            g = tl.load(g_ptr + row).to(tl.float32)
            ca = lam * g
            cb = (1.0 - lam) * g
            for start in range(0, V, BLOCK):
                offs = start + cols
                mask = offs < V
                a = tl.load(a_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
                b = tl.load(b_row + offs, mask=mask, other=float("-inf")).to(tl.float32)
                z = _mix(a, b, lam, MIX)
                dz = tl.exp((z - mz) - log_dz) - tl.where(offs == y, 1.0, 0.0)
                if WRITE_A:
                    tl.store(ga_row + offs, (ca * dz).to(ga_ptr.dtype.element_ty), mask=mask)
                if WRITE_B:
                    tl.store(gb_row + offs, (cb * dz).to(gb_ptr.dtype.element_ty), mask=mask)


def _mix_mode(lam: float) -> int:
    return 1 if lam == 1.0 else (2 if lam == 0.0 else 0)


def mixed_ce_triton(ra: RowView, rb: RowView, labels, lam, ignore_index, want_stats):
    n, v = ra.n, ra.v
    dev = ra.x3.device
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=torch.float32, device=dev)
    if n == 0:
        return loss, stats, aux
    block, warps = block_config(v, streams=2)  # two logit streams: half the block keeps register headroom
    args = (
        *ra.kernel_args(),
        *rb.kernel_args(),
        ra.r,
        labels,
        loss,
        stats,
        aux if want_stats else loss,
        v,
        float(lam),
        int(ignore_index),
    )
    meta = {"MIX": _mix_mode(lam), "WANT_STATS": bool(want_stats), "FUSED": fused_reduce(), "BLOCK": block}
    launch(_mixed_ce_fwd_kernel, n, args, meta, warps, dev)
    return loss, stats, aux


def mixed_ce_grad_triton(ra: RowView, rb: RowView, labels, lam, ignore_index, stats, g_rows, ga, gb):
    n, v = ra.n, ra.v
    if n == 0 or (ga is None and gb is None):
        return
    block, warps = block_config(v, streams=2)  # two logit streams: half the block keeps register headroom
    args = (
        *ra.kernel_args(),
        *rb.kernel_args(),
        ra.r,
        ga if ga is not None else gb,
        gb if gb is not None else ga,
        labels,
        stats,
        g_rows,
        v,
        float(lam),
        int(ignore_index),
    )
    meta = {"MIX": _mix_mode(lam), "WRITE_A": ga is not None, "WRITE_B": gb is not None, "BLOCK": block}
    launch(_mixed_ce_bwd_kernel, n, args, meta, warps, ra.x3.device)


# ----------------------------------------------------------------------------------------------------------
# dispatch (also used by the hidden-state path in linear.py)
# ----------------------------------------------------------------------------------------------------------
def mixed_ce_forward(a, b, labels, lam, ignore_index, want_stats, backend):
    """(per-token loss [N], stats [N, 2], aux [N, 4] or [0, 4]) of ``a``, ``b`` [..., V] on ``backend``."""
    ra, rb = row_view(a), row_view(b)
    if backend == "triton":
        return mixed_ce_triton(ra, rb, labels, lam, ignore_index, want_stats)
    return mixed_ce_torch(ra, rb, labels, lam, ignore_index, want_stats)


def mixed_ce_backward(a, b, labels, lam, ignore_index, stats, g_rows, ga, gb, backend):
    """Fill ``ga`` / ``gb`` ([N, V] contiguous, or None) with the gradients of ``sum g_rows * loss``."""
    ra, rb = row_view(a), row_view(b)
    if backend == "triton":
        return mixed_ce_grad_triton(ra, rb, labels, lam, ignore_index, stats, g_rows, ga, gb)
    return mixed_ce_grad_torch(ra, rb, labels, lam, ignore_index, stats, g_rows, ga, gb)


# ----------------------------------------------------------------------------------------------------------
# custom ops (see entropy.py) + public API
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("weakstrong::mixed_ce", mutates_args=())
def _mixed_ce_op(
    strong_logits: torch.Tensor,
    weak_logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    ignore_index: int,
    want_stats: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per-token loss [N], stats [N, 2], aux [N, 4] or [0, 4])``."""
    check_index_range(labels, strong_logits.shape[-1], labels != ignore_index, what="label")
    return mixed_ce_forward(strong_logits, weak_logits, labels, lam, ignore_index, want_stats, backend)


@_mixed_ce_op.register_fake
def _(strong_logits, weak_logits, labels, lam, ignore_index, want_stats, backend):
    n = labels.shape[0]
    acc = _mixed_acc(strong_logits.dtype, weak_logits.dtype)
    new = strong_logits.new_empty
    return new(n, dtype=acc), new(n, 2, dtype=acc), new(n if want_stats else 0, len(AUX_FIELDS), dtype=acc)


@torch.library.custom_op("weakstrong::mixed_ce_backward", mutates_args=())
def _mixed_ce_bwd_op(
    strong_logits: torch.Tensor,
    weak_logits: torch.Tensor,
    labels: torch.Tensor,
    stats: torch.Tensor,
    g_rows: torch.Tensor,
    lam: float,
    ignore_index: int,
    need_strong: bool,
    need_weak: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. both logits (contiguous, input shapes and dtypes; an empty tensor where not needed)."""
    v = strong_logits.shape[-1]

    def _grad(x, need):
        return torch.empty(x.shape if need else (0,), dtype=x.dtype, device=x.device)

    ga, gb = _grad(strong_logits, need_strong), _grad(weak_logits, need_weak)
    mixed_ce_backward(
        strong_logits,
        weak_logits,
        labels,
        lam,
        ignore_index,
        stats,
        g_rows,
        ga.view(-1, v) if need_strong else None,
        gb.view(-1, v) if need_weak else None,
        backend,
    )
    return ga, gb


@_mixed_ce_bwd_op.register_fake
def _(strong_logits, weak_logits, labels, stats, g_rows, lam, ignore_index, need_strong, need_weak, backend):
    def _grad(x, need):
        return x.new_empty(x.shape if need else (0,))

    return _grad(strong_logits, need_strong), _grad(weak_logits, need_weak)


def _mixed_ce_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero-filled extra term)
    a, b, labels, lam, ignore_index, _want, backend = inputs
    ctx.save_for_backward(a, b, labels, output[1])
    ctx.lam, ctx.ignore_index, ctx.backend = lam, ignore_index, backend


def _mixed_ce_grad(ctx, g_loss, _g_stats, _g_aux):
    a, b, labels, stats = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if g_loss is None or not (need_a or need_b):
        return None, None, None, None, None, None, None
    g_rows = g_loss.contiguous().to(stats.dtype)
    ga, gb = _mixed_ce_bwd_op(a, b, labels, stats, g_rows, ctx.lam, ctx.ignore_index, need_a, need_b, ctx.backend)
    return (ga if need_a else None), (gb if need_b else None), None, None, None, None, None


torch.library.register_autograd("weakstrong::mixed_ce", _mixed_ce_grad, setup_context=_mixed_ce_setup)


def reduce_token_losses(per_token, valid, reduction):
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    # mean over non-ignored tokens; 0 (not NaN) when all are ignored; no host sync
    return per_token.sum() / valid.sum().clamp(min=1).to(per_token.dtype)


def check_mixed_args(lam, reduction):
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def flat_labels(labels: torch.Tensor) -> torch.Tensor:
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    return labels.reshape(-1).to(torch.long)


def mixed_cross_entropy(
    strong_logits: torch.Tensor,
    weak_logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_entropies: bool = False,
    return_stats: bool = False,
):
    """Cross entropy of ``softmax(lam * strong + (1 - lam) * weak)`` against ``labels``.

    Args:
        strong_logits, weak_logits: ``[..., V]`` (same shape; dtypes may differ; batch/row-strided views such as
            ``logits[:, :-1]`` or a vocab-padded ``[..., :V]`` are read in place, not copied).
        labels: ``[...]`` integer targets, already aligned with the logits (the caller shifts).  A target outside
            ``[0, V)`` that is not ``ignore_index`` raises ``IndexError`` (value, position, V) on both paths.
        lam: mixing weight in [0, 1]; ``lam = 1`` is ordinary cross entropy of ``strong_logits``.
        ignore_index: tokens with this label contribute 0 loss and 0 gradient; the kernels never read their rows.
        reduction: ``"mean"`` (over non-ignored tokens, 0 when all are ignored), ``"sum"``, or ``"none"``
            (per token, shape ``labels.shape``, 0 at ignored tokens).
        return_entropies: also return the detached per-token entropies of ``softmax(strong_logits)`` and
            ``softmax(weak_logits)`` (0 at ignored tokens).
        return_stats: also return :class:`MixedCEStats` (strong/weak entropy and strong/weak NLL of the target,
            detached, 0 at ignored tokens), computed in the same pass.

    Returns:
        float32 loss (float64 for float64 inputs); ``(loss, strong_entropy, weak_entropy)`` with
        ``return_entropies``; ``(loss, MixedCEStats)`` with ``return_stats``.
    """
    _check_flags(return_entropies, return_stats)
    check_mixed_args(lam, reduction)
    lam = float(lam)
    if strong_logits.shape != weak_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(strong_logits.shape)} vs {tuple(weak_logits.shape)}")
    lead = strong_logits.shape[:-1]
    if labels.shape != lead:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal logits.shape[:-1] = {tuple(lead)}")
    y = flat_labels(labels)
    check_same_device(strong_logits=strong_logits, weak_logits=weak_logits, labels=labels)
    backend = backend_for(strong_logits, weak_logits)
    want = bool(return_entropies or return_stats)
    per_token, _, aux = _mixed_ce_op(strong_logits, weak_logits, y, lam, int(ignore_index), want, backend)
    return finish_mixed(per_token, aux.detach(), y != ignore_index, lead, reduction, return_entropies, return_stats)


def finish_mixed(per_token, aux, valid, lead, reduction, return_entropies, return_stats):
    """Reduce the per-token loss and shape the optional statistics (shared by the logits and hidden paths)."""
    loss = reduce_token_losses(per_token, valid, reduction)
    if reduction == "none":
        loss = loss.view(lead)
    if return_stats:
        return loss, split_stats(aux, lead)
    if return_entropies:
        st = split_stats(aux, lead)
        return loss, st.strong_entropy, st.weak_entropy
    return loss
