"""Shared benchmark harness for benchmarks/kernels/bench_*.py.

Timing
    CUDA: ``triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])`` (ms).
    CPU:  our own timer: ``reps`` repetitions after one warm-up, providers interleaved round-robin so that
          load from other processes hits all of them alike; p50/p20/p80 of the repetitions (ms).
Memory ("peak extra": bytes above what was allocated before the call, inputs excluded)
    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation before.
    CPU:  the process's peak resident set (``VmHWM`` in /proc/self/status, reset by writing 5 to
          /proc/self/clear_refs) minus the resident set before the call, with glibc's mmap threshold pinned at
          64 KiB (``mallopt``) and ``malloc_trim`` before, so large torch buffers are mapped and unmapped for real.
          This sees every allocation (torch, numpy, Python) but only at page granularity; one run, after warm-up.
Modes
    fwd:  forward under ``torch.no_grad()`` (statistics / inference use).
    bwd:  backward only (``loss.backward(retain_graph=True)`` on a graph built beforehand).
    full: forward with autograd + backward.  Peak extra memory then includes the input gradient (N x V).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime as _dt
import gc
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

try:  # the bwd mode re-runs one compiled backward with retain_graph=True, which donated buffers forbid
    import torch._functorch.config as _functorch_config

    _functorch_config.donated_buffer = False
except Exception:  # pragma: no cover
    pass

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLUMNS = [
    "kernel",
    "provider",
    "mode",
    "metric",
    "unit",
    "x_name",
    "x_value",
    "p50",
    "p20",
    "p80",
    "V",
    "H",
    "dtype",
    "extra",
    "device_name",
    "torch_version",
    "triton_version",
    "timestamp",
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------------
# arguments / environment
# ----------------------------------------------------------------------------------------------------------
# the logit-kernel sweeps (entropy, mixed CE): token counts per setting and the vocabularies of Qwen2.5 / Llama 3
LOGIT_SWEEP = dict(cpu_tokens=[256, 512, 1024, 2048], quick_tokens=[256, 512],
                   gpu_tokens=[1024, 2048, 4096, 8192, 16384, 32768], vocabs_cpu=[151936], vocabs_gpu=[151936, 128256])


def parser(description: str, cpu_tokens=LOGIT_SWEEP["cpu_tokens"], quick_tokens=LOGIT_SWEEP["quick_tokens"],
           gpu_tokens=LOGIT_SWEEP["gpu_tokens"], vocabs_cpu=LOGIT_SWEEP["vocabs_cpu"],
           vocabs_gpu=LOGIT_SWEEP["vocabs_gpu"]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small CPU sweep (a minute or so)")
    p.add_argument("--tokens", type=int, nargs="*", default=None, help="token counts to sweep")
    p.add_argument("--vocab", type=int, nargs="*", default=None, help="vocabulary sizes")
    p.add_argument("--dtypes", nargs="*", default=None, choices=sorted(DTYPES))
    p.add_argument("--modes", nargs="*", default=["fwd", "bwd", "full"], choices=["fwd", "bwd", "full"])
    p.add_argument("--providers", nargs="*", default=None, help="subset of providers")
    p.add_argument("--reps", type=int, default=None, help="CPU repetitions per point (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads for every provider")
    p.add_argument(
        "--grad-max-tokens", type=int, default=None, help="CPU: largest token count for bwd/full (default 512)"
    )
    p.add_argument("--out", default=RESULTS)
    p.set_defaults(_cpu_tokens=cpu_tokens, _quick_tokens=quick_tokens, _gpu_tokens=gpu_tokens)
    p.set_defaults(_vocabs_cpu=vocabs_cpu, _vocabs_gpu=vocabs_gpu)
    return p


def finish_args(args):
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda requested but torch.cuda.is_available() is False")
    if args.tokens is None:
        args.tokens = args._gpu_tokens if cuda else (args._quick_tokens if args.quick else args._cpu_tokens)
    if args.vocab is None:
        args.vocab = args._vocabs_gpu if cuda else args._vocabs_cpu
    if args.dtypes is None:
        args.dtypes = ["bf16", "fp32"] if cuda else ["fp32"]
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.grad_max_tokens is None:
        args.grad_max_tokens = 1 << 30 if cuda else (256 if args.quick else 512)
    if not cuda:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    return args


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "n/a"


# ----------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Provider:
    """``setup(x, V, H, dtype, device, grad)`` -> (fn, inputs_requiring_grad); fn() returns a scalar loss-like
    tensor (outputs already summed, so that ``.backward()`` works)."""

    name: str
    setup: Callable | None
    cuda_only: bool = False
    cpu_only: bool = False
    note: str = ""
    missing: str = ""  # why this provider cannot run here (e.g. its package is not installed)


def optional_provider(name: str, build: Callable[[], Provider], **kw) -> Provider:
    """``build()`` or, if it raises (package missing), a placeholder whose rows say why in the CSV/console."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - ImportError and whatever a broken install raises
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        print(f"! provider {name} unavailable ({reason}); its rows say so in the CSV", flush=True)
        return Provider(name, None, missing=f"unavailable: {reason}", **kw)


def device_randn(shape, seed: int, dtype, device, scale: float = 1.0, grad: bool = False) -> torch.Tensor:
    """Benchmark input created on ``device`` in ``dtype`` (no fp32 host copy: 32k x 151,936 would be ~20 GB)."""
    g = torch.Generator(device=device).manual_seed(seed)
    t = torch.randn(*shape, generator=g, device=device, dtype=dtype)
    if scale != 1.0:
        t.mul_(scale)
    return t.requires_grad_(grad)


def device_randint(high: int, shape, seed: int, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(0, high, shape, generator=g, device=device)


@dataclass
class Point:
    kernel: str
    provider: str
    mode: str
    x_value: int
    V: int
    H: int | None
    dtype: str
    times: list = field(default_factory=list)  # ms
    mem: float | None = None  # bytes
    error: str = ""


def _q(values, q):
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class _CpuMem:
    def __init__(self):
        self.ok = sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")
        self.libc = None
        if self.ok:
            try:
                self.libc = ctypes.CDLL("libc.so.6")
                self.libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
            except OSError:
                self.ok = False

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def measure(self, fn) -> float:
        if not self.ok:
            return float("nan")
        gc.collect()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = self._status("VmRSS")
        fn()
        return float(self._status("VmHWM") - base)


_CPU_MEM = None


def _make_mode_fn(mode, fn, grads_of):
    """Return (prepare, timed): ``prepare`` runs untimed before every timed call (it drops input gradients,
    and for ``bwd`` builds the graph once); ``timed`` is what is measured."""

    def drop_grads():
        for t in grads_of:
            t.grad = None

    if mode == "fwd":

        def timed():
            with torch.no_grad():
                fn()

        return drop_grads, timed
    if mode == "full":

        def timed():
            fn().backward()

        return drop_grads, timed

    state = {}

    def prepare():
        drop_grads()
        if "loss" not in state:
            state["loss"] = fn()

    def timed():
        state["loss"].backward(retain_graph=True)

    return prepare, timed


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_points(kernel, providers, modes, xs, V, H, dtype_name, device, reps, grad_max_tokens, log=print):
    """Measure all providers for one (kernel, V, H, dtype) over token counts ``xs``."""
    global _CPU_MEM
    dtype = DTYPES[dtype_name]
    cuda = device == "cuda"
    if not cuda and _CPU_MEM is None:
        _CPU_MEM = _CpuMem()
    points = []
    dead = set()  # (provider, mode) that hit OOM at a smaller x
    for x in xs:
        for mode in modes:
            if mode != "fwd" and not cuda and x > grad_max_tokens:
                continue
            active = []
            for prov in providers:
                pt = Point(kernel, prov.name, mode, x, V, H, dtype_name)
                points.append(pt)
                if prov.missing:
                    pt.error = prov.missing
                    continue
                if (prov.name, mode) in dead:
                    pt.error = "oom at smaller size"
                    continue
                try:
                    fn, grads_of = prov.setup(x, V, H, dtype, device, mode != "fwd")
                    prepare, timed = _make_mode_fn(mode, fn, grads_of)
                    prepare()
                    timed()  # warm-up (compilation, autotune)
                    if cuda:
                        torch.cuda.synchronize()
                    active.append((prov, pt, prepare, timed, fn, grads_of))
                except Exception as exc:  # noqa: BLE001 - record and continue
                    pt.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                    if _is_oom(exc):
                        dead.add((prov.name, mode))
                    log(f"  ! {kernel}/{prov.name}/{mode} x={x}: {pt.error}")
                    _cleanup(cuda)
            # time
            if cuda:
                import triton.testing

                for prov, pt, prepare, timed, fn, grads_of in active:
                    try:
                        prepare()  # builds the bwd graph; do_bench drops grads itself (grad_to_none)
                        p50, p20, p80 = triton.testing.do_bench(timed, quantiles=[0.5, 0.2, 0.8], grad_to_none=grads_of)
                        pt.times = [p50, p20, p80]
                    except Exception as exc:  # noqa: BLE001
                        pt.error = f"{type(exc).__name__}"
                        if _is_oom(exc):
                            dead.add((prov.name, mode))
            else:
                for _ in range(reps):
                    for prov, pt, prepare, timed, fn, grads_of in active:
                        prepare()
                        t0 = time.perf_counter()
                        timed()
                        pt.times.append((time.perf_counter() - t0) * 1e3)
            # memory (one provider at a time; graphs of the others are dropped first)
            for prov, pt, prepare, timed, fn, grads_of in active:
                try:
                    pt.mem = _measure_mem(cuda, prepare, timed)
                except Exception as exc:  # noqa: BLE001
                    pt.error = pt.error or f"mem: {type(exc).__name__}"
            for item in active:
                pt = item[1]
                if pt.times:
                    tq = _summary(pt.times, cuda)
                    log(
                        f"  {kernel:<22} {pt.provider:<14} {mode:<4} x={x:<6} V={V} {dtype_name}: "
                        f"{tq[0]:9.2f} ms  mem {pt.mem / 2**20 if pt.mem is not None else float('nan'):9.1f} MiB"
                    )
            del active
            _cleanup(cuda)
    return points


def _measure_mem(cuda, prepare, timed):
    if cuda:
        torch.cuda.synchronize()
        prepare()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        timed()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    prepare()
    return _CPU_MEM.measure(timed)


def _summary(times, cuda):
    if cuda:
        return times[0], times[1], times[2]
    return _q(times, 0.5), _q(times, 0.2), _q(times, 0.8)


def _cleanup(cuda):
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------
def write_csv(path, points, device, extra=""):
    name = device_name(device)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for pt in points:
            base = {
                "kernel": pt.kernel,
                "provider": pt.provider,
                "mode": pt.mode,
                "x_name": "tokens",
                "x_value": pt.x_value,
                "V": pt.V,
                "H": pt.H if pt.H is not None else "",
                "dtype": pt.dtype,
                "extra": (extra + (f"; error={pt.error}" if pt.error else "")).strip("; "),
                "device_name": name,
                "torch_version": torch.__version__,
                "triton_version": triton_version(),
                "timestamp": stamp,
            }
            tq = _summary(pt.times, device == "cuda") if pt.times else (float("nan"),) * 3
            w.writerow({**base, "metric": "time", "unit": "ms", "p50": tq[0], "p20": tq[1], "p80": tq[2]})
            mem = pt.mem / 2**20 if pt.mem is not None else float("nan")
            w.writerow({**base, "metric": "memory", "unit": "MiB", "p50": mem, "p20": mem, "p80": mem})


def plot(path, points, title, cuda=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(p.kernel, p.V, p.H or 0, p.dtype) for p in points})
    modes = [m for m in ("fwd", "bwd", "full") if any(p.mode == m for p in points)]
    rows = [(c, metric) for c in combos for metric in ("time", "memory")]
    fig, axes = plt.subplots(len(rows), len(modes), figsize=(5 * len(modes), 3.2 * len(rows)), squeeze=False)
    providers = sorted({p.provider for p in points})
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(providers)}
    for r, ((kernel, V, H, dt), metric) in enumerate(rows):
        for c, mode in enumerate(modes):
            ax = axes[r][c]
            for prov in providers:
                sel = sorted(
                    (p for p in points if (p.kernel, p.V, p.H or 0, p.dtype, p.mode, p.provider) == (kernel, V, H, dt, mode, prov)),
                    key=lambda p: p.x_value,
                )
                xs, ys, lo, hi = [], [], [], []
                for p in sel:
                    if metric == "time" and p.times:
                        q50, q20, q80 = _summary(p.times, cuda)
                        xs.append(p.x_value)
                        ys.append(q50)
                        lo.append(q20)
                        hi.append(q80)
                    elif metric == "memory" and p.mem is not None and not math.isnan(p.mem):
                        xs.append(p.x_value)
                        ys.append(p.mem / 2**20)
                if xs:
                    ax.plot(xs, ys, marker="o", label=prov, color=colors[prov])
                    if lo:
                        ax.fill_between(xs, lo, hi, alpha=0.2, color=colors[prov])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_ylabel("ms (p50, band p20-p80)" if metric == "time" else "peak extra MiB")
            hdesc = f" H={H}" if H else ""
            ax.set_title(f"{kernel} {mode} {metric}\nV={V}{hdesc} {dt}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def outputs_for(args, family):
    dev = args.device
    name = slug(device_name(dev))
    base = os.path.join(args.out, f"{family}_{dev}-{name}")
    return base + ".csv", base + ".png"


def env_note(args):
    if args.device == "cpu":
        return f"threads={torch.get_num_threads()}; reps={args.reps}; mem=VmHWM-RSS"
    return "do_bench quantiles; mem=max_memory_allocated"


def select(providers, args):
    cuda = args.device == "cuda"
    out = []
    for p in providers:
        if p.cuda_only and not cuda:
            continue
        if p.cpu_only and cuda:
            continue
        if args.providers and p.name not in args.providers:
            continue
        out.append(p)
    return out


def sweep(args, family, providers_by_kernel, shapes, title, note="", clear=None):
    """Measure every (kernel, (H, V) shape, dtype) point and write ``<family>_<device>-<name>.csv`` + ``.png``.

    ``shapes`` is a list of ``(H, V)``; ``H`` is None for kernels that take logits. The CSV and PNG are rewritten
    after every sweep, so an interrupted run still leaves what it measured. ``clear`` drops cached inputs between
    sweeps.
    """
    points = []
    csv_path, png_path = outputs_for(args, family)

    def write():
        write_csv(csv_path, points, args.device, env_note(args) + note)
        plot(png_path, points, f"{title} on {device_name(args.device)}", cuda=args.device == "cuda")

    for kernel, provs in providers_by_kernel.items():
        provs = select(provs, args)
        for h, v in shapes:
            for dt in args.dtypes:
                shape = f"V={v}" if h is None else f"H={h} V={v}"
                print(f"[{kernel}] {shape} {dt} on {device_name(args.device)}", flush=True)
                points += run_points(
                    kernel, provs, args.modes, args.tokens, v, h, dt, args.device, args.reps, args.grad_max_tokens
                )
                if clear is not None:
                    clear()
                write()
    write()
    print("wrote", csv_path, png_path)
    return points
