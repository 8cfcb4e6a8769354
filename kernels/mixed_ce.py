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

Losses are float32 (float64 for float64 inputs on the torch path).  ``lam`` is a Python float in [0, 1]
(0 * (-inf) is treated as 0: with ``lam = 1`` the weak logits do not enter ``z`` at all, yet the weak input
still receives a zero gradient of its shape).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._dispatch import HAS_TRITON, backend_for
from .entropy import _as_rows, acc_dtype, block_config, chunk_lse_entropy, chunk_rows

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


def mixed_ce_torch(a2d, b2d, labels, lam, ignore_index, want_stats, max_rows=None):
    """Returns (per-token loss [N] (0 at ignored), stats [N, 2] = (max z, log sum e^{z - max}), aux).

    ``aux`` is [N, 4] (columns AUX_FIELDS, 0 at ignored rows) when ``want_stats``, else an empty [0, 4].
    """
    n, v = a2d.shape
    acc = acc_dtype(a2d.dtype) if a2d.dtype == b2d.dtype else torch.float32
    dev = a2d.device
    loss = torch.empty(n, dtype=acc, device=dev)
    stats = torch.empty(n, 2, dtype=acc, device=dev)
    aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=acc, device=dev)
    if n == 0:
        return loss, stats, aux
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    rows = chunk_rows(n, v, max_rows)
    z_buf = torch.empty(rows, v, dtype=acc, device=dev)
    e_buf = torch.empty(rows, v, dtype=acc, device=dev)
    for i in range(0, n, rows):
        ac, bc = a2d[i : i + rows], b2d[i : i + rows]
        k = ac.shape[0]
        z, e = z_buf[:k], e_buf[:k]
        _mix_into(z, ac, bc, lam)
        zy = z.gather(1, safe[i : i + k].unsqueeze(1)).squeeze(1)
        m_c, logd_c, _ = chunk_lse_entropy(z, 1.0, e, z, want_entropy=False)  # e <- z - m, z <- exp (scratch)
        vc = valid[i : i + k]
        stats[i : i + k, 0] = m_c
        stats[i : i + k, 1] = logd_c
        nll = logd_c - (zy - m_c)
        loss[i : i + k] = torch.where(vc, nll, torch.zeros_like(nll))
        if want_stats:
            sy = safe[i : i + k].unsqueeze(1)
            for j, xc in enumerate((ac, bc)):
                xy = xc.gather(1, sy).squeeze(1).to(acc)
                m_x, logd_x, h = chunk_lse_entropy(xc, 1.0, z, e)
                aux[i : i + k, j] = torch.where(vc, h, torch.zeros_like(h))
                nll_x = logd_x - (xy - m_x)
                aux[i : i + k, 2 + j] = torch.where(vc, nll_x, torch.zeros_like(nll_x))
    return loss, stats, aux


def mixed_ce_grad_torch(a2d, b2d, labels, lam, ignore_index, stats, g_rows, ga, gb, max_rows=None):
    """Write lam*(p - e_y)*g into ``ga`` and (1-lam)*(p - e_y)*g into ``gb`` (either may be None)."""
    n, v = a2d.shape
    if n == 0:
        return
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    g = torch.where(valid, g_rows.to(stats.dtype), torch.zeros_like(g_rows, dtype=stats.dtype))
    rows = chunk_rows(n, v, max_rows)
    z_buf = torch.empty(rows, v, dtype=stats.dtype, device=a2d.device)
    for i in range(0, n, rows):
        ac, bc = a2d[i : i + rows], b2d[i : i + rows]
        k = ac.shape[0]
        z = _mix_into(z_buf[:k], ac, bc, lam)
        z.sub_(stats[i : i + k, 0:1]).sub_(stats[i : i + k, 1:2]).exp_()  # p
        gc = g[i : i + k].unsqueeze(1)
        z.scatter_add_(1, safe[i : i + k], torch.full_like(gc, -1.0))  # p - e_y
        z.mul_(gc)
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

    @triton.jit
    def _online_step(x, m, d, t):
        """One block of the (m, d, t) recurrence; masked / -inf lanes contribute 0."""
        m_new = tl.maximum(m, tl.max(x, axis=0))
        alpha = tl.exp(m - m_new)
        s = x - m_new
        e = tl.exp(s)
        es = e * tl.where(e > 0.0, s, 0.0)
        t = alpha * (t + (m - m_new) * d) + tl.sum(es, axis=0)
        d = alpha * d + tl.sum(e, axis=0)
        return m_new, d, t

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
    def _mixed_ce_fwd_kernel(
        a_ptr,
        a_stride,
        b_ptr,
        b_stride,
        y_ptr,
        loss_ptr,
        stats_ptr,
        aux_ptr,
        V,
        lam,
        ignore_index,
        MIX: tl.constexpr,
        WANT_STATS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        y = tl.load(y_ptr + row).to(tl.int64)
        if y == ignore_index:  # ignored row: no pass over the vocabulary
            tl.store(loss_ptr + row, 0.0)
            tl.store(stats_ptr + 2 * row, 0.0)
            tl.store(stats_ptr + 2 * row + 1, 0.0)
            if WANT_STATS:
                for j in tl.static_range(4):
                    tl.store(aux_ptr + 4 * row + j, 0.0)
        else:
            a_row = a_ptr + row * a_stride
            b_row = b_ptr + row * b_stride
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
                m_new = tl.maximum(mz, tl.max(z, axis=0))
                dz = dz * tl.exp(mz - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
                mz = m_new
                if WANT_STATS:
                    ma, da, ta = _online_step(a, ma, da, ta)
                    mb, db, tb = _online_step(b, mb, db, tb)
            log_dz = tl.log(dz)
            ay = tl.load(a_row + y).to(tl.float32)
            by = tl.load(b_row + y).to(tl.float32)
            zy = _mix(ay, by, lam, MIX)
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
        a_stride,
        b_ptr,
        b_stride,
        ga_ptr,
        ga_stride,
        gb_ptr,
        gb_stride,
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
        a_row = a_ptr + row * a_stride
        b_row = b_ptr + row * b_stride
        ga_row = ga_ptr + row * ga_stride
        gb_row = gb_ptr + row * gb_stride
        cols = tl.arange(0, BLOCK)
        if y == ignore_index:
            for start in range(0, V, BLOCK):
                offs = start + cols
                mask = offs < V
                zero = tl.zeros([BLOCK], dtype=tl.float32)
                if WRITE_A:
                    tl.store(ga_row + offs, zero.to(ga_ptr.dtype.element_ty), mask=mask)
                if WRITE_B:
                    tl.store(gb_row + offs, zero.to(gb_ptr.dtype.element_ty), mask=mask)
        else:
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


def mixed_ce_triton(a2d, b2d, labels, lam, ignore_index, want_stats):
    n, v = a2d.shape
    dev = a2d.device
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=torch.float32, device=dev)
    if n == 0:
        return loss, stats, aux
    block, warps = block_config(v)
    _mixed_ce_fwd_kernel[(n,)](
        a2d,
        a2d.stride(0),
        b2d,
        b2d.stride(0),
        labels,
        loss,
        stats,
        aux if want_stats else loss,
        v,
        float(lam),
        int(ignore_index),
        MIX=_mix_mode(lam),
        WANT_STATS=bool(want_stats),
        BLOCK=block,
        num_warps=warps,
    )
    return loss, stats, aux


def mixed_ce_grad_triton(a2d, b2d, labels, lam, ignore_index, stats, g_rows, ga, gb):
    n, v = a2d.shape
    if n == 0 or (ga is None and gb is None):
        return
    block, warps = block_config(v)
    _mixed_ce_bwd_kernel[(n,)](
        a2d,
        a2d.stride(0),
        b2d,
        b2d.stride(0),
        ga if ga is not None else gb,
        (ga if ga is not None else gb).stride(0),
        gb if gb is not None else ga,
        (gb if gb is not None else ga).stride(0),
        labels,
        stats,
        g_rows,
        v,
        float(lam),
        int(ignore_index),
        MIX=_mix_mode(lam),
        WRITE_A=ga is not None,
        WRITE_B=gb is not None,
        BLOCK=block,
        num_warps=warps,
    )


# ----------------------------------------------------------------------------------------------------------
# autograd + public API
# ----------------------------------------------------------------------------------------------------------
def mixed_ce_forward(a2d, b2d, labels, lam, ignore_index, want_stats, backend):
    """(per-token loss [N], stats [N, 2], aux [N, 4] or [0, 4]) on ``backend``."""
    if backend == "triton":
        return mixed_ce_triton(a2d, b2d, labels, lam, ignore_index, want_stats)
    return mixed_ce_torch(a2d, b2d, labels, lam, ignore_index, want_stats)


def mixed_ce_backward(a2d, b2d, labels, lam, ignore_index, stats, g_rows, ga, gb, backend):
    if backend == "triton":
        return mixed_ce_grad_triton(a2d, b2d, labels, lam, ignore_index, stats, g_rows, ga, gb)
    return mixed_ce_grad_torch(a2d, b2d, labels, lam, ignore_index, stats, g_rows, ga, gb)


class _MixedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a2d, b2d, labels, lam, ignore_index, want_stats, backend):
        loss, stats, aux = mixed_ce_forward(a2d, b2d, labels, lam, ignore_index, want_stats, backend)
        ctx.save_for_backward(a2d, b2d, labels, stats)
        ctx.lam, ctx.ignore_index, ctx.backend = lam, ignore_index, backend
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(aux)  # one distinct tensor (an empty [0, 4] when not asked for)
        return loss, aux

    @staticmethod
    def backward(ctx, g_loss, _g_aux):
        a2d, b2d, labels, stats = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_loss is None:
            return None, None, None, None, None, None, None
        ga = torch.empty_like(a2d, memory_format=torch.contiguous_format) if need_a else None
        gb = torch.empty_like(b2d, memory_format=torch.contiguous_format) if need_b else None
        g_rows = g_loss.contiguous().to(stats.dtype)
        mixed_ce_backward(a2d, b2d, labels, ctx.lam, ctx.ignore_index, stats, g_rows, ga, gb, ctx.backend)
        return ga, gb, None, None, None, None, None


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
        strong_logits, weak_logits: ``[..., V]`` (same shape; dtypes may differ).
        labels: ``[...]`` integer targets, already aligned with the logits (the caller shifts).
        lam: mixing weight in [0, 1]; ``lam = 1`` is ordinary cross entropy of ``strong_logits``.
        ignore_index: tokens with this label contribute 0 loss and 0 gradient.
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
    a2d, b2d = _as_rows(strong_logits), _as_rows(weak_logits)
    y = labels.reshape(-1).to(torch.long)
    backend = backend_for(a2d, b2d)
    want = bool(return_entropies or return_stats)
    per_token, aux = _MixedCE.apply(a2d, b2d, y, lam, int(ignore_index), want, backend)
    return finish_mixed(per_token, aux, y != ignore_index, lead, reduction, return_entropies, return_stats)


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
