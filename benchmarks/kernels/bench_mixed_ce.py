"""Benchmark mixed_cross_entropy (WMSS loss over two models' logits) against torch eager / torch.compile,
and, at lam = 1 (ordinary cross entropy), against Liger-Kernel's cross entropy (CUDA only, Triton).
Writes results/mixed_ce_<device>-<name>.csv and .png.

    python benchmarks/kernels/bench_mixed_ce.py --device cpu --quick
    python benchmarks/kernels/bench_mixed_ce.py --device cpu
    python benchmarks/kernels/bench_mixed_ce.py --device cuda

Kernels: mixed_ce (lam = 0.5, gradients to both logits), mixed_ce_entropies (lam = 0.5 plus the per-token
entropies of both softmaxes, the WMSS statistics), ce_lam1 (lam = 1; only the strong logits need a gradient).
10% of the labels are ignore_index.  TRL has no mixed or plain CE op, so it is absent here.
"""

from __future__ import annotations

import functools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from weakstrong.kernels import mixed_cross_entropy  # noqa: E402

LAM = 0.5


@functools.lru_cache(maxsize=2)  # strong + weak of the current point only
def _logits(x, v, dtype, device, grad, seed):
    return C.device_randn((x, v), x * 7 + v + seed, dtype, device, scale=2.0, grad=grad)


@functools.lru_cache(maxsize=1)
def _labels(x, v, device):
    y = C.device_randint(v, (x,), x, device)
    g = torch.Generator(device=device).manual_seed(x + 1)
    y[torch.rand(x, generator=g, device=device) < 0.1] = -100
    return y


def _eager_mixed(a, b, y):
    z = LAM * a.float() + (1.0 - LAM) * b.float()
    return F.cross_entropy(z, y, ignore_index=-100)


def _entropy_stat(x):
    logp = torch.log_softmax(x.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _eager_mixed_ent(a, b, y):
    loss = _eager_mixed(a, b, y)
    with torch.no_grad():
        valid = y != -100
        ha = torch.where(valid, _entropy_stat(a), 0.0)
        hb = torch.where(valid, _entropy_stat(b), 0.0)
    return loss, ha, hb


def _eager_ce(a, b, y):
    return F.cross_entropy(a.float(), y, ignore_index=-100)


_compiled = {}


def _compile(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)
    return _compiled[fn]


def _provider(name, impl, weak_grad=True, **kw):
    def setup(x, v, h, dtype, device, grad):
        a = _logits(x, v, dtype, device, grad, 0)
        b = _logits(x, v, dtype, device, grad and weak_grad, 1)
        y = _labels(x, v, device)

        def fn():
            out = impl(a, b, y)
            if isinstance(out, tuple):
                return out[0] + 0.0 * (out[1].sum() + out[2].sum())
            return out

        return fn, ([a, b] if grad and weak_grad else ([a] if grad else []))

    return C.Provider(name, setup, **kw)


def _liger_ce():
    from liger_kernel.transformers import LigerCrossEntropyLoss

    loss = LigerCrossEntropyLoss(ignore_index=-100)
    return lambda a, b, y: loss(a, y)


def providers():
    ours = lambda lam, ent: (lambda a, b, y: mixed_cross_entropy(a, b, y, lam=lam, return_entropies=ent))  # noqa: E731
    out = {
        "mixed_ce": [
            _provider("weakstrong", ours(LAM, False)),
            _provider("torch_eager", _eager_mixed),
            _provider("torch_compile", lambda a, b, y: _compile(_eager_mixed)(a, b, y)),
        ],
        "mixed_ce_entropies": [
            _provider("weakstrong", ours(LAM, True)),
            _provider("torch_eager", _eager_mixed_ent),
            _provider("torch_compile", lambda a, b, y: _compile(_eager_mixed_ent)(a, b, y)),
        ],
        "ce_lam1": [
            _provider("weakstrong", ours(1.0, False), weak_grad=False),
            _provider("torch_eager", _eager_ce, weak_grad=False),
            _provider("torch_compile", lambda a, b, y: _compile(_eager_ce)(a, b, y), weak_grad=False),
        ],
    }
    out["ce_lam1"].append(
        C.optional_provider("liger", lambda: _provider("liger", _liger_ce(), weak_grad=False, cuda_only=True), cuda_only=True)
    )
    return out


def main(argv=None):
    p = C.parser(__doc__)  # the logit-kernel sweep sizes (C.LOGIT_SWEEP)
    args = C.finish_args(p.parse_args(argv))
    C.sweep(args, "mixed_ce", providers(), [(None, v) for v in args.vocab], "mixed cross entropy",
            note=f"; lam={LAM} (ce_lam1: lam=1)", clear=_logits.cache_clear)


if __name__ == "__main__":
    main()
