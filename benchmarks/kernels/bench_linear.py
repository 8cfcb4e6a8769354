"""Benchmark the hidden-state variants (logits never materialised) against torch eager / torch.compile on
full logits, TRL 1.16's ChunkedLogProbFunction (hidden-state log-probs + entropy; Triton on CUDA, torch tiles
elsewhere) and, for plain cross entropy (lam = 1), Liger-Kernel's fused linear cross entropy (CUDA only).
Writes results/linear_<device>-<name>.csv and .png.

    python benchmarks/kernels/bench_linear.py --device cpu --quick
    python benchmarks/kernels/bench_linear.py --device cpu
    python benchmarks/kernels/bench_linear.py --device cuda

Shapes: (H, V) = (896, 151936) (Qwen2.5-0.5B head) and, on CUDA, (2048, 128256) (Llama-3.2-1B head).
"""

from __future__ import annotations

import functools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from weakstrong.kernels import linear_mixed_cross_entropy, linear_selective_log_softmax_and_entropy  # noqa: E402

LAM = 0.5
HEADS_GPU = [(896, 151936), (2048, 128256)]
HEADS_CPU = [(896, 151936)]


@functools.lru_cache(maxsize=4)  # two hidden states + two weights of the current point
def _tensor(shape, dtype, device, grad, seed, scale):
    return C.device_randn(shape, seed, dtype, device, scale=scale, grad=grad)


def _inputs(x, v, h, dtype, device, grad):
    hid = _tensor((x, h), dtype, device, grad, 1 + x, 1.0)
    w = _tensor((v, h), dtype, device, grad, 2, h**-0.5)
    hid2 = _tensor((x, h), dtype, device, grad, 3 + x, 1.0)
    w2 = _tensor((v, h), dtype, device, grad, 4, h**-0.5)
    g = torch.Generator(device="cpu").manual_seed(x)
    y = torch.randint(0, v, (x,), generator=g)
    y[torch.rand(x, generator=g) < 0.1] = -100
    return hid, w, hid2, w2, y.to(device)


def _eager_logp_ent(hid, w, idx):
    logp = torch.log_softmax((hid @ w.T).float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1), ent


def _eager_ce(hid, w, y):
    return F.cross_entropy((hid @ w.T).float(), y, ignore_index=-100)


def _eager_mixed(hid, w, hid2, w2, y):
    z = LAM * (hid @ w.T).float() + (1 - LAM) * (hid2 @ w2.T).float()
    return F.cross_entropy(z, y, ignore_index=-100)


_compiled = {}


def _compile(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)
    return _compiled[fn]


def _trl_logp_ent(hid, w, idx):
    from trl.kernels import ChunkedLogProbFunction

    out = ChunkedLogProbFunction.apply(hid, w, None, idx, 1.0, 32768, None, 1.0, ("entropy",))
    return out[0], out[1]


def _p_logp(name, impl, **kw):
    def setup(x, v, h, dtype, device, grad):
        hid, w, _, _, y = _inputs(x, v, h, dtype, device, grad)
        idx = y.clamp(min=0)

        def fn():
            lp, ent = impl(hid, w, idx)
            return lp.float().sum() + ent.float().sum()

        return fn, ([hid, w] if grad else [])

    return C.Provider(name, setup, **kw)


def _p_ce(name, impl, **kw):
    def setup(x, v, h, dtype, device, grad):
        hid, w, _, _, y = _inputs(x, v, h, dtype, device, grad)
        return (lambda: impl(hid, w, y)), ([hid, w] if grad else [])

    return C.Provider(name, setup, **kw)


def _p_mixed(name, impl, **kw):
    def setup(x, v, h, dtype, device, grad):
        hid, w, hid2, w2, y = _inputs(x, v, h, dtype, device, grad)
        return (lambda: impl(hid, w, hid2, w2, y)), ([hid, w, hid2, w2] if grad else [])

    return C.Provider(name, setup, **kw)


def _liger_flce():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    return lambda hid, w, y: loss(w, hid, y)


def providers():
    out = {
        "linear_logp_entropy": [
            _p_logp("weakstrong", lambda h, w, i: linear_selective_log_softmax_and_entropy(h, w, i)),
            _p_logp("trl", _trl_logp_ent),
            _p_logp("torch_eager", _eager_logp_ent),
            _p_logp("torch_compile", lambda h, w, i: _compile(_eager_logp_ent)(h, w, i)),
        ],
        "linear_ce_lam1": [
            _p_ce("weakstrong", lambda h, w, y: linear_mixed_cross_entropy(h, w, h, w, y, lam=1.0)),
            _p_ce("torch_eager", _eager_ce),
            _p_ce("torch_compile", lambda h, w, y: _compile(_eager_ce)(h, w, y)),
        ],
        "linear_mixed_ce": [
            _p_mixed("weakstrong", lambda h, w, h2, w2, y: linear_mixed_cross_entropy(h, w, h2, w2, y, lam=LAM)),
            _p_mixed("torch_eager", _eager_mixed),
            _p_mixed("torch_compile", lambda *a: _compile(_eager_mixed)(*a)),
        ],
    }
    out["linear_ce_lam1"].append(
        C.optional_provider("liger", lambda: _p_ce("liger", _liger_flce(), cuda_only=True), cuda_only=True)
    )
    return out


def main(argv=None):
    p = C.parser(
        __doc__,
        cpu_tokens=[128, 256, 512],
        quick_tokens=[128, 256],
        gpu_tokens=[1024, 2048, 4096, 8192, 16384, 32768],
        vocabs_cpu=None,
        vocabs_gpu=None,
    )
    p.set_defaults(_quick_tokens=[128, 256])
    args = p.parse_args(argv)
    if args.grad_max_tokens is None and args.device == "cpu":
        args.grad_max_tokens = 128 if args.quick else 256
    args = C.finish_args(args)
    heads = HEADS_GPU if args.device == "cuda" else HEADS_CPU
    if args.vocab:
        heads = [(h, v) for (h, v) in heads if v in args.vocab] or [(heads[0][0], v) for v in args.vocab]
    C.sweep(args, "linear", providers(), heads, "hidden-state kernels", clear=_tensor.cache_clear)


if __name__ == "__main__":
    main()
