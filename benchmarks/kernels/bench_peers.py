"""Side by side, same inputs, one run: our hidden-state and logits-level ops against the peers' own.

Three tasks, each over hidden states ``h [N, H]`` and an LM head ``w [V, H]`` (targets ``y [N]``):

* ``logp_entropy`` -- per-token log-probability of the target and entropy, loss ``sum(logp) + sum(H)``:
  ``weakstrong_linear`` (``linear_selective_log_softmax_and_entropy``, logits never built),
  ``weakstrong_logits`` (``h @ w.T`` then ``selective_log_softmax_and_entropy``), ``trl_chunked`` (TRL 1.16's
  ``trl.kernels.ChunkedLogProbFunction``, vocabulary chunk 32,768 as TRL's trainer uses it), ``trl_triton``
  (``h @ w.T`` then TRL's Triton ``selective_log_softmax_and_entropy``; CUDA only) and ``eager``;
* ``ce`` -- mean cross entropy: ``weakstrong_linear`` (``linear_mixed_cross_entropy`` at lam = 1), ``liger_flce``
  (Liger's fused linear cross entropy; Triton, CUDA only) and ``eager``;
* ``two_heads`` -- a per-token loss over two models' hidden states and heads: ``weakstrong_linear``
  (``linear_mixed_cross_entropy`` at lam = 0.5), ``eager`` (the same mixed CE on full logits) and
  ``trl_divergence`` (TRL's ``ChunkedDivergenceFunction``, beta = 0.5: a generalised JSD, a different loss over
  the same two-head workload: timed, its values not compared).

Values: every provider's outputs (and, for fwd+bwd, its gradients of ``h`` and ``w``) are compared with the same
loss computed by autograd in float64 on the same inputs; the CSV keeps the max abs difference.  Where N x V is
above ``REF_ELEMENTS`` (an fp64 eager reference would need tens of GB) the check runs on the first ``REF_TOKENS``
tokens of the same inputs (said in the ``note`` column).
Time: CPU: ``--reps`` timed calls after one warm-up, providers interleaved round-robin (load from other processes
hits all alike); median and interquartile range (p25-p75).  CUDA: ``triton.testing.do_bench`` quantiles
0.5 / 0.25 / 0.75.
Memory (peak bytes allocated by the call above what was live before it, inputs and their existing gradients
excluded): CPU: the torch profiler's memory events (``profile_memory=True``: every allocation and free of
torch's CPU allocator, in order; their running sum's maximum), one separate untimed call; CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

    python benchmarks/kernels/bench_peers.py --device cpu            # 3 shapes, fp32, one thread
    python benchmarks/kernels/bench_peers.py --device cuda           # bf16 + fp32, GPU shapes
Writes results/peers_<device>-<name>.csv and .png.  TRL or Liger missing (or failing) gives rows saying why.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from weakstrong.kernels import (  # noqa: E402
    linear_mixed_cross_entropy,
    linear_selective_log_softmax_and_entropy,
    selective_log_softmax_and_entropy,
)

TRL_VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16
LAM = 0.5
CPU_SHAPES = [(512, 576, 49152), (256, 896, 151936), (1024, 576, 49152)]  # SmolLM2 / Qwen2.5-0.5B heads
GPU_SHAPES = [(8192, 896, 151936), (8192, 2048, 128256), (4096, 576, 49152)]
REF_ELEMENTS, REF_TOKENS = 1 << 28, 1024
COLUMNS = ["task", "provider", "mode", "N", "H", "V", "dtype", "p50_ms", "p25_ms", "p75_ms", "reps", "peak_mib",
           "max_abs_diff_out", "max_abs_diff_grad", "note", "device_name", "torch", "trl", "liger_kernel",
           "threads", "timestamp"]


def _version(dist):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------------------------------------
# providers: fn(h, w, h2, w2, y) -> outputs (tuple of tensors); loss(outputs) -> scalar
# ----------------------------------------------------------------------------------------------------------
def _eager_logp_ent(h, w, y):
    logp = torch.log_softmax((h @ w.T).float() if h.dtype != torch.float64 else h @ w.T, dim=-1)
    return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _trl_chunked():
    from trl.kernels import ChunkedLogProbFunction

    def fn(h, w, y):
        out = ChunkedLogProbFunction.apply(h, w, None, y, 1.0, TRL_VOCAB_CHUNK, None, 1.0, ("entropy",))
        return out[0], out[1]

    return fn


def _trl_triton():
    from trl.kernels import selective_log_softmax_and_entropy as trl_fused

    return lambda h, w, y: trl_fused(h @ w.T, y)


def _trl_divergence():
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    return lambda h, w, h2, w2, y: ChunkedDivergenceFunction.apply(h, w, None, h2, w2, None, 0.5)[:1]


def _liger_flce():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    return lambda h, w, y: (loss(w, h, y),)


def _eager_mixed(h, w, h2, w2, y):
    f = (lambda t: t) if h.dtype == torch.float64 else (lambda t: t.float())
    z = LAM * f(h @ w.T) + (1 - LAM) * f(h2 @ w2.T)
    return (F.cross_entropy(z, y, ignore_index=-100),)


def _eager_ce(h, w, y):
    z = h @ w.T
    return (F.cross_entropy(z if z.dtype == torch.float64 else z.float(), y, ignore_index=-100),)


class P:
    def __init__(self, task, name, build, cuda_only=False, compare=True, note=""):
        self.task, self.name, self.cuda_only, self.compare, self.note = task, name, cuda_only, compare, note
        self.missing = ""
        try:
            self.fn = build()
        except Exception as exc:  # noqa: BLE001 - a missing or broken peer install: say so in its rows
            self.fn = None
            self.missing = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"


def providers():
    one = lambda f: (lambda h, w, h2, w2, y: f(h, w, y))  # noqa: E731 - single-model tasks ignore h2, w2
    return [
        P("logp_entropy", "weakstrong_linear", lambda: one(linear_selective_log_softmax_and_entropy)),
        P("logp_entropy", "weakstrong_logits", lambda: one(lambda h, w, y: selective_log_softmax_and_entropy(h @ w.T, y))),
        P("logp_entropy", "trl_chunked", lambda: one(_trl_chunked())),
        P("logp_entropy", "trl_triton", lambda: one(_trl_triton()), cuda_only=True),
        P("logp_entropy", "eager", lambda: one(_eager_logp_ent)),
        P("ce", "weakstrong_linear", lambda: one(lambda h, w, y: (linear_mixed_cross_entropy(h, w, h, w, y, lam=1.0),))),
        P("ce", "liger_flce", lambda: one(_liger_flce()), cuda_only=True),
        P("ce", "eager", lambda: one(_eager_ce)),
        P("two_heads", "weakstrong_linear",
          lambda: (lambda h, w, h2, w2, y: (linear_mixed_cross_entropy(h, w, h2, w2, y, lam=LAM),))),
        P("two_heads", "eager", lambda: _eager_mixed),
        P("two_heads", "trl_divergence", _trl_divergence, compare=False,
          note="generalised JSD (beta=0.5), not the mixed CE: timing of the same two-head workload only"),
    ]


REFERENCE = {"logp_entropy": lambda h, w, h2, w2, y: _eager_logp_ent(h, w, y),
             "ce": lambda h, w, h2, w2, y: _eager_ce(h, w, y), "two_heads": _eager_mixed}


def _loss(outs):
    return sum(o.float().sum() if o.dtype != torch.float64 else o.sum() for o in outs)


# ----------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------
def make_inputs(n, h, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)  # noqa: E731
    return mk(n, h), mk(v, h, scale=h**-0.5 * 4), mk(n, h), mk(v, h, scale=h**-0.5 * 4), \
        torch.randint(0, v, (n,), generator=g).to(device)


def _leaves(inputs, grad):
    return [t.detach().clone().requires_grad_(grad) if t.is_floating_point() else t for t in inputs]


def _call(fn, inputs, mode):
    if mode == "fwd":
        with torch.no_grad():
            return fn(*inputs)
    outs = fn(*inputs)
    _loss(outs).backward()
    return outs


def _cpu_peak_bytes(fn, inputs, mode) -> float:
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _call(fn, inputs, mode)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return float(peak)


def _cuda_peak_bytes(fn, inputs, mode) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _call(fn, inputs, mode)
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


def _max_diff(a, b):
    return max((float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(a, b)),
               default=float("nan"))


def measure(shape, dtype_name, device, reps, modes, provs, log=print):
    n, hdim, v = shape
    dtype = C.DTYPES[dtype_name]
    cuda = device == "cuda"
    base = make_inputs(n, hdim, v, dtype, device)
    rows = []
    for task in dict.fromkeys(p.task for p in provs):
        tprovs = [p for p in provs if p.task == task]
        sub = n * v > REF_ELEMENTS
        check_in = [t[:REF_TOKENS] if sub and t.shape[0] == n else t for t in base]  # rows of h, h2, y
        ref_in = _leaves([t.double() if t.is_floating_point() else t for t in check_in], True)
        ref_out = REFERENCE[task](*ref_in)
        _loss(ref_out).backward()
        ref_grads = [t.grad for t in ref_in[:4] if t.grad is not None]
        check_note = f"values checked on the first {REF_TOKENS} tokens" if sub else ""
        for mode in modes:
            active = []
            for p in tprovs:
                row = {"task": task, "provider": p.name, "mode": mode, "N": n, "H": hdim, "V": v, "dtype": dtype_name,
                       "reps": 0, "note": p.note}
                rows.append(row)
                if p.missing or (p.cuda_only and not cuda):
                    row["note"] = p.missing or "CUDA only (Triton)"
                    continue
                inputs = _leaves(base, mode != "fwd")
                try:
                    if p.compare:
                        cin = _leaves(check_in, mode != "fwd")
                        outs = _call(p.fn, cin, mode)
                        row["max_abs_diff_out"] = _max_diff(outs, ref_out)
                        if mode != "fwd":
                            grads = [t.grad for t in cin[:4] if t.grad is not None]
                            row["max_abs_diff_grad"] = _max_diff(grads, ref_grads)
                        row["note"] = "; ".join(x for x in (row["note"], check_note) if x)
                        del cin, outs
                    _call(p.fn, inputs, mode)  # warm-up
                    active.append((p, row, inputs))
                except Exception as exc:  # noqa: BLE001
                    row["note"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                    log(f"  ! {task}/{p.name}/{mode}: {row['note']}")
            times = {id(r): [] for _, r, _ in active}
            if cuda:
                import triton.testing

                for p, row, inputs in active:
                    grads = [t for t in inputs if t.is_floating_point()] if mode != "fwd" else None
                    q = triton.testing.do_bench(lambda: _call(p.fn, inputs, mode), quantiles=[0.5, 0.25, 0.75],
                                                grad_to_none=grads)
                    times[id(row)] = list(q)
            else:
                for _ in range(reps):
                    for p, row, inputs in active:
                        for t in inputs:
                            if t.is_floating_point():
                                t.grad = None
                        t0 = time.perf_counter()
                        _call(p.fn, inputs, mode)
                        times[id(row)].append((time.perf_counter() - t0) * 1e3)
            for p, row, inputs in active:
                ts = times[id(row)]
                if cuda:
                    row["p50_ms"], row["p25_ms"], row["p75_ms"] = ts
                    row["reps"] = "do_bench"
                else:
                    row["p50_ms"], row["p25_ms"], row["p75_ms"] = (C._q(ts, q) for q in (0.5, 0.25, 0.75))
                    row["reps"] = len(ts)
                for t in inputs:
                    if t.is_floating_point():
                        t.grad = None
                row["peak_mib"] = (_cuda_peak_bytes if cuda else _cpu_peak_bytes)(p.fn, inputs, mode) / 2**20
                log(f"  {task:<13} {p.name:<18} {mode:<4} N={n} H={hdim} V={v} {dtype_name}: "
                    f"{row['p50_ms']:9.1f} ms (IQR {row['p25_ms']:.1f}-{row['p75_ms']:.1f})  "
                    f"peak {row['peak_mib']:8.1f} MiB  diff out {row.get('max_abs_diff_out', float('nan')):.2e} "
                    f"grad {row.get('max_abs_diff_grad', float('nan')):.2e}")
            del active
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------
def write_csv(path, rows, device, threads):
    meta = {"device_name": C.device_name(device), "torch": torch.__version__, "trl": _version("trl"),
            "liger_kernel": _version("liger-kernel"), "threads": threads if device == "cpu" else "",
            "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: "" for k in COLUMNS}, **r, **meta})


def plot(path, rows, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["task"], r["N"], r["H"], r["V"], r["dtype"]) for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 2.6 * len(groups)), squeeze=False)
    for i, g in enumerate(groups):
        sel = [r for r in rows if (r["task"], r["N"], r["H"], r["V"], r["dtype"]) == g]
        provs = list(dict.fromkeys(r["provider"] for r in sel))
        for j, (metric, label) in enumerate((("p50_ms", "ms (median, IQR bars)"), ("peak_mib", "peak extra MiB"))):
            ax = axes[i][j]
            width = 0.8 / max(1, len(modes))
            for k, mode in enumerate(modes):
                ys, lo, hi = [], [], []
                for p in provs:
                    r = next((r for r in sel if r["provider"] == p and r["mode"] == mode), {})
                    y = r.get(metric)
                    ys.append(y if isinstance(y, float) else math.nan)
                    lo.append(ys[-1] - r["p25_ms"] if metric == "p50_ms" and "p25_ms" in r else 0)
                    hi.append(r["p75_ms"] - ys[-1] if metric == "p50_ms" and "p75_ms" in r else 0)
                xs = [x + (k - (len(modes) - 1) / 2) * width for x in range(len(provs))]
                bars = ax.barh(xs, ys, height=width, xerr=[lo, hi] if metric == "p50_ms" else None,
                               label={"fwd": "forward (no grad)", "full": "forward + backward"}.get(mode, mode))
                for b, y in zip(bars, ys):
                    if not math.isnan(y):
                        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {y:.0f}", va="center", fontsize=7)
                for x, y, p in zip(xs, ys, provs):
                    if math.isnan(y):
                        ax.text(0, x, " n/a here", va="center", fontsize=7, color="gray")
            ax.set_yticks(range(len(provs)))
            ax.set_yticklabels(provs, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(label, fontsize=8)
            ax.set_title(f"{g[0]}  N={g[1]} H={g[2]} V={g[3]} {g[4]}", fontsize=9)
            ax.grid(True, axis="x", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def replot(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("N", "H", "V"):
            r[k] = int(r[k])
        for k in ("p50_ms", "p25_ms", "p75_ms", "peak_mib"):
            if r[k] in ("", None):
                del r[k]
            else:
                r[k] = float(r[k])
    r0 = rows[0]
    reps = "/".join(sorted({r["reps"] for r in rows if r["reps"] not in ("", "0")}))
    title = (f"ours vs TRL {r0['trl']} / Liger {r0['liger_kernel']} / eager on {r0['device_name']}"
             + (f", {r0['threads']} thread(s), {reps} reps" if r0["threads"] else ""))
    plot(os.path.splitext(path)[0] + ".png", rows, title)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="*", default=None, help="NxHxV, e.g. 512x576x49152")
    ap.add_argument("--dtypes", nargs="*", default=None, choices=sorted(C.DTYPES))
    ap.add_argument("--modes", nargs="*", default=["fwd", "full"], choices=["fwd", "full"])
    ap.add_argument("--tasks", nargs="*", default=None, choices=["logp_entropy", "ce", "two_heads"])
    ap.add_argument("--reps", type=int, default=7, help="CPU timed calls per provider and mode")
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    ap.add_argument("--out", default=C.RESULTS)
    ap.add_argument("--replot", metavar="CSV", help="only redraw the plot of a CSV this script wrote")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.replot)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False")
    if not cuda:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes] if args.shapes else \
        (GPU_SHAPES if cuda else CPU_SHAPES)
    dtypes = args.dtypes or (["bf16", "fp32"] if cuda else ["fp32"])
    provs = [p for p in providers() if not args.tasks or p.task in args.tasks]
    for p in provs:
        if p.missing:
            print(f"! {p.task}/{p.name} {p.missing}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"peers_{args.device}-{C.slug(C.device_name(args.device))}")
    rows = []
    title = (f"ours vs TRL {_version('trl')} / Liger {_version('liger-kernel')} / eager on {C.device_name(args.device)}"
             + ("" if cuda else f", {args.threads} thread(s), {args.reps} reps"))
    for shape in shapes:
        for dt in dtypes:
            print(f"[peers] N={shape[0]} H={shape[1]} V={shape[2]} {dt}", flush=True)
            for task in dict.fromkeys(p.task for p in provs):  # CSV + plot after each task: a cut run keeps them
                rows += measure(shape, dt, args.device, args.reps, args.modes, [p for p in provs if p.task == task])
                write_csv(stem + ".csv", rows, args.device, args.threads)
                plot(stem + ".png", rows, title)
    print("wrote", stem + ".csv", stem + ".png")
    return rows


if __name__ == "__main__":
    main()
