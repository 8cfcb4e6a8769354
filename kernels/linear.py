"""Hidden-state variants: the logits ``hidden @ weight.T (+ bias)`` exist one ``[token chunk, vocab tile]`` tile
at a time, never as ``[N, V]`` nor ``[token chunk, V]``.

* :func:`linear_selective_log_softmax_and_entropy` -> ``(logps, entropy)`` float32 (float64 inputs: float64), like
  :func:`weakstrong.kernels.selective_log_softmax_and_entropy` applied to the (transformed) logits.
* :func:`linear_mixed_cross_entropy` -> like :func:`weakstrong.kernels.mixed_cross_entropy` applied to the
  (transformed) logits of ``strong_hidden @ strong_weight.T (+ strong_bias)`` and ``weak_hidden @ weak_weight.T
  (+ weak_bias)``.

Logit transforms (TRL 1.16's fused LM head names and order), applied elementwise to each model's logits ``l``::

    x = logit_scale * l                                   # Cohere's logit_scale (Granite: 1 / logits_scaling)
    x = c * tanh(x / c)      if final_logit_softcapping=c # Gemma-2
    z = x / temperature

Layering (each step numbered where the code does it):

1. token chunk of ``hidden`` (``chunk_size`` tokens) x vocabulary tile of ``weight`` (``vocab_chunk_size`` rows):
   one GEMM gives the logits tile ``l`` [k, w]; the transform gives the row kernels' input;
2. the row kernels of ``entropy.py`` (Triton or torch, per backend) give each tile's row statistics
   ``(m, log d, H)``, merged across tiles by an online log-sum-exp (:func:`merge_tile_stats`);
3. the forward keeps only those per-token statistics; the backward recomputes each tile, asks the row kernels
   for the gradient w.r.t. their input (with the merged statistics, so ``p`` is the softmax over all of V),
   applies the transform's chain rule, and feeds the tile gradient to three GEMMs: ``grad_hidden`` (summed
   over tiles), ``grad_weight`` rows of the tile and ``grad_bias`` (summed over token chunks).

Accumulation.  ``grad_weight`` and ``grad_bias`` are summed across token chunks, and ``grad_hidden`` across
vocabulary tiles, in ``accum_dtype`` (float32 by default, like TRL 1.16's fused head and Liger's
``accum_dtype=torch.float32``), rounded once to the parameter's dtype at the end.  The float32 weight accumulator
is one weight-sized float32 buffer during the backward.

Memory.  Besides that accumulator, the working set is a few ``[chunk, tile]`` buffers (the logits tile in the
compute dtype, the transformed tile and its gradient in float32; the mixed op holds both models' tiles and the
mixed tile), independent of N and V (TRL 1.16 tiles 4,096 tokens x 32,768 vocabulary; so do the defaults on
CUDA).

ZeRO-3: ``weight`` may be a partitioned parameter that the caller gathered for the call.  Nothing derived from it
(transposes, casts, views) is kept after the call; the backward reads ``weight`` as it is at backward time, so
it must be gathered then too (as the ZeRO-3 module hooks do for the module that owns it).  An empty (released)
weight in the backward raises a clear error instead of a shape error.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ._dispatch import backend_for
from ._launch import check_same_device
from .entropy import (
    _check_temperature,
    _flat_index,
    acc_dtype,
    check_index_range,
    lse_entropy_backward,
    lse_entropy_forward,
)
from .mixed_ce import AUX_FIELDS, _check_flags, check_mixed_args, finish_mixed, flat_labels

__all__ = [
    "linear_selective_log_softmax_and_entropy",
    "linear_selective_log_softmax_and_entropy_reference",
    "linear_mixed_cross_entropy",
    "linear_mixed_cross_entropy_reference",
]

#: elements of one ``[token chunk, vocab tile]`` logits tile: CPU 2**24 (64 MiB fp32, 512 tokens x 32,768);
#: CUDA 2**27 (0.5 GiB fp32, 4,096 tokens x 32,768, TRL 1.16's tile).  Fewer tokens per chunk make the GEMMs
#: re-read the weight more often.
CPU_CHUNK_ELEMENTS = 1 << 24
CUDA_CHUNK_ELEMENTS = 1 << 27
#: default vocabulary rows per tile (TRL 1.16's ``ChunkedDivergenceFunction`` tile width)
DEFAULT_VOCAB_CHUNK = 32768


def default_token_chunk(n_tokens: int, vocab: int, device: torch.device) -> int:
    """Tokens per chunk for a tile ``vocab`` columns wide (the vocabulary tile width, at most V)."""
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
    """Step 1's GEMM: one ``[token chunk, vocab tile]`` logits tile (tests count its calls)."""
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


def _chunks(chunk_size: int, vocab_chunk_size: int, n: int, vocab: int, device) -> tuple[int, int]:
    """(tokens per chunk, vocabulary rows per tile)."""
    tile = min(vocab, int(vocab_chunk_size) if vocab_chunk_size else DEFAULT_VOCAB_CHUNK)
    tokens = int(chunk_size) if chunk_size else default_token_chunk(n, max(1, tile), device)
    return tokens, max(1, tile)


def check_accum_dtype(accum_dtype) -> torch.dtype:
    if not isinstance(accum_dtype, torch.dtype) or not accum_dtype.is_floating_point:
        raise TypeError(f"accum_dtype must be a floating torch.dtype (default torch.float32), got {accum_dtype!r}")
    return accum_dtype


def accumulator_dtype(param: torch.Tensor, accum_dtype: torch.dtype) -> torch.dtype:
    """The dtype a gradient is summed in across chunks / tiles: ``accum_dtype``, or the parameter's dtype when
    that is wider (float64 stays float64)."""
    return torch.promote_types(param.dtype, accum_dtype)


def addmm_acc(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with the product formed in ``acc``'s dtype, never rounded to ``a``'s dtype first.

    Why: rounding each chunk's product to bf16 (unit roundoff u = 2^-8) and summing K of them in bf16 adds a
    rounding of the running sum per chunk, an error that grows like sqrt(K) u; the float32 sum of float32
    products only adds float32 roundings (2^-24 each).  On CUDA with bf16/fp16 inputs the GEMM writes float32
    directly (``out_dtype``, tensor cores kept); elsewhere the inputs are cast (a tile-sized copy)."""
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
# logit transforms and the online merge across vocabulary tiles
# ----------------------------------------------------------------------------------------------------------
class LogitTransform(NamedTuple):
    """``x = softcap * tanh(scale * l / softcap) * inv_t`` (``softcap = 0``: ``x = scale * l * inv_t``).

    Chain rule (what :meth:`backward` multiplies the row gradient ``dL/dx`` by):
        no soft-cap:  dx/dl = scale * inv_t
        soft-cap c:   x = c * tanh(u) * inv_t with u = scale * l / c, d tanh(u)/du = 1 - tanh(u)^2, du/dl = scale / c
                      => dx/dl = c * (1 - tanh(u)^2) * (scale / c) * inv_t = scale * inv_t * (1 - tanh(u)^2)
    """

    scale: float = 1.0
    softcap: float = 0.0
    inv_t: float = 1.0

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and not self.softcap and self.inv_t == 1.0

    def forward(self, logits: torch.Tensor, acc: torch.dtype):
        """``(x, tanh(u) or None)``; ``x`` is ``logits`` itself for the identity, else a new ``acc`` tensor."""
        if self.identity:
            return logits, None
        if self.softcap:
            th = torch.tanh(logits.to(acc) * (self.scale / self.softcap))
            return th * (self.softcap * self.inv_t), th
        return logits.to(acc) * (self.scale * self.inv_t), None

    def backward(self, grad_x: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        """``dL/dl`` from ``dL/dx`` (in place on ``grad_x``)."""
        if self.identity:
            return grad_x
        if self.softcap:
            grad_x.mul_(1.0 - th * th)
        return grad_x.mul_(self.scale * self.inv_t)


def check_transform(logit_scale, final_logit_softcapping, temperature=1.0) -> LogitTransform:
    scale = float(logit_scale)
    if not 0.0 < scale < math.inf:  # plain comparisons (False for NaN), traceable by dynamo
        raise ValueError(
            f"logit_scale must be a positive finite multiplier, got {logit_scale!r} (Granite's logits_scaling "
            "divides: pass logit_scale=1/logits_scaling)"
        )
    softcap = 0.0 if final_logit_softcapping is None else float(final_logit_softcapping)
    if final_logit_softcapping is not None and not 0.0 < softcap < math.inf:
        raise ValueError(f"final_logit_softcapping must be None or a positive number, got {final_logit_softcapping!r}")
    return LogitTransform(scale, softcap, _check_temperature(temperature))


def _reference_transform(logits, logit_scale=1.0, final_logit_softcapping=None, temperature=1.0):
    x = logits * logit_scale
    if final_logit_softcapping is not None:
        x = final_logit_softcapping * torch.tanh(x / final_logit_softcapping)
    return x / temperature


def merge_tile_stats(state: torch.Tensor | None, tile: torch.Tensor, mult: float) -> torch.Tensor:
    """Online log-sum-exp across vocabulary tiles: merge one tile's row statistics into the running ones.

    Each ``[k, 3]`` holds per row ``(m, log d, H)`` of ``softmax(mult * x)`` over its columns, with ``m`` the max of
    the raw ``x`` and ``log d = log sum exp(mult * (x - m))`` (see ``entropy.chunk_lse_entropy``).  For two parts
    with masses ``e^{a}`` and ``e^{b}`` relative to the new max ``m' = max(m1, m2)``::

        a = mult (m1 - m') + log d1,  b = mult (m2 - m') + log d2,  log d' = logaddexp(a, b)
        w1 = e^{a - log d'}, w2 = e^{b - log d'}          (each part's share of the probability mass)
        H' = w1 (H1 - log w1) + w2 (H2 - log w2)           (entropy of a mixture of disjoint supports)

    No cancellation: every term of ``H'`` is non-negative.  A part with no mass (w = 0) contributes 0."""
    if state is None:
        return tile.clone()
    m1, ld1, h1 = state.unbind(1)
    m2, ld2, h2 = tile.unbind(1)
    m = torch.maximum(m1, m2)
    a = (m1 - m) * mult + ld1
    b = (m2 - m) * mult + ld2
    ld = torch.logaddexp(a, b)
    la, lb = a - ld, b - ld
    wa, wb = la.exp(), lb.exp()
    h = torch.where(wa > 0, wa * (h1 - la), 0.0) + torch.where(wb > 0, wb * (h2 - lb), 0.0)
    return torch.stack((m, ld, h), 1)


def _tile_targets(index: torch.Tensor, start: int, width: int):
    """(column of each row's target inside the tile ``[start, start + width)``, or -1; in-tile mask)."""
    local = index - start
    inside = (local >= 0) & (local < width)
    return torch.where(inside, local, -1), inside


def _gather_in_tile(x: torch.Tensor, local: torch.Tensor, inside: torch.Tensor, into: torch.Tensor) -> None:
    """``into[r] = x[r, local[r]]`` where the target is inside the tile (float, in ``into``'s dtype)."""
    got = x.gather(1, local.clamp(min=0).unsqueeze(1)).squeeze(1).to(into.dtype)
    into.copy_(torch.where(inside, got, into))


# ----------------------------------------------------------------------------------------------------------
# fp64 references (eager, autograd-able)
# ----------------------------------------------------------------------------------------------------------
def linear_selective_log_softmax_and_entropy_reference(
    hidden, weight, index, bias=None, temperature=1.0, final_logit_softcapping=None, logit_scale=1.0
):
    from .entropy import selective_log_softmax_and_entropy_reference

    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    x = _reference_transform(logits, logit_scale, final_logit_softcapping)
    return selective_log_softmax_and_entropy_reference(x, index, temperature)


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
    strong_bias=None,
    weak_bias=None,
    final_logit_softcapping=None,
    logit_scale=1.0,
    temperature=1.0,
):
    from .mixed_ce import mixed_cross_entropy_reference

    strong_logits = strong_hidden.double() @ strong_weight.double().T
    weak_logits = weak_hidden.double() @ weak_weight.double().T
    if strong_bias is not None:
        strong_logits = strong_logits + strong_bias.double()
    if weak_bias is not None:
        weak_logits = weak_logits + weak_bias.double()
    transform = dict(logit_scale=logit_scale, final_logit_softcapping=final_logit_softcapping, temperature=temperature)
    return mixed_cross_entropy_reference(
        _reference_transform(strong_logits, **transform),
        _reference_transform(weak_logits, **transform),
        labels,
        lam,
        ignore_index,
        reduction,
        return_entropies,
        return_stats,
    )


# ----------------------------------------------------------------------------------------------------------
# selected log-probabilities + entropy from hidden states
# ----------------------------------------------------------------------------------------------------------
def _lse_plan(transform: LogitTransform) -> tuple[LogitTransform, float]:
    """(transform materialised per tile, multiplier passed to the row kernels).  Without a soft-cap the
    transform is linear, ``x = (scale * inv_t) * l``: the row kernels take that product as their multiplier and
    read the logits tile as it is (no float32 copy)."""
    if transform.softcap:
        return LogitTransform(transform.scale, transform.softcap, 1.0), transform.inv_t
    return LogitTransform(), transform.scale * transform.inv_t


def linear_lse_forward(
    hidden, weight, bias, index, transform: LogitTransform, chunk_size, vocab_chunk_size, dtype, backend
):
    """``(logp [N], entropy [N], stats [N, 3])`` of the transformed logits, one ``[chunk, tile]`` at a time."""
    n, vocab = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    acc = acc_dtype(dtype)  # float32 (float64 for float64 logits)
    logp = torch.empty(n, dtype=acc, device=dev)
    stats = torch.empty(n, 3, dtype=acc, device=dev)
    tokens, tile = _chunks(chunk_size, vocab_chunk_size, n, vocab, dev)
    tile_transform, mult = _lse_plan(transform)
    weight_c, bias_c = _cast(weight, dtype), _cast(bias, dtype)
    for start in range(0, n, tokens):
        hidden_chunk = _cast(hidden[start : start + tokens], dtype)
        k = hidden_chunk.shape[0]
        target_x = torch.zeros(k, dtype=acc, device=dev)
        running = None
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            # 1. logits tile and its transform (the row kernels' input x)
            logits = _logits(hidden_chunk, weight_c[v0:v1], None if bias_c is None else bias_c[v0:v1])
            x, _ = tile_transform.forward(logits, acc)
            # 2. the tile's row statistics, merged into the running ones; the target's x if it is in this tile
            _, _, tile_stats = lse_entropy_forward(x, None, mult, backend)
            running = merge_tile_stats(running, tile_stats, mult)
            local, inside = _tile_targets(index[start : start + k], v0, v1 - v0)
            _gather_in_tile(x, local, inside, target_x)
            del logits, x
        stats[start : start + k] = running
        # log p_y = mult (x_y - m) - log d
        logp[start : start + k] = (target_x - running[:, 0]) * mult - running[:, 1]
    return logp, stats[:, 2].clone(), stats


def linear_lse_backward(
    hidden, weight, bias, index, stats, grad_logp, grad_entropy, transform: LogitTransform, chunk_size,
    vocab_chunk_size, dtype, accum_dtype, need_hidden, need_weight, need_bias, backend,
):
    """Gradients of ``sum grad_logp * logp + grad_entropy * H`` w.r.t. hidden, weight, bias (None where not needed).

    Per tile: ``dL/dx`` from the row kernels (``mult (g_lp (e_y - p) - g_H p (log p + H))`` with the merged
    statistics, so ``p`` is the full-vocabulary softmax), then ``dL/dl = dL/dx * dx/dl`` (:class:`LogitTransform`),
    then ``dL/dh = dL/dl @ W_tile`` (summed over tiles), ``dL/dW_tile += dL/dl^T @ h``, ``dL/db_tile += sum_rows``."""
    _require_gathered(weight, "weight")
    need_bias = need_bias and bias is not None
    n, hid, vocab = hidden.shape[0], hidden.shape[1], weight.shape[0]
    dev = hidden.device
    grad_hidden = _fresh(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=accumulator_dtype(weight, accum_dtype), device=dev) if need_weight else None
    grad_bias = torch.zeros(vocab, dtype=accumulator_dtype(bias, accum_dtype), device=dev) if need_bias else None
    tokens, tile = _chunks(chunk_size, vocab_chunk_size, n, vocab, dev)
    tile_transform, mult = _lse_plan(transform)
    acc = stats.dtype
    weight_c, bias_c = _cast(weight, dtype), _cast(bias, dtype)
    for start in range(0, n, tokens):
        hidden_chunk = _cast(hidden[start : start + tokens], dtype)
        k = hidden_chunk.shape[0]
        grad_hidden_acc = (
            torch.zeros(k, hid, dtype=accumulator_dtype(hidden, accum_dtype), device=dev) if need_hidden else None
        )
        g_lp = None if grad_logp is None else grad_logp[start : start + k]
        g_ent = None if grad_entropy is None else grad_entropy[start : start + k]
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            # 1. recompute the logits tile and its transform
            logits = _logits(hidden_chunk, weight_c[v0:v1], None if bias_c is None else bias_c[v0:v1])
            x, th = tile_transform.forward(logits, acc)
            # 2. dL/dx from the row kernels (a target outside the tile adds no one-hot term), 3. chain rule
            local, _ = _tile_targets(index[start : start + k], v0, v1 - v0)
            grad_x = torch.empty(k, v1 - v0, dtype=acc, device=dev)
            lse_entropy_backward(x, local, mult, stats[start : start + k], g_lp, g_ent, grad_x, backend)
            del logits, x
            grad_logits = tile_transform.backward(grad_x, th)
            del th
            # 4. the three GEMMs (products formed in the accumulator's dtype, see addmm_acc)
            grad_logits_c = _cast(grad_logits, dtype)
            if need_hidden:
                addmm_acc(grad_hidden_acc, grad_logits_c, weight_c[v0:v1])
            if need_weight:
                addmm_acc(grad_weight[v0:v1], grad_logits_c.T, hidden_chunk)
            if need_bias:
                grad_bias[v0:v1] += grad_logits.sum(0, dtype=grad_bias.dtype)
            del grad_x, grad_logits, grad_logits_c
        if need_hidden:
            grad_hidden[start : start + k] = grad_hidden_acc
    # one rounding of each accumulated gradient to its parameter's dtype, at the end
    return (
        grad_hidden if need_hidden else _placeholder(hidden),
        grad_weight.to(weight.dtype) if need_weight else _placeholder(weight),
        grad_bias.to(bias.dtype) if need_bias else _placeholder(weight),
    )


# custom ops: the tile loops are opaque to torch.compile (a new token count is a new symbolic size, not a
# recompile); the fake implementations declare contiguous outputs, as the real ones allocate them
@torch.library.custom_op("weakstrong::linear_lse_entropy", mutates_args=())
def _linear_lse_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    index: torch.Tensor,
    transform: list[float],
    chunk_size: int,
    vocab_chunk_size: int,
    dtype: torch.dtype,
    accum_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp [N], entropy [N], stats [N, 3])``; ``transform`` = [logit_scale, softcap (0: none), 1/T]."""
    check_index_range(index, weight.shape[0])  # once per call, before any tile
    return linear_lse_forward(
        hidden, weight, bias, index, LogitTransform(*transform), chunk_size, vocab_chunk_size, dtype, backend
    )


@_linear_lse_op.register_fake
def _(hidden, weight, bias, index, transform, chunk_size, vocab_chunk_size, dtype, accum_dtype, backend):
    n = hidden.shape[0]
    acc = acc_dtype(dtype)
    return hidden.new_empty(n, dtype=acc), hidden.new_empty(n, dtype=acc), hidden.new_empty(n, 3, dtype=acc)


@torch.library.custom_op("weakstrong::linear_lse_entropy_backward", mutates_args=())
def _linear_lse_bwd_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    index: torch.Tensor,
    stats: torch.Tensor,
    g_lp: Optional[torch.Tensor],
    g_ent: Optional[torch.Tensor],
    transform: list[float],
    chunk_size: int,
    vocab_chunk_size: int,
    dtype: torch.dtype,
    accum_dtype: torch.dtype,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_lse_backward(
        hidden, weight, bias, index, stats, g_lp, g_ent, LogitTransform(*transform), chunk_size, vocab_chunk_size,
        dtype, accum_dtype, need_hidden, need_weight, need_bias, backend,
    )


@_linear_lse_bwd_op.register_fake
def _(hidden, weight, bias, index, stats, g_lp, g_ent, transform, chunk_size, vocab_chunk_size, dtype, accum_dtype,
      need_h, need_w, need_b, backend):
    gb = bias.new_empty(bias.shape) if (need_b and bias is not None) else weight.new_empty(0)
    gh = _fresh(hidden) if need_h else hidden.new_empty(0)
    gw = _fresh(weight) if need_w else weight.new_empty(0)
    return gh, gw, gb


def _linear_lse_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero-filled extra term)
    hidden, weight, bias, index, *args = inputs
    ctx.save_for_backward(hidden, weight, bias, index, output[2])  # not logp / entropy: callers may edit those
    ctx.args = args  # transform, chunk_size, vocab_chunk_size, dtype, accum_dtype, backend


def _linear_lse_grad(ctx, g_lp, g_ent, _g_stats):
    hidden, weight, bias, index, stats = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
        return (None,) * 10
    g_lp = g_lp.contiguous().to(stats.dtype) if g_lp is not None else None
    g_ent = g_ent.contiguous().to(stats.dtype) if g_ent is not None else None
    transform, chunk_size, vocab_chunk_size, dtype, accum_dtype, backend = ctx.args
    gh, gw, gb = _linear_lse_bwd_op(
        hidden, weight, bias, index, stats, g_lp, g_ent, transform, chunk_size, vocab_chunk_size, dtype, accum_dtype,
        need_h, need_w, need_b, backend,
    )
    return (gh if need_h else None), (gw if need_w else None), (gb if need_b else None), *([None] * 7)


torch.library.register_autograd("weakstrong::linear_lse_entropy", _linear_lse_grad, setup_context=_linear_lse_setup)


def linear_selective_log_softmax_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    *,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    vocab_chunk_size: int | None = None,
    accum_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``selective_log_softmax_and_entropy(z, index)`` of ``z = T(hidden @ weight.T + bias)`` without the logits.

    ``hidden``: ``[..., H]``; ``weight``: ``[V, H]``; ``bias``: ``[V]`` or None; ``index``: ``[...]`` (each in
    ``[0, V)``, else ``IndexError``).  Returns float32 ``(logps, entropy)`` of shape ``index.shape`` (float64 for
    float64 inputs),
    differentiable w.r.t. ``hidden``, ``weight`` and ``bias``.

    Transform ``T`` (TRL 1.16's names and order): ``x = logit_scale * l``; ``x = c * tanh(x / c)`` with
    ``c = final_logit_softcapping`` (Gemma-2; None: no cap); ``z = x / temperature``.  ``logit_scale`` is a
    multiplier (Cohere); Granite's ``logits_scaling`` divides, so pass ``logit_scale=1 / logits_scaling``.

    ``chunk_size``: tokens per chunk (default: a ``[chunk, tile]`` tile of 2**24 elements on CPU, 2**27 on CUDA);
    ``vocab_chunk_size``: vocabulary rows per tile (default 32,768); the working set is a few ``[chunk, tile]``
    buffers.  ``accum_dtype``: the dtype the weight/bias gradients are summed in across token chunks and the
    hidden gradient across tiles (float32 by default, rounded once at the end; ``torch.bfloat16`` gives a bf16
    running sum, whose error grows with the chunk count).
    """
    check_accum_dtype(accum_dtype)
    transform = check_transform(logit_scale, final_logit_softcapping, temperature)
    if vocab_chunk_size is not None and int(vocab_chunk_size) < 1:
        raise ValueError(f"vocab_chunk_size must be a positive number of vocabulary rows, got {vocab_chunk_size}")
    lead = hidden.shape[:-1]
    if index.shape != lead:
        raise ValueError(f"index shape {tuple(index.shape)} must equal hidden.shape[:-1] = {tuple(lead)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias shape {tuple(bias.shape)} must be ({weight.shape[0]},) (one per vocabulary row)")
    check_same_device(hidden=hidden, weight=weight, index=index, bias=bias)
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    backend = backend_for(hidden_2d, weight)
    dtype = compute_dtype(hidden_2d, weight)
    logp, ent, _ = _linear_lse_op(
        hidden_2d, weight, bias, _flat_index(index), list(transform), int(chunk_size or 0), int(vocab_chunk_size or 0),
        dtype, accum_dtype, backend,
    )
    return logp.view(lead), ent.view(lead)


# ----------------------------------------------------------------------------------------------------------
# mixed cross entropy from two models' hidden states
# ----------------------------------------------------------------------------------------------------------
class _Model(NamedTuple):
    """One model's side of the mixed op: hidden states [N, H], LM head [V, H] (+ bias [V]), compute dtype."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    dtype: torch.dtype


def _mixed_acc(strong: _Model, weak: _Model) -> torch.dtype:
    return torch.float64 if strong.dtype == weak.dtype == torch.float64 else torch.float32


def _model_tile(model: _Model, weight_c, bias_c, start, k, v0, v1, transform: LogitTransform, acc):
    """Step 1 for one model: ``(hidden chunk, transformed tile x, tanh(u) or None)``."""
    hidden_chunk = _cast(model.hidden[start : start + k], model.dtype)
    logits = _logits(hidden_chunk, weight_c[v0:v1], None if bias_c is None else bias_c[v0:v1])
    x, th = transform.forward(logits, acc)
    return hidden_chunk, x, th


def _mix(strong_x, weak_x, lam, acc):
    """z = lam * x_strong + (1 - lam) * x_weak in float32; at lam in {0, 1} the other model is not read (no
    0 * (-inf))."""
    if lam == 1.0:
        return strong_x
    if lam == 0.0:
        return weak_x
    z = torch.mul(strong_x, lam, out=torch.empty(strong_x.shape, dtype=acc, device=strong_x.device))
    return z.add_(weak_x, alpha=1.0 - lam)


def linear_mixed_forward(strong: _Model, weak: _Model, labels, lam, ignore_index, want_stats, transform,
                         chunk_size, vocab_chunk_size, backend):
    """``(per-token loss [N], stats [N, 3] of z, aux [N, 4] or [0, 4])``, one ``[chunk, tile]`` at a time."""
    n, vocab = strong.hidden.shape[0], strong.weight.shape[0]
    dev = strong.hidden.device
    acc = _mixed_acc(strong, weak)
    loss = torch.empty(n, dtype=acc, device=dev)
    stats = torch.empty(n, 3, dtype=acc, device=dev)
    aux = torch.empty(n if want_stats else 0, len(AUX_FIELDS), dtype=acc, device=dev)
    valid = labels != ignore_index
    # lam = 1 (0) without statistics never reads the weak (strong) logits: skip that model's GEMMs
    use_strong = lam != 0.0 or want_stats
    use_weak = lam != 1.0 or want_stats
    tokens, tile = _chunks(chunk_size, vocab_chunk_size, n, vocab, dev)
    strong_w = _cast(strong.weight, strong.dtype) if use_strong else None
    strong_b = _cast(strong.bias, strong.dtype) if use_strong else None
    weak_w = _cast(weak.weight, weak.dtype) if use_weak else None
    weak_b = _cast(weak.bias, weak.dtype) if use_weak else None
    for start in range(0, n, tokens):
        k = min(tokens, n - start)
        keep = valid[start : start + k]
        row_mask = keep.view(torch.uint8)  # ignored rows: skipped inside the row kernels
        targets = torch.where(keep, labels[start : start + k], 0)
        target = torch.zeros(3, k, dtype=acc, device=dev)  # z_y, x_strong_y, x_weak_y
        running = [None, None, None]  # stats of z, x_strong, x_weak
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            # 1. both models' transformed tiles and the mixed tile z
            strong_x = _model_tile(strong, strong_w, strong_b, start, k, v0, v1, transform, acc)[1] if use_strong else None
            weak_x = _model_tile(weak, weak_w, weak_b, start, k, v0, v1, transform, acc)[1] if use_weak else None
            z = _mix(strong_x, weak_x, lam, acc)
            # 2. row statistics per tile, merged; target values where the target is in this tile
            local, inside = _tile_targets(targets, v0, v1 - v0)
            parts = (z, strong_x, weak_x) if want_stats else (z,)
            for j, x in enumerate(parts):
                _, _, tile_stats = lse_entropy_forward(x, None, 1.0, backend, want_entropy=j > 0, row_mask=row_mask)
                running[j] = merge_tile_stats(running[j], tile_stats, 1.0)
                _gather_in_tile(x, local, inside, target[j])
            del strong_x, weak_x, z
        # loss = -log softmax(z)_y = (m - z_y) + log d
        z_stats = running[0]
        loss[start : start + k] = torch.where(keep, z_stats[:, 0] - target[0] + z_stats[:, 1], 0.0)
        stats[start : start + k] = z_stats
        if want_stats:
            for j in (1, 2):  # entropies, then NLLs of each model alone
                st = running[j]
                aux[start : start + k, j - 1] = torch.where(keep, st[:, 2], 0.0)
                aux[start : start + k, j + 1] = torch.where(keep, st[:, 0] - target[j] + st[:, 1], 0.0)
    return loss, stats, aux


class _Grads:
    """One model's side of the mixed backward: its coefficient in z, which gradients are wanted, their
    accumulators (``accum_dtype`` for the weight and bias; the hidden gradient is written chunk by chunk), and
    its LM head in the compute dtype when z reads that model's logits (coefficient != 0)."""

    def __init__(self, model: _Model, coef: float, needs, accum_dtype):
        self.model, self.coef = model, coef
        self.need_hidden, self.need_weight = needs[0], needs[1]
        self.need_bias = needs[2] and model.bias is not None
        self.read = coef != 0.0
        self.active = self.read and (self.need_hidden or self.need_weight or self.need_bias)
        dev, vocab = model.weight.device, model.weight.shape[0]
        self.hidden_acc_dtype = accumulator_dtype(model.hidden, accum_dtype)
        self.grad_hidden = torch.zeros(model.hidden.shape, dtype=model.hidden.dtype, device=dev) if self.need_hidden else None
        self.grad_weight = (
            torch.zeros(model.weight.shape, dtype=accumulator_dtype(model.weight, accum_dtype), device=dev)
            if self.need_weight else None
        )
        self.grad_bias = (
            torch.zeros(vocab, dtype=accumulator_dtype(model.bias, accum_dtype), device=dev) if self.need_bias else None
        )
        self.weight_c = self.bias_c = None

    def results(self):
        """(grad hidden, grad weight, grad bias), each rounded once to its parameter's dtype; empty if not wanted."""
        m = self.model
        return (
            self.grad_hidden if self.need_hidden else _placeholder(m.hidden),
            self.grad_weight.to(m.weight.dtype) if self.need_weight else _placeholder(m.weight),
            self.grad_bias.to(m.bias.dtype) if self.need_bias else _placeholder(m.weight),
        )


def linear_mixed_backward(strong: _Model, weak: _Model, labels, lam, ignore_index, stats, grad_rows, transform,
                          chunk_size, vocab_chunk_size, accum_dtype, needs, backend):
    """Gradients of ``sum grad_rows * loss`` w.r.t. (strong hidden, weight, bias, weak hidden, weight, bias).

    Derivation per tile: ``loss = -log softmax(z)_y`` gives ``dL/dz = g (p - e_y)`` (the row kernels with
    ``grad_logp = -g``); ``z = lam x_s + (1 - lam) x_w`` gives ``dL/dx_s = lam dL/dz``, ``dL/dx_w = (1 - lam) dL/dz``;
    each ``x`` is its model's transformed logits (chain rule in :class:`LogitTransform`); then the GEMMs as in
    :func:`linear_lse_backward`."""
    n, vocab = strong.hidden.shape[0], strong.weight.shape[0]
    dev = strong.hidden.device
    acc = stats.dtype
    sides = (_Grads(strong, lam, needs[:3], accum_dtype), _Grads(weak, 1.0 - lam, needs[3:], accum_dtype))
    if not any(side.active for side in sides):
        return (*sides[0].results(), *sides[1].results())
    for side, name in zip(sides, ("strong_weight", "weak_weight")):
        if side.read:  # z needs this model's logits
            _require_gathered(side.model.weight, name)
            side.weight_c, side.bias_c = _cast(side.model.weight, side.model.dtype), _cast(side.model.bias, side.model.dtype)
    tokens, tile = _chunks(chunk_size, vocab_chunk_size, n, vocab, dev)
    valid = labels != ignore_index
    for start in range(0, n, tokens):
        k = min(tokens, n - start)
        keep = valid[start : start + k]
        targets = torch.where(keep, labels[start : start + k], 0)
        g_logp = -grad_rows[start : start + k]
        hidden_accs = [
            torch.zeros(k, side.model.hidden.shape[1], dtype=side.hidden_acc_dtype, device=dev)
            if side.active and side.need_hidden else None
            for side in sides
        ]
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            # 1. recompute both transformed tiles and z
            tiles = [
                _model_tile(side.model, side.weight_c, side.bias_c, start, k, v0, v1, transform, acc) if side.read else None
                for side in sides
            ]
            z = _mix(*(t[1] if t is not None else None for t in tiles), lam, acc)
            # 2. dL/dz = g (p - e_y) from the row kernels (ignored rows: zero), with the merged statistics
            local, _ = _tile_targets(targets, v0, v1 - v0)
            grad_z = torch.empty(k, v1 - v0, dtype=acc, device=dev)
            lse_entropy_backward(z, local, 1.0, stats[start : start + k], g_logp, None, grad_z, backend,
                                 row_mask=keep.view(torch.uint8))
            del z
            for side, tile_out, hidden_acc in zip(sides, tiles, hidden_accs):
                if not side.active:
                    continue
                hidden_chunk, _, th = tile_out
                # 3. dL/dx = coef dL/dz, then the transform's chain rule dL/dl = dL/dx dx/dl
                grad_logits = transform.backward(grad_z * side.coef, th)
                grad_logits_c = _cast(grad_logits, side.model.dtype)
                # 4. the GEMMs: dL/dh += dL/dl @ W_tile, dL/dW_tile += dL/dl^T @ h, dL/db_tile += column sums
                if side.need_hidden:
                    addmm_acc(hidden_acc, grad_logits_c, side.weight_c[v0:v1])
                if side.need_weight:
                    addmm_acc(side.grad_weight[v0:v1], grad_logits_c.T, hidden_chunk)
                if side.need_bias:
                    side.grad_bias[v0:v1] += grad_logits.sum(0, dtype=side.grad_bias.dtype)
                del grad_logits, grad_logits_c
            del tiles, grad_z
        for side, hidden_acc in zip(sides, hidden_accs):
            if hidden_acc is not None:
                side.grad_hidden[start : start + k] = hidden_acc
    return (*sides[0].results(), *sides[1].results())


@torch.library.custom_op("weakstrong::linear_mixed_ce", mutates_args=())
def _linear_mixed_op(
    strong_hidden: torch.Tensor,
    strong_weight: torch.Tensor,
    strong_bias: Optional[torch.Tensor],
    weak_hidden: torch.Tensor,
    weak_weight: torch.Tensor,
    weak_bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    lam: float,
    ignore_index: int,
    want_stats: bool,
    transform: list[float],
    chunk_size: int,
    vocab_chunk_size: int,
    strong_dtype: torch.dtype,
    weak_dtype: torch.dtype,
    accum_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per-token loss [N], stats [N, 3], aux [N, 4] or [0, 4])``; ``transform`` as in linear_lse_entropy."""
    check_index_range(labels, strong_weight.shape[0], labels != ignore_index, what="label")  # once per call
    return linear_mixed_forward(
        _Model(strong_hidden, strong_weight, strong_bias, strong_dtype),
        _Model(weak_hidden, weak_weight, weak_bias, weak_dtype),
        labels, lam, ignore_index, want_stats, LogitTransform(*transform), chunk_size, vocab_chunk_size, backend,
    )


@_linear_mixed_op.register_fake
def _(strong_hidden, strong_weight, strong_bias, weak_hidden, weak_weight, weak_bias, labels, lam, ignore_index,
      want_stats, transform, chunk_size, vocab_chunk_size, strong_dtype, weak_dtype, accum_dtype, backend):
    n = strong_hidden.shape[0]
    acc = torch.float64 if strong_dtype == weak_dtype == torch.float64 else torch.float32
    new = strong_hidden.new_empty
    return new(n, dtype=acc), new(n, 3, dtype=acc), new(n if want_stats else 0, len(AUX_FIELDS), dtype=acc)


@torch.library.custom_op("weakstrong::linear_mixed_ce_backward", mutates_args=())
def _linear_mixed_bwd_op(
    strong_hidden: torch.Tensor,
    strong_weight: torch.Tensor,
    strong_bias: Optional[torch.Tensor],
    weak_hidden: torch.Tensor,
    weak_weight: torch.Tensor,
    weak_bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    stats: torch.Tensor,
    g_rows: torch.Tensor,
    lam: float,
    ignore_index: int,
    transform: list[float],
    chunk_size: int,
    vocab_chunk_size: int,
    strong_dtype: torch.dtype,
    weak_dtype: torch.dtype,
    accum_dtype: torch.dtype,
    needs: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (strong hidden, weight, bias, weak hidden, weight, bias); empty where ``needs`` is False."""
    return linear_mixed_backward(
        _Model(strong_hidden, strong_weight, strong_bias, strong_dtype),
        _Model(weak_hidden, weak_weight, weak_bias, weak_dtype),
        labels, lam, ignore_index, stats, g_rows, LogitTransform(*transform), chunk_size, vocab_chunk_size,
        accum_dtype, needs, backend,
    )


@_linear_mixed_bwd_op.register_fake
def _(strong_hidden, strong_weight, strong_bias, weak_hidden, weak_weight, weak_bias, labels, stats, g_rows, lam,
      ignore_index, transform, chunk_size, vocab_chunk_size, strong_dtype, weak_dtype, accum_dtype, needs, backend):
    outs = []
    params = (strong_hidden, strong_weight, strong_bias, weak_hidden, weak_weight, weak_bias)
    fallback = (strong_weight, strong_weight, strong_weight, weak_weight, weak_weight, weak_weight)
    for t, alt, need in zip(params, fallback, needs):
        outs.append(_fresh(t) if (need and t is not None) else alt.new_empty(0))
    return tuple(outs)


def _linear_mixed_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zero-filled extra term)
    sh, sw, sb, wh, ww, wb, labels, lam, ignore_index, _want, *args = inputs
    ctx.save_for_backward(sh, sw, sb, wh, ww, wb, labels, output[1])
    ctx.lam, ctx.ignore_index = lam, ignore_index
    ctx.args = args  # transform, chunk_size, vocab_chunk_size, strong_dtype, weak_dtype, accum_dtype, backend


def _linear_mixed_grad(ctx, g_loss, _g_stats, _g_aux):
    sh, sw, sb, wh, ww, wb, labels, stats = ctx.saved_tensors
    needs = [bool(x) for x in ctx.needs_input_grad[:6]]
    if g_loss is None or not any(needs):
        return (None,) * 17
    transform, chunk_size, vocab_chunk_size, sdt, wdt, accum_dtype, backend = ctx.args
    grads = _linear_mixed_bwd_op(
        sh, sw, sb, wh, ww, wb, labels, stats, g_loss.contiguous().to(stats.dtype), ctx.lam, ctx.ignore_index, transform,
        chunk_size, vocab_chunk_size, sdt, wdt, accum_dtype, needs, backend,
    )
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 11


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
    strong_bias: torch.Tensor | None = None,
    weak_bias: torch.Tensor | None = None,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    temperature: float = 1.0,
    vocab_chunk_size: int | None = None,
    accum_dtype: torch.dtype = torch.float32,
):
    """:func:`mixed_cross_entropy` of ``T(strong_hidden @ strong_weight.T + strong_bias)`` and
    ``T(weak_hidden @ weak_weight.T + weak_bias)``, without either model's logits.

    ``strong_hidden``: ``[..., Hs]``, ``strong_weight``: ``[V, Hs]``, ``weak_hidden``: ``[..., Hw]``,
    ``weak_weight``: ``[V, Hw]`` (hidden sizes may differ, vocabularies must match), ``strong_bias`` /
    ``weak_bias``: ``[V]`` or None, ``labels``: ``[...]``.  Same reductions and return values as
    :func:`mixed_cross_entropy` (float32 loss; float64 for float64 inputs), including ``return_stats=True`` -> ``(loss, MixedCEStats)``
    (strong/weak entropy and NLL of the transformed logits, from the same GEMMs).

    Transform ``T``, the same for both models (as in :func:`linear_selective_log_softmax_and_entropy`):
    ``logit_scale`` (multiplier; Granite: ``1 / logits_scaling``), then ``final_logit_softcapping``, then
    ``temperature``; the mixture is ``lam * T(strong) + (1 - lam) * T(weak)``.  ``chunk_size`` / ``vocab_chunk_size``
    / ``accum_dtype``: as in :func:`linear_selective_log_softmax_and_entropy`.
    """
    check_accum_dtype(accum_dtype)
    _check_flags(return_entropies, return_stats)
    check_mixed_args(lam, reduction)
    transform = check_transform(logit_scale, final_logit_softcapping, temperature)
    if vocab_chunk_size is not None and int(vocab_chunk_size) < 1:
        raise ValueError(f"vocab_chunk_size must be a positive number of vocabulary rows, got {vocab_chunk_size}")
    lam = float(lam)
    lead = strong_hidden.shape[:-1]
    if weak_hidden.shape[:-1] != lead or labels.shape != lead:
        raise ValueError("strong_hidden, weak_hidden and labels must share their leading shape")
    if strong_weight.shape[0] != weak_weight.shape[0]:
        raise ValueError("strong and weak vocabularies differ")
    for name, bias in (("strong_bias", strong_bias), ("weak_bias", weak_bias)):
        if bias is not None and bias.shape != (strong_weight.shape[0],):
            raise ValueError(f"{name} shape {tuple(bias.shape)} must be ({strong_weight.shape[0]},)")
    check_same_device(
        strong_hidden=strong_hidden, strong_weight=strong_weight, weak_hidden=weak_hidden, weak_weight=weak_weight,
        labels=labels, strong_bias=strong_bias, weak_bias=weak_bias,
    )
    strong_2d = strong_hidden.reshape(-1, strong_hidden.shape[-1])
    weak_2d = weak_hidden.reshape(-1, weak_hidden.shape[-1])
    y = flat_labels(labels)
    backend = backend_for(strong_2d, strong_weight, weak_2d, weak_weight)
    want = bool(return_entropies or return_stats)
    per_token, _, aux = _linear_mixed_op(
        strong_2d, strong_weight, strong_bias, weak_2d, weak_weight, weak_bias, y, lam, int(ignore_index), want,
        list(transform), int(chunk_size or 0), int(vocab_chunk_size or 0), compute_dtype(strong_2d, strong_weight),
        compute_dtype(weak_2d, weak_weight), accum_dtype, backend,
    )
    return finish_mixed(per_token, aux.detach(), y != ignore_index, lead, reduction, return_entropies, return_stats)
