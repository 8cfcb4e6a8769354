"""Hidden-state variants: the logits ``hidden @ weight.T (+ bias)`` are built one token chunk at a time.

* :func:`linear_selective_log_softmax_and_entropy` -> ``(logps, entropy)`` float32, like
  :func:`weakstrong.kernels.selective_log_softmax_and_entropy` applied to ``hidden @ weight.T + bias``.
* :func:`linear_mixed_cross_entropy` -> like :func:`weakstrong.kernels.mixed_cross_entropy` applied to
  ``strong_hidden @ strong_weight.T`` and ``weak_hidden @ weak_weight.T``.

Peak extra memory is O(chunk x V) (one or two logits chunks, their gradient chunk, and the row kernels'
scratch), never O(N x V).  The forward keeps only per-token statistics (lse, entropy); the backward
recomputes each chunk's logits from ``hidden`` and ``weight`` and accumulates ``grad_weight`` (and
``grad_bias``) across chunks in ``accum_dtype`` (float32 by default, like TRL 1.16's fused head and Liger's
``accum_dtype=torch.float32``; rounded once to the weight's dtype at the end), ``grad_hidden`` chunk by chunk.
The float32 accumulator costs one weight-sized float32 buffer during the backward.

ZeRO-3: ``weight`` may be a partitioned parameter that the caller gathered for the call.  Nothing derived
from it (transposes, casts, views) is kept after the call; the backward reads ``weight`` as it is at
backward time, so it must be gathered then too (as the ZeRO-3 module hooks do for the module that owns
it).  An empty (released) weight in the backward raises a clear error instead of a shape error.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._dispatch import backend_for
from ._launch import check_same_device
from .entropy import _check_temperature, _flat_index, check_index_range, lse_entropy_backward, lse_entropy_forward
from .mixed_ce import (
    AUX_FIELDS,
    _check_flags,
    check_mixed_args,
    finish_mixed,
    flat_labels,
    mixed_ce_backward,
    mixed_ce_forward,
)

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


def _cast(t, dtype):
    """Inputs in the logits' compute dtype (one cast per call; the backward is not autocast, so both passes
    cast explicitly to the dtype chosen at the call, see :func:`compute_dtype`)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The logits dtype of ``F.linear(hidden, weight)`` at the call: the autocast dtype when autocast is on for
    the tensors' device type, else the promoted dtype of the two."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) in (torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _token_chunk(chunk_size: int, n: int, vocab: int, device) -> int:
    return int(chunk_size) if chunk_size else default_token_chunk(n, vocab, device)


def check_accum_dtype(accum_dtype) -> torch.dtype:
    if not isinstance(accum_dtype, torch.dtype) or not accum_dtype.is_floating_point:
        raise TypeError(f"accum_dtype must be a floating torch.dtype (default torch.float32), got {accum_dtype!r}")
    return accum_dtype


def accumulator_dtype(weight: torch.Tensor, accum_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``grad_weight`` (and ``grad_bias``) is summed in across token chunks: ``accum_dtype``, or the
    weight's dtype when that is wider (float64 weights stay float64)."""
    return torch.promote_types(weight.dtype, accum_dtype)


def addmm_acc(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with the product formed in ``acc``'s dtype, never rounded to ``a``'s dtype first.

    Why: rounding each chunk's ``[V, H]`` product to bf16 (unit roundoff u = 2^-8) and summing K of them in bf16
    adds a rounding of the running sum per chunk, an error that grows like sqrt(K) u; the float32 sum of exact
    products only adds float32 roundings (2^-24 each).  On CUDA with bf16/fp16 inputs the GEMM writes float32
    directly (``out_dtype``, tensor cores kept); elsewhere the inputs are cast (a chunk-sized copy)."""
    if a.dtype == acc.dtype and b.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda and acc.dtype == torch.float32 and a.dtype in (torch.float16, torch.bfloat16) and a.dtype == b.dtype:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A new contiguous tensor of ``t``'s shape, dtype and device: every gradient the backward ops return, real
    and fake alike (``empty_like`` would copy a transposed input's strides in the real op only)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor standing for 'no gradient' (custom ops return tensors only)."""
    return t.new_empty(0)


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
# selected log-probabilities + entropy from hidden states (custom ops: the chunk loop is opaque to
# torch.compile, so a new token count is a new symbolic size, not a recompile)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("weakstrong::linear_lse_entropy", mutates_args=())
def _linear_lse_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    index: torch.Tensor,
    inv_t: float,
    chunk_size: int,
    dtype: torch.dtype,
    accum_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_index_range(index, weight.shape[0])  # once per call, before any chunk
    n = hidden.shape[0]
    dev = hidden.device
    logp = torch.empty(n, dtype=torch.float32, device=dev)
    ent = torch.empty(n, dtype=torch.float32, device=dev)
    stats = torch.empty(n, 3, dtype=torch.float32, device=dev)
    chunk = _token_chunk(chunk_size, n, weight.shape[0], dev)
    w, b = _cast(weight, dtype), _cast(bias, dtype)
    for i in range(0, n, chunk):
        logits = _logits(_cast(hidden[i : i + chunk], dtype), w, b)
        lp, h, st = lse_entropy_forward(logits, index[i : i + chunk], inv_t, backend)
        k = logits.shape[0]
        logp[i : i + k], ent[i : i + k], stats[i : i + k] = lp, h, st
        del logits
    return logp, ent, stats


@_linear_lse_op.register_fake
def _(hidden, weight, bias, index, inv_t, chunk_size, dtype, accum_dtype, backend):
    n = hidden.shape[0]
    return hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(
        n, 3, dtype=torch.float32
    )


@torch.library.custom_op("weakstrong::linear_lse_entropy_backward", mutates_args=())
def _linear_lse_bwd_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    index: torch.Tensor,
    stats: torch.Tensor,
    g_lp: Optional[torch.Tensor],
    g_ent: Optional[torch.Tensor],
    inv_t: float,
    chunk_size: int,
    dtype: torch.dtype,
    accum_dtype: torch.dtype,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _require_gathered(weight, "weight")
    need_bias = need_bias and bias is not None
    acc = accumulator_dtype(weight, accum_dtype)
    grad_h = _fresh(hidden) if need_hidden else _placeholder(hidden)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
    grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_bias else None
    n = hidden.shape[0]
    chunk = _token_chunk(chunk_size, n, weight.shape[0], hidden.device)
    w_dt, b_dt = _cast(weight, dtype), _cast(bias, dtype)
    for i in range(0, n, chunk):
        h_c = _cast(hidden[i : i + chunk], dtype)
        logits = _logits(h_c, w_dt, b_dt)
        k = logits.shape[0]
        gl = torch.empty_like(logits)
        lse_entropy_backward(
            logits,
            index[i : i + k],
            inv_t,
            stats[i : i + k],
            g_lp[i : i + k] if g_lp is not None else None,
            g_ent[i : i + k] if g_ent is not None else None,
            gl,
            backend,
        )
        del logits
        if need_hidden:
            grad_h[i : i + k] = gl @ w_dt
        if need_weight:
            addmm_acc(grad_w, gl.T, h_c)
        if need_bias:
            grad_b += gl.sum(0, dtype=acc)
        del gl
    del w_dt, b_dt
    grad_w = grad_w.to(weight.dtype) if need_weight else _placeholder(weight)  # one rounding, at the end
    grad_b = grad_b.to(bias.dtype) if need_bias else _placeholder(weight)
    return grad_h, grad_w, grad_b


@_linear_lse_bwd_op.register_fake
def _(hidden, weight, bias, index, stats, g_lp, g_ent, inv_t, chunk_size, dtype, accum_dtype, need_h, need_w, need_b, backend):
    gb = bias.new_empty(bias.shape) if (need_b and bias is not None) else weight.new_empty(0)
    gh = _fresh(hidden) if need_h else hidden.new_empty(0)
    gw = _fresh(weight) if need_w else weight.new_empty(0)
    return gh, gw, gb


def _linear_lse_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero-filled extra term)
    hidden, weight, bias, index, inv_t, chunk_size, dtype, accum_dtype, backend = inputs
    ctx.save_for_backward(hidden, weight, bias, index, output[2])  # not logp / entropy: callers may edit those
    ctx.args = (inv_t, chunk_size, dtype, accum_dtype)
    ctx.backend = backend


def _linear_lse_grad(ctx, g_lp, g_ent, _g_stats):
    hidden, weight, bias, index, stats = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
        return (None,) * 9
    g_lp = g_lp.contiguous().float() if g_lp is not None else None
    g_ent = g_ent.contiguous().float() if g_ent is not None else None
    inv_t, chunk_size, dtype, accum_dtype = ctx.args
    gh, gw, gb = _linear_lse_bwd_op(
        hidden, weight, bias, index, stats, g_lp, g_ent, inv_t, chunk_size, dtype, accum_dtype, need_h, need_w, need_b,
        ctx.backend,
    )
    return (gh if need_h else None), (gw if need_w else None), (gb if need_b else None), *([None] * 6)


torch.library.register_autograd("weakstrong::linear_lse_entropy", _linear_lse_grad, setup_context=_linear_lse_setup)


def linear_selective_log_softmax_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    *,
    accum_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``selective_log_softmax_and_entropy(hidden @ weight.T + bias, index, temperature)`` without the full logits.

    ``hidden``: ``[..., H]``; ``weight``: ``[V, H]``; ``index``: ``[...]``.  Returns float32 ``(logps, entropy)``
    of shape ``index.shape``, differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.  ``chunk_size``: tokens
    per chunk (default: about 16M logits per chunk on CPU, 128M on CUDA).  ``accum_dtype``: the dtype the
    weight and bias gradients are summed in across chunks (float32 by default, rounded once to the weight's
    dtype at the end; ``torch.bfloat16`` reproduces a bf16 running sum, whose error grows with the chunk count).
    """
    check_accum_dtype(accum_dtype)
    inv_t = _check_temperature(temperature)
    lead = hidden.shape[:-1]
    if index.shape != lead:
        raise ValueError(f"index shape {tuple(index.shape)} must equal hidden.shape[:-1] = {tuple(lead)}")
    h2d = hidden.reshape(-1, hidden.shape[-1])
    check_same_device(hidden=hidden, weight=weight, index=index, bias=bias)
    backend = backend_for(h2d, weight)
    dtype = compute_dtype(h2d, weight)
    logp, ent, _ = _linear_lse_op(
        h2d, weight, bias, _flat_index(index), inv_t, int(chunk_size or 0), dtype, accum_dtype, backend
    )
    return logp.view(lead), ent.view(lead)


# ----------------------------------------------------------------------------------------------------------
# mixed cross entropy from two models' hidden states
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("weakstrong::linear_mixed_ce", mutates_args=())
def _linear_mixed_op(
    sh: torch.Tensor,
    sw: torch.Tensor,
    wh: torch.Tensor,
    ww: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    ignore_index: int,
    want_stats: bool,
    chunk_size: int,
    strong_dtype: torch.dtype,
    weak_dtype: torch.dtype,
    accum_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_index_range(labels, sw.shape[0], labels != ignore_index, what="label")  # once per call
    n = sh.shape[0]
    dev = sh.device
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    stats = torch.empty(n, 2, dtype=torch.float32, device=dev)
    aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=torch.float32, device=dev)
    # lam = 1 (0) without statistics never reads the weak (strong) logits: skip that matmul
    skip_b = lam == 1.0 and not want_stats
    skip_a = lam == 0.0 and not want_stats
    chunk = _token_chunk(chunk_size, n, sw.shape[0], dev)
    sw_dt = None if skip_a else _cast(sw, strong_dtype)
    ww_dt = None if skip_b else _cast(ww, weak_dtype)
    for i in range(0, n, chunk):
        a = None if skip_a else _logits(_cast(sh[i : i + chunk], strong_dtype), sw_dt, None)
        b = None if skip_b else _logits(_cast(wh[i : i + chunk], weak_dtype), ww_dt, None)
        a = b if a is None else a
        b = a if b is None else b
        k = a.shape[0]
        l_c, st_c, aux_c = mixed_ce_forward(a, b, labels[i : i + k], lam, ignore_index, want_stats, backend)
        loss[i : i + k], stats[i : i + k] = l_c, st_c
        if want_stats:
            aux[i : i + k] = aux_c
        del a, b
    return loss, stats, aux


@_linear_mixed_op.register_fake
def _(sh, sw, wh, ww, labels, lam, ignore_index, want_stats, chunk_size, strong_dtype, weak_dtype, accum_dtype, backend):
    n = sh.shape[0]
    f32 = torch.float32
    return sh.new_empty(n, dtype=f32), sh.new_empty(n, 2, dtype=f32), sh.new_empty(n if want_stats else 0, 4, dtype=f32)


@torch.library.custom_op("weakstrong::linear_mixed_ce_backward", mutates_args=())
def _linear_mixed_bwd_op(
    sh: torch.Tensor,
    sw: torch.Tensor,
    wh: torch.Tensor,
    ww: torch.Tensor,
    labels: torch.Tensor,
    stats: torch.Tensor,
    g_rows: torch.Tensor,
    lam: float,
    ignore_index: int,
    chunk_size: int,
    strong_dtype: torch.dtype,
    weak_dtype: torch.dtype,
    accum_dtype: torch.dtype,
    needs: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    need_sh, need_sw, need_wh, need_ww = needs
    need_a = (need_sh or need_sw) and lam != 0.0
    need_b = (need_wh or need_ww) and lam != 1.0
    g_sh = _fresh(sh).zero_() if need_sh else _placeholder(sh)
    g_sw = torch.zeros(sw.shape, dtype=accumulator_dtype(sw, accum_dtype), device=sw.device) if need_sw else None
    g_wh = _fresh(wh).zero_() if need_wh else _placeholder(wh)
    g_ww = torch.zeros(ww.shape, dtype=accumulator_dtype(ww, accum_dtype), device=ww.device) if need_ww else None

    def _finish():
        return (
            g_sh,
            g_sw.to(sw.dtype) if need_sw else _placeholder(sw),  # one rounding, at the end
            g_wh,
            g_ww.to(ww.dtype) if need_ww else _placeholder(ww),
        )

    if not (need_a or need_b):
        return _finish()
    if lam != 0.0:
        _require_gathered(sw, "strong_weight")
    if lam != 1.0:
        _require_gathered(ww, "weak_weight")
    n = sh.shape[0]
    chunk = _token_chunk(chunk_size, n, sw.shape[0], sh.device)
    sw_dt = _cast(sw, strong_dtype) if lam != 0.0 else None
    ww_dt = _cast(ww, weak_dtype) if lam != 1.0 else None
    for i in range(0, n, chunk):
        sh_c, wh_c = _cast(sh[i : i + chunk], strong_dtype), _cast(wh[i : i + chunk], weak_dtype)
        a = _logits(sh_c, sw_dt, None) if lam != 0.0 else None
        b = _logits(wh_c, ww_dt, None) if lam != 1.0 else None
        a = b if a is None else a
        b = a if b is None else b
        k = a.shape[0]
        ga = torch.empty_like(a) if need_a else None
        gb = torch.empty_like(b) if need_b else None
        mixed_ce_backward(a, b, labels[i : i + k], lam, ignore_index, stats[i : i + k], g_rows[i : i + k], ga, gb, backend)
        del a, b
        if need_a and need_sh:
            g_sh[i : i + k] = (ga @ sw_dt).to(g_sh.dtype)
        if need_a and need_sw:
            addmm_acc(g_sw, ga.T, sh_c)
        if need_b and need_wh:
            g_wh[i : i + k] = (gb @ ww_dt).to(g_wh.dtype)
        if need_b and need_ww:
            addmm_acc(g_ww, gb.T, wh_c)
        del ga, gb
    del sw_dt, ww_dt
    return _finish()


@_linear_mixed_bwd_op.register_fake
def _(sh, sw, wh, ww, labels, stats, g_rows, lam, ignore_index, chunk_size, strong_dtype, weak_dtype, accum_dtype, needs,
      backend):
    outs = []
    for t, need in zip((sh, sw, wh, ww), needs):
        outs.append(_fresh(t) if need else t.new_empty(0))
    return tuple(outs)


def _linear_mixed_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero-filled extra term)
    sh, sw, wh, ww, labels, lam, ignore_index, _want, chunk_size, sdt, wdt, accum_dtype, backend = inputs
    ctx.save_for_backward(sh, sw, wh, ww, labels, output[1])
    ctx.args = (lam, ignore_index, chunk_size, sdt, wdt, accum_dtype)
    ctx.backend = backend


def _linear_mixed_grad(ctx, g_loss, _g_stats, _g_aux):
    sh, sw, wh, ww, labels, stats = ctx.saved_tensors
    needs = [bool(x) for x in ctx.needs_input_grad[:4]]
    if g_loss is None or not any(needs):
        return (None,) * 13
    lam, ignore_index, chunk_size, sdt, wdt, accum_dtype = ctx.args
    grads = _linear_mixed_bwd_op(
        sh, sw, wh, ww, labels, stats, g_loss.contiguous().float(), lam, ignore_index, chunk_size, sdt, wdt, accum_dtype,
        needs, ctx.backend,
    )
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 9


torch.library.register_autograd("weakstrong::linear_mixed_ce", _linear_mixed_grad, setup_context=_linear_mixed_setup)


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
    *,
    accum_dtype: torch.dtype = torch.float32,
):
    """:func:`mixed_cross_entropy` of ``strong_hidden @ strong_weight.T`` and ``weak_hidden @ weak_weight.T``.

    ``strong_hidden``: ``[..., Hs]``, ``strong_weight``: ``[V, Hs]``, ``weak_hidden``: ``[..., Hw]``,
    ``weak_weight``: ``[V, Hw]`` (hidden sizes may differ, vocabularies must match), ``labels``: ``[...]``.
    Same reductions and return values as :func:`mixed_cross_entropy` (float32 loss), including
    ``return_stats=True`` -> ``(loss, MixedCEStats)`` (strong/weak entropy and NLL from the same matmuls).
    ``chunk_size``: tokens per chunk.  ``accum_dtype``: as in :func:`linear_selective_log_softmax_and_entropy`.
    """
    check_accum_dtype(accum_dtype)
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
    y = flat_labels(labels)
    check_same_device(
        strong_hidden=strong_hidden, strong_weight=strong_weight, weak_hidden=weak_hidden, weak_weight=weak_weight,
        labels=labels,
    )
    backend = backend_for(sh, strong_weight, wh, weak_weight)
    want = bool(return_entropies or return_stats)
    sdt, wdt = compute_dtype(sh, strong_weight), compute_dtype(wh, weak_weight)
    per_token, _, aux = _linear_mixed_op(
        sh, strong_weight, wh, weak_weight, y, lam, int(ignore_index), want, int(chunk_size or 0), sdt, wdt, accum_dtype,
        backend,
    )
    return finish_mixed(per_token, aux.detach(), y != ignore_index, lead, reduction, return_entropies, return_stats)
