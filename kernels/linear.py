"""Hidden-state variants: the logits ``hidden @ weight.T (+ bias)`` are built one token chunk at a time.

* :func:`linear_selective_log_softmax_and_entropy` -> ``(logps, entropy)`` float32, like
  :func:`weakstrong.kernels.selective_log_softmax_and_entropy` applied to ``hidden @ weight.T + bias``.
* :func:`linear_mixed_cross_entropy` -> like :func:`weakstrong.kernels.mixed_cross_entropy` applied to
  ``strong_hidden @ strong_weight.T`` and ``weak_hidden @ weak_weight.T``.

Peak extra memory is O(chunk x V) (one or two logits chunks, their gradient chunk, and the row kernels'
scratch), never O(N x V).  The forward keeps only per-token statistics (lse, entropy); the backward
recomputes each chunk's logits from ``hidden`` and ``weight`` and accumulates ``grad_weight`` with
``addmm`` (in the weight's dtype, as Liger does) and ``grad_hidden`` chunk by chunk.

ZeRO-3: ``weight`` may be a partitioned parameter that the caller gathered for the call.  Nothing derived
from it (transposes, casts, views) is kept after the call; the backward reads ``weight`` as it is at
backward time, so it must be gathered then too (as the ZeRO-3 module hooks do for the module that owns
it).  An empty (released) weight in the backward raises a clear error instead of a shape error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import backend_for
from .entropy import _check_temperature, lse_entropy_backward, lse_entropy_forward
from .mixed_ce import AUX_FIELDS, _check_flags, check_mixed_args, finish_mixed, mixed_ce_backward, mixed_ce_forward

__all__ = [
    "linear_selective_log_softmax_and_entropy",
    "linear_selective_log_softmax_and_entropy_reference",
    "linear_mixed_cross_entropy",
    "linear_mixed_cross_entropy_reference",
]

#: logits elements per token chunk: CPU 2**24 (64 MiB fp32, ~110 tokens at V = 151,936: fewer tokens per chunk
#: make the matmul re-read the whole weight too often); CUDA 2**27 (0.5 GiB fp32, ~832 tokens).
CPU_CHUNK_ELEMENTS = 1 << 24
CUDA_CHUNK_ELEMENTS = 1 << 27


def default_token_chunk(n_tokens: int, vocab: int, device: torch.device) -> int:
    budget = CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CPU_CHUNK_ELEMENTS
    chunk = max(1, budget // max(1, vocab))
    if device.type == "cuda" and chunk >= 64:
        chunk = chunk // 64 * 64
    return max(1, min(chunk, max(1, n_tokens)))


def _require_gathered(weight: torch.Tensor, name: str) -> None:
    if weight.numel() == 0:
        raise RuntimeError(
            f"{name} is empty in the backward pass: a ZeRO-3 partitioned weight must be gathered for the "
            "backward as well as the forward (e.g. keep the call inside the owning module's forward, or "
            "wrap the backward in deepspeed.zero.GatheredParameters)."
        )


def _logits(h, weight, bias):
    return F.linear(h, weight, bias)


def _cast_for_backward(t, dtype):
    """The forward may have run under autocast (e.g. fp32 weight, bf16 logits); the backward is not
    autocast, so recompute in the forward's logits dtype explicitly (one cast per backward call)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# fp64 references
# ----------------------------------------------------------------------------------------------------------
def linear_selective_log_softmax_and_entropy_reference(hidden, weight, index, bias=None, temperature=1.0):
    from .entropy import selective_log_softmax_and_entropy_reference

    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    return selective_log_softmax_and_entropy_reference(logits, index, temperature)


def linear_mixed_cross_entropy_reference(
    strong_hidden,
    strong_weight,
    weak_hidden,
    weak_weight,
    labels,
    lam=0.5,
    ignore_index=-100,
    reduction="mean",
    return_entropies=False,
    return_stats=False,
):
    from .mixed_ce import mixed_cross_entropy_reference

    a = strong_hidden.double() @ strong_weight.double().T
    b = weak_hidden.double() @ weak_weight.double().T
    return mixed_cross_entropy_reference(a, b, labels, lam, ignore_index, reduction, return_entropies, return_stats)


# ----------------------------------------------------------------------------------------------------------
# selected log-probabilities + entropy from hidden states
# ----------------------------------------------------------------------------------------------------------
class _LinearLogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, index, inv_t, chunk, backend):
        n = hidden.shape[0]
        dev = hidden.device
        logp = torch.empty(n, dtype=torch.float32, device=dev)
        ent = torch.empty(n, dtype=torch.float32, device=dev)
        stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
        compute_dtype = None
        for i in range(0, n, chunk):
            logits = _logits(hidden[i : i + chunk], weight, bias)
            compute_dtype = logits.dtype
            lp, h, st = lse_entropy_forward(logits, index[i : i + chunk], inv_t, backend)
            k = logits.shape[0]
            logp[i : i + k], ent[i : i + k], stats[i : i + k] = lp, h, st
            del logits
        ctx.save_for_backward(hidden, weight, bias, index, stats, ent)
        ctx.inv_t, ctx.chunk, ctx.backend = inv_t, chunk, backend
        ctx.compute_dtype = compute_dtype or hidden.dtype
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, index, stats, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_lp is None and g_ent is None:
            return None, None, None, None, None, None, None
        _require_gathered(weight, "weight")
        g_lp = g_lp.contiguous().float() if g_lp is not None else None
        g_ent = g_ent.contiguous().float() if g_ent is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, memory_format=torch.contiguous_format) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        n, chunk = hidden.shape[0], ctx.chunk
        dt = ctx.compute_dtype
        w_dt, b_dt = _cast_for_backward(weight, dt), _cast_for_backward(bias, dt)
        for i in range(0, n, chunk):
            h_c = _cast_for_backward(hidden[i : i + chunk], dt)
            logits = _logits(h_c, w_dt, b_dt)
            k = logits.shape[0]
            gl = torch.empty_like(logits)
            lse_entropy_backward(
                logits,
                index[i : i + k],
                ctx.inv_t,
                stats[i : i + k],
                ent[i : i + k],
                g_lp[i : i + k] if g_lp is not None else None,
                g_ent[i : i + k] if g_ent is not None else None,
                gl,
                ctx.backend,
            )
            del logits
            if need_h:
                grad_h[i : i + k] = gl @ w_dt
            if need_w:
                grad_w.addmm_(_cast_for_backward(gl, grad_w.dtype).T, _cast_for_backward(h_c, grad_w.dtype))
            if need_b:
                grad_b += gl.float().sum(0)
            del gl
        del w_dt, b_dt
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def linear_selective_log_softmax_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``selective_log_softmax_and_entropy(hidden @ weight.T + bias, index, temperature)`` without the full logits.

    ``hidden``: ``[..., H]``; ``weight``: ``[V, H]``; ``index``: ``[...]``.  Returns float32 ``(logps, entropy)``
    of shape ``index.shape``, differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.  ``chunk_size``: tokens
    per chunk (default: about 16M logits per chunk on CPU, 128M on CUDA).
    """
    inv_t = _check_temperature(temperature)
    lead = hidden.shape[:-1]
    if index.shape != lead:
        raise ValueError(f"index shape {tuple(index.shape)} must equal hidden.shape[:-1] = {tuple(lead)}")
    h2d = hidden.reshape(-1, hidden.shape[-1])
    idx = index.reshape(-1).to(torch.long)
    chunk = chunk_size or default_token_chunk(h2d.shape[0], weight.shape[0], h2d.device)
    backend = backend_for(h2d, weight)
    logp, ent = _LinearLogpEntropy.apply(h2d, weight, bias, idx, inv_t, int(chunk), backend)
    return logp.view(lead), ent.view(lead)


# ----------------------------------------------------------------------------------------------------------
# mixed cross entropy from two models' hidden states
# ----------------------------------------------------------------------------------------------------------
class _LinearMixedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, sw, wh, ww, labels, lam, ignore_index, want_stats, chunk, backend):
        n = sh.shape[0]
        dev = sh.device
        loss = torch.empty(n, dtype=torch.float32, device=dev)
        stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
        aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=torch.float32, device=dev)
        dts = [None, None]
        # lam = 1 (0) without statistics never reads the weak (strong) logits: skip that matmul
        skip_b = lam == 1.0 and not want_stats
        skip_a = lam == 0.0 and not want_stats
        for i in range(0, n, chunk):
            a = None if skip_a else _logits(sh[i : i + chunk], sw, None)
            b = None if skip_b else _logits(wh[i : i + chunk], ww, None)
            a = b if a is None else a
            b = a if b is None else b
            dts = [a.dtype, b.dtype]
            k = a.shape[0]
            l_c, st_c, aux_c = mixed_ce_forward(a, b, labels[i : i + k], lam, ignore_index, want_stats, backend)
            loss[i : i + k], stats[i : i + k] = l_c, st_c
            if want_stats:
                aux[i : i + k] = aux_c
            del a, b
        ctx.save_for_backward(sh, sw, wh, ww, labels, stats)
        ctx.lam, ctx.ignore_index, ctx.chunk, ctx.backend = lam, ignore_index, chunk, backend
        ctx.compute_dtypes = (dts[0] or sh.dtype, dts[1] or wh.dtype)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(aux)
        return loss, aux

    @staticmethod
    def backward(ctx, g_loss, _g_aux):
        sh, sw, wh, ww, labels, stats = ctx.saved_tensors
        need_sh, need_sw, need_wh, need_ww = ctx.needs_input_grad[:4]
        none = (None,) * 10
        if g_loss is None:
            return none
        lam = ctx.lam
        need_a = (need_sh or need_sw) and lam != 0.0
        need_b = (need_wh or need_ww) and lam != 1.0
        g_sh = torch.zeros_like(sh) if need_sh else None
        g_sw = torch.zeros_like(sw, memory_format=torch.contiguous_format) if need_sw else None
        g_wh = torch.zeros_like(wh) if need_wh else None
        g_ww = torch.zeros_like(ww, memory_format=torch.contiguous_format) if need_ww else None
        if need_a or need_b:
            if lam != 0.0:
                _require_gathered(sw, "strong_weight")
            if lam != 1.0:
                _require_gathered(ww, "weak_weight")
            g_rows = g_loss.contiguous().float()
            n, chunk = sh.shape[0], ctx.chunk
            dta, dtb = ctx.compute_dtypes
            sw_dt = _cast_for_backward(sw, dta) if lam != 0.0 else None
            ww_dt = _cast_for_backward(ww, dtb) if lam != 1.0 else None
            for i in range(0, n, chunk):
                sh_c, wh_c = _cast_for_backward(sh[i : i + chunk], dta), _cast_for_backward(wh[i : i + chunk], dtb)
                a = _logits(sh_c, sw_dt, None) if lam != 0.0 else None
                b = _logits(wh_c, ww_dt, None) if lam != 1.0 else None
                a = b if a is None else a
                b = a if b is None else b
                k = a.shape[0]
                ga = torch.empty_like(a) if need_a else None
                gb = torch.empty_like(b) if need_b else None
                mixed_ce_backward(
                    a, b, labels[i : i + k], lam, ctx.ignore_index, stats[i : i + k], g_rows[i : i + k], ga, gb, ctx.backend
                )
                del a, b
                if need_a and need_sh:
                    g_sh[i : i + k] = (ga @ sw_dt).to(g_sh.dtype)
                if need_a and need_sw:
                    g_sw.addmm_(ga.T.to(g_sw.dtype), sh_c.to(g_sw.dtype))
                if need_b and need_wh:
                    g_wh[i : i + k] = (gb @ ww_dt).to(g_wh.dtype)
                if need_b and need_ww:
                    g_ww.addmm_(gb.T.to(g_ww.dtype), wh_c.to(g_ww.dtype))
                del ga, gb
            del sw_dt, ww_dt
        return g_sh, g_sw, g_wh, g_ww, None, None, None, None, None, None


def linear_mixed_cross_entropy(
    strong_hidden: torch.Tensor,
    strong_weight: torch.Tensor,
    weak_hidden: torch.Tensor,
    weak_weight: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_entropies: bool = False,
    chunk_size: int | None = None,
    return_stats: bool = False,
):
    """:func:`mixed_cross_entropy` of ``strong_hidden @ strong_weight.T`` and ``weak_hidden @ weak_weight.T``.

    ``strong_hidden``: ``[..., Hs]``, ``strong_weight``: ``[V, Hs]``, ``weak_hidden``: ``[..., Hw]``,
    ``weak_weight``: ``[V, Hw]`` (hidden sizes may differ, vocabularies must match), ``labels``: ``[...]``.
    Same reductions and return values as :func:`mixed_cross_entropy` (float32 loss), including
    ``return_stats=True`` -> ``(loss, MixedCEStats)`` (strong/weak entropy and NLL from the same matmuls).
    ``chunk_size``: tokens per chunk.
    """
    _check_flags(return_entropies, return_stats)
    check_mixed_args(lam, reduction)
    lam = float(lam)
    lead = strong_hidden.shape[:-1]
    if weak_hidden.shape[:-1] != lead or labels.shape != lead:
        raise ValueError("strong_hidden, weak_hidden and labels must share their leading shape")
    if strong_weight.shape[0] != weak_weight.shape[0]:
        raise ValueError("strong and weak vocabularies differ")
    sh = strong_hidden.reshape(-1, strong_hidden.shape[-1])
    wh = weak_hidden.reshape(-1, weak_hidden.shape[-1])
    y = labels.reshape(-1).to(torch.long)
    chunk = chunk_size or default_token_chunk(sh.shape[0], strong_weight.shape[0], sh.device)
    backend = backend_for(sh, strong_weight, wh, weak_weight)
    want = bool(return_entropies or return_stats)
    per_token, aux = _LinearMixedCE.apply(
        sh, strong_weight, wh, weak_weight, y, lam, int(ignore_index), want, int(chunk), backend
    )
    return finish_mixed(per_token, aux, y != ignore_index, lead, reduction, return_entropies, return_stats)
