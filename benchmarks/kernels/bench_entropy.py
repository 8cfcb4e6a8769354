"""Benchmark entropy_from_logits and selective_log_softmax_and_entropy against TRL 1.16, torch eager and
torch.compile.  Writes results/entropy_<device>-<name>.csv and .png.

    python benchmarks/kernels/bench_entropy.py --device cpu --quick      # ~1-2 min on 2 cores
    python benchmarks/kernels/bench_entropy.py --device cpu              # tokens 256..2048, V=151,936 fp32
    python benchmarks/kernels/bench_entropy.py --device cuda             # tokens 1k..32k, V in {151936, 128256}, bf16+fp32

On CUDA, TRL's functions dispatch to its fused Triton kernel (trl/kernels/logprob_entropy.py) and ours to
weakstrong's Triton kernels; on CPU both run their torch paths.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from weakstrong.kernels import entropy_from_logits, selective_log_softmax_and_entropy  # noqa: E402

try:
    import trl.trainer.utils as trl_utils
except Exception:  # pragma: no cover
    trl_utils = None

TEMPERATURE = 1.0


@functools.lru_cache(maxsize=1)  # the current point's logits only
def _logits(x, v, dtype, device, grad):
    return C.device_randn((x, v), x * 7 + v, dtype, device, scale=2.0, grad=grad)


@functools.lru_cache(maxsize=1)
def _index(x, v, device):
    return C.device_randint(v, (x,), x, device)


def _eager_entropy(x):
    logp = torch.log_softmax(x.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _eager_both(x, idx):
    logp = torch.log_softmax(x.float() / TEMPERATURE, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1), ent


_compiled = {}


def _compile(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)  # automatic dynamic shapes: at most one recompile per sweep
    return _compiled[fn]


def _ent_provider(name, impl, **kw):
    def setup(x, v, h, dtype, device, grad):
        logits = _logits(x, v, dtype, device, grad)
        return (lambda: impl(logits).float().sum()), ([logits] if grad else [])

    return C.Provider(name, setup, **kw)


def _both_provider(name, impl, **kw):
    def setup(x, v, h, dtype, device, grad):
        logits = _logits(x, v, dtype, device, grad)
        idx = _index(x, v, device)

        def fn():
            lp, ent = impl(logits, idx)
            return lp.float().sum() + ent.float().sum()

        return fn, ([logits] if grad else [])

    return C.Provider(name, setup, **kw)


def providers():
    ent = [
        _ent_provider("weakstrong", entropy_from_logits),
        _ent_provider("torch_eager", _eager_entropy),
        _ent_provider("torch_compile", lambda t: _compile(_eager_entropy)(t)),
    ]
    both = [
        _both_provider("weakstrong", lambda t, i: selective_log_softmax_and_entropy(t, i, temperature=TEMPERATURE)),
        _both_provider("torch_eager", _eager_both),
        _both_provider("torch_compile", lambda t, i: _compile(_eager_both)(t, i)),
    ]
    if trl_utils is not None:
        ent.insert(1, _ent_provider("trl", trl_utils.entropy_from_logits))
        both.insert(
            1,
            _both_provider(
                "trl", lambda t, i: trl_utils.selective_log_softmax_and_entropy(t, i, temperature=TEMPERATURE)
            ),
        )
    else:
        print("! provider trl unavailable (trl.trainer.utils not importable); its rows say so in the CSV", flush=True)
        for group in (ent, both):
            group.insert(1, C.Provider("trl", None, missing="unavailable: trl.trainer.utils not importable"))
    return {"entropy": ent, "logp_entropy": both}


def main(argv=None):
    p = C.parser(__doc__)  # the logit-kernel sweep sizes (C.LOGIT_SWEEP)
    args = C.finish_args(p.parse_args(argv))
    C.sweep(args, "entropy", providers(), [(None, v) for v in args.vocab], "entropy kernels", clear=_logits.cache_clear)


if __name__ == "__main__":
    main()
