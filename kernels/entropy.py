"""Entropy, selected log-probabilities, and both in one pass over the logits.

Public functions (all differentiable, any leading shape ``[..., V]``):

* :func:`entropy_from_logits` -- drop-in for ``trl.trainer.utils.entropy_from_logits`` (nats).  Returns the
  input dtype, like TRL's torch path (TRL's CUDA kernel returns float32); computed in float32.
* :func:`selective_log_softmax` -- drop-in for ``trl.trainer.utils.selective_log_softmax`` (index of shape
  ``[...]`` or ``[..., K]``, ``temperature``, ``row_mask``).  Returns the input dtype, like TRL's torch path.
* :func:`selective_log_softmax_and_entropy` -- ``(logps, entropy)``, both float32.

Implementation: one online pass per row keeping ``m`` (running max), ``d = sum exp(x - m)`` and
``t = sum exp(x - m) (x - m)``; when the max rises to ``m'``: ``d' = e^{m-m'} d``,
``t' = e^{m-m'} (t + (m - m') d)``.  Then ``lse = m + log d`` and ``H = log d - t / d`` (no cancellation
between ``lse`` and ``E[x]``).  The raw row max ``m`` and ``log d`` are saved (not their sum, so that
``log p = (x - m)/T - log d`` keeps full precision for large logits).  Backward recomputes ``p`` and uses
``dlogp_y/dx = e_y - p`` and ``dH/dx = -p (log p + H)``, both times ``1/T`` with a temperature.

Backends: Triton (one program per row, looping over the vocabulary in blocks) for CUDA tensors; a chunked
torch implementation otherwise whose extra memory is two ``rows x V`` float32 buffers with
``rows * V ~= CHUNK_ELEMENTS`` (independent of the number of tokens).  ``*_reference`` functions give the
plain float64 math for tests.
"""

from __future__ import annotations

import torch

from ._dispatch import HAS_TRITON, backend_for, interpreting, next_power_of_2

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


def chunk_rows(n_rows: int, n_cols: int, max_rows: int | None = None, elements: int | None = None) -> int:
    """Rows per chunk so that one chunk buffer holds about ``elements`` values."""
    budget = CHUNK_ELEMENTS if elements is None else elements
    rows = max(1, budget // max(1, n_cols))
    if max_rows is not None:
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


def lse_entropy_torch(x2d, index=None, inv_t: float = 1.0, want_entropy: bool = True, max_rows=None):
    """Chunked forward over rows of ``x2d`` [N, V].

    Returns ``(logp or None, entropy or None, stats)``; ``stats`` [N, 2] holds ``(m, log_d)`` per row (see
    :func:`chunk_lse_entropy`), all that the backward needs besides the entropy.
    """
    n, v = x2d.shape
    acc = acc_dtype(x2d.dtype)
    dev = x2d.device
    stats = torch.empty(n, 2, dtype=acc, device=dev)
    ent = torch.empty(n, dtype=acc, device=dev) if want_entropy else None
    logp = torch.empty(n, dtype=acc, device=dev) if index is not None else None
    if n == 0:
        return logp, ent, stats
    rows = chunk_rows(n, v, max_rows)
    s_buf = torch.empty(rows, v, dtype=acc, device=dev)
    e_buf = torch.empty(rows, v, dtype=acc, device=dev)
    for i in range(0, n, rows):
        xc = x2d[i : i + rows]
        k = xc.shape[0]
        m_c, logd_c, ent_c = chunk_lse_entropy(xc, inv_t, s_buf[:k], e_buf[:k], want_entropy)
        stats[i : i + k, 0] = m_c
        stats[i : i + k, 1] = logd_c
        if want_entropy:
            ent[i : i + k] = ent_c
        if index is not None:
            xy = xc.gather(1, index[i : i + k].unsqueeze(1)).squeeze(1).to(acc)
            logp[i : i + k] = (xy - m_c) * inv_t - logd_c
    return logp, ent, stats


def lse_entropy_grad_torch(x2d, index, inv_t, stats, ent, g_lp, g_ent, out, max_rows=None):
    """Write ``d(sum g_lp*logp + g_ent*H)/dx`` for every row of ``x2d`` into ``out`` (chunked)."""
    n, v = x2d.shape
    if n == 0:
        return out
    acc = stats.dtype
    rows = chunk_rows(n, v, max_rows)
    direct = out.dtype == acc and out.is_contiguous()
    lp_buf = None if direct else torch.empty(rows, v, dtype=acc, device=x2d.device)
    p_buf = torch.empty(rows, v, dtype=acc, device=x2d.device)
    for i in range(0, n, rows):
        xc = x2d[i : i + rows]
        k = xc.shape[0]
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
            lp.add_(ent[i : i + k].unsqueeze(1)).mul_(g_ent[i : i + k].unsqueeze(1))
            if glp_c is not None:
                lp.add_(glp_c)
            lp.mul_(p).neg_()  # -p * (g_lp + g_H (log p + H))
        else:
            torch.mul(p, -glp_c, out=lp)
        if glp_c is not None:
            lp.scatter_add_(1, index[i : i + k].unsqueeze(1), glp_c)
        if inv_t != 1.0:
            lp.mul_(inv_t)
        if not direct:
            out[i : i + k].copy_(lp)
    return out


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
def block_config(v: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a row of ``v`` columns.  Small blocks under the interpreter."""
    cap = 1024 if interpreting() else 8192
    block = min(cap, next_power_of_2(max(16, v)))
    warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    return block, warps


if HAS_TRITON:

    @triton.jit
    def _lse_entropy_fwd_kernel(
        x_ptr,
        x_stride,
        idx_ptr,
        logp_ptr,
        ent_ptr,
        stats_ptr,
        V,
        inv_t,
        HAS_INDEX: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        cols = tl.arange(0, BLOCK)
        m = -1.0e30  # finite start: exp(m - m') never sees (-inf) - (-inf)
        d = 0.0
        t = 0.0
        for start in range(0, V, BLOCK):
            offs = start + cols
            x = tl.load(x_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))  # max of raw x; scaled shifts below
            shift = (m - m_new) * inv_t
            alpha = tl.exp(shift)
            s = (x - m_new) * inv_t
            e = tl.exp(s)
            es = e * tl.where(e > 0.0, s, 0.0)  # masked / -inf lanes: 0 * (-inf) guarded
            t = alpha * (t + shift * d) + tl.sum(es, axis=0)
            d = alpha * d + tl.sum(e, axis=0)
            m = m_new
        log_d = tl.log(d)
        tl.store(stats_ptr + 2 * row, m)
        tl.store(stats_ptr + 2 * row + 1, log_d)
        tl.store(ent_ptr + row, log_d - t / d)
        if HAS_INDEX:
            y = tl.load(idx_ptr + row).to(tl.int64)
            xy = tl.load(x_row + y).to(tl.float32)
            tl.store(logp_ptr + row, (xy - m) * inv_t - log_d)

    @triton.jit
    def _lse_entropy_bwd_kernel(
        x_ptr,
        x_stride,
        gx_ptr,
        gx_stride,
        idx_ptr,
        stats_ptr,
        ent_ptr,
        glp_ptr,
        gent_ptr,
        V,
        inv_t,
        HAS_GLP: tl.constexpr,
        HAS_GENT: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        gx_row = gx_ptr + row * gx_stride
        cols = tl.arange(0, BLOCK)
        m = tl.load(stats_ptr + 2 * row)
        log_d = tl.load(stats_ptr + 2 * row + 1)
        ent = tl.load(ent_ptr + row)
        glp = 0.0
        gent = 0.0
        y = -1
        if HAS_GLP:
            glp = tl.load(glp_ptr + row).to(tl.float32)
            y = tl.load(idx_ptr + row).to(tl.int64)
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


def lse_entropy_triton(x2d, index=None, inv_t: float = 1.0):
    n, v = x2d.shape
    dev = x2d.device
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    ent = torch.empty(n, dtype=torch.float32, device=dev)
    logp = torch.empty(n, dtype=torch.float32, device=dev) if index is not None else None
    if n == 0:
        return logp, ent, stats
    block, warps = block_config(v)
    _lse_entropy_fwd_kernel[(n,)](
        x2d,
        x2d.stride(0),
        index if index is not None else ent,
        logp if logp is not None else ent,
        ent,
        stats,
        v,
        float(inv_t),
        HAS_INDEX=index is not None,
        BLOCK=block,
        num_warps=warps,
    )
    return logp, ent, stats


def lse_entropy_grad_triton(x2d, index, inv_t, stats, ent, g_lp, g_ent, out):
    n, v = x2d.shape
    if n == 0:
        return out
    block, warps = block_config(v)
    _lse_entropy_bwd_kernel[(n,)](
        x2d,
        x2d.stride(0),
        out,
        out.stride(0),
        index if index is not None else ent,
        stats,
        ent,
        g_lp if g_lp is not None else ent,
        g_ent if g_ent is not None else ent,
        v,
        float(inv_t),
        HAS_GLP=g_lp is not None,
        HAS_GENT=g_ent is not None,
        BLOCK=block,
        num_warps=warps,
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------
def lse_entropy_forward(x2d, index, inv_t, backend, want_entropy=True):
    if backend == "triton":
        return lse_entropy_triton(x2d, index, inv_t)
    return lse_entropy_torch(x2d, index, inv_t, want_entropy=want_entropy)


def lse_entropy_backward(x2d, index, inv_t, stats, ent, g_lp, g_ent, out, backend):
    if backend == "triton":
        return lse_entropy_grad_triton(x2d, index, inv_t, stats, ent, g_lp, g_ent, out)
    return lse_entropy_grad_torch(x2d, index, inv_t, stats, ent, g_lp, g_ent, out)


class _LogpEntropy(torch.autograd.Function):
    """(logp [N] or None, entropy [N]) of a contiguous 2-D logits tensor."""

    @staticmethod
    def forward(ctx, x2d, index, inv_t, backend):
        logp, ent, stats = lse_entropy_forward(x2d, index, inv_t, backend)
        ctx.save_for_backward(x2d, index, stats, ent)
        ctx.inv_t = inv_t
        ctx.backend = backend
        ctx.set_materialize_grads(False)
        if logp is None:
            return ent
        return logp, ent

    @staticmethod
    def backward(ctx, *grads):
        x2d, index, stats, ent = ctx.saved_tensors
        if index is None:
            g_lp, g_ent = None, grads[0]
        else:
            g_lp, g_ent = grads
        if not ctx.needs_input_grad[0] or (g_lp is None and g_ent is None):
            return None, None, None, None
        g_lp = g_lp.contiguous().to(stats.dtype) if g_lp is not None else None
        g_ent = g_ent.contiguous().to(stats.dtype) if g_ent is not None else None
        out = torch.empty_like(x2d, memory_format=torch.contiguous_format)
        lse_entropy_backward(x2d, index, ctx.inv_t, stats, ent, g_lp, g_ent, out, ctx.backend)
        return out, None, None, None


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    x = logits.reshape(-1, logits.shape[-1])
    if x.stride(-1) != 1 or (x.shape[0] > 1 and x.stride(0) != x.shape[1]):
        x = x.contiguous()
    return x


def _check_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return 1.0 / float(temperature)


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
    ``row_mask`` (optional, same shape as ``index``): rows where it is 0 return 0 for both outputs.
    ``entropy_requires_grad=False`` returns a detached entropy (TRL's keyword; keyword-only here because TRL
    has it in third position while this signature keeps ``temperature`` third).
    float64 logits give float64 outputs (torch path).
    """
    inv_t = _check_temperature(temperature)
    lead = logits.shape[:-1]
    if index.shape != lead:
        raise ValueError(f"index shape {tuple(index.shape)} must equal logits.shape[:-1] = {tuple(lead)}")
    x2d = _as_rows(logits)
    idx = index.reshape(-1).to(torch.long)
    backend = backend_for(x2d)
    logp, ent = _LogpEntropy.apply(x2d, idx, inv_t, backend)
    logp, ent = logp.view(lead), ent.view(lead)
    if not entropy_requires_grad:
        ent = ent.detach()
    if row_mask is not None:
        keep = row_mask.to(torch.bool)
        logp = logp.masked_fill(~keep, 0.0)
        ent = ent.masked_fill(~keep, 0.0)
    return logp, ent


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis; drop-in for TRL's ``entropy_from_logits``, differentiable.

    Returns ``logits.dtype`` (as TRL's torch path), shape ``logits.shape[:-1]``; accumulated in float32.
    ``chunk_size`` is accepted for signature compatibility: the torch path sizes its chunks by element
    count (``CHUNK_ELEMENTS``), never more than ``chunk_size`` rows.
    """
    lead = logits.shape[:-1]
    x2d = _as_rows(logits)
    backend = backend_for(x2d)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        if backend == "torch":
            _, ent, _ = lse_entropy_torch(x2d, None, 1.0, max_rows=chunk_size)
        else:
            _, ent, _ = lse_entropy_triton(x2d, None, 1.0)
    else:
        ent = _LogpEntropy.apply(x2d, None, 1.0, backend)
    return ent.view(lead).to(logits.dtype)


def selective_log_softmax(
    logits: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log_softmax(logits / T)`` gathered at ``index``; drop-in for TRL's ``selective_log_softmax``.

    ``index`` of shape ``[...]`` (one per row, fused kernel) or ``[..., K]`` (chunked torch gather).
    Returns ``logits.dtype`` like TRL's torch path.  ``row_mask`` zeros rows where it is 0.
    """
    inv_t = _check_temperature(temperature)
    lead = logits.shape[:-1]
    if index.ndim == logits.ndim - 1:
        x2d = _as_rows(logits)
        idx = index.reshape(-1).to(torch.long)
        backend = backend_for(x2d)
        logp, _ = _LogpEntropy.apply(x2d, idx, inv_t, backend)
        out = logp.view(lead).to(logits.dtype)
    else:
        out = _multi_index_logp(logits, index, inv_t)
    if row_mask is not None:
        keep = row_mask.to(torch.bool)
        out = out.masked_fill(~keep, 0.0)
    return out


def _multi_index_logp(logits, index, inv_t):
    """``[..., K]`` indices (top-K style): chunked ``x_k / T - logsumexp(x / T)`` through autograd (the
    fused kernel handles one index per row)."""
    v = logits.shape[-1]
    x2d = _as_rows(logits)
    idx2d = index.reshape(-1, index.shape[-1]).to(torch.long)
    rows = chunk_rows(x2d.shape[0], v)
    outs = []
    for i in range(0, x2d.shape[0], rows):
        xc = x2d[i : i + rows].to(acc_dtype(logits.dtype))
        if inv_t != 1.0:
            xc = xc * inv_t
        lse = torch.logsumexp(xc, dim=-1, keepdim=True)
        outs.append(xc.gather(1, idx2d[i : i + rows]) - lse)
    out = torch.cat(outs, 0) if outs else x2d.new_empty(0, index.shape[-1], dtype=torch.float32)
    return out.view(index.shape).to(logits.dtype)
