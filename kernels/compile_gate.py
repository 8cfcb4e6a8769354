"""Compile gate: AOT-compile every Triton kernel variant the public wrappers launch, for real GPU targets,
without a GPU, and fail on a compile error or a register spill.

Two steps, two processes (a kernel module imported under ``TRITON_INTERPRET=1`` holds interpreter objects
that the compiler cannot take):

1. ``collect`` (needs ``TRITON_INTERPRET=1`` set before import): calls the public API on CPU tensors for every
   dtype and option combination it accepts, with the GPU block configuration forced, inside
   :func:`kernels._launch.record_launches` (``execute=False``: recorded, not run).  The records are what
   :func:`kernels._launch.launch` was asked to launch -- the same argument tuple the kernel gets -- so the
   gate follows the wrappers and cannot drift from a hand-written list.
2. ``compile`` (no interpreter): for each unique record and target, builds the specialisation exactly as
   Triton's JIT does at launch (its own binder: dtypes, 16-divisibility of integers and 16-byte alignment of
   pointers, constexprs, ``num_warps``), compiles to PTX/cubin with ``triton.compile`` for ``GPUTarget("cuda",
   arch, 32)``, then runs the ``ptxas`` shipped in the triton wheel with ``-v`` on the PTX and parses
   registers and spill bytes.  ``ptxas -v`` lines that do not parse are an error (never a guess).

CLI: ``python -m weakstrong.kernels.compile_gate --vocab 151936 --arch 80 90 [--full]`` (runs both steps).
Tested by ``tests/kernels/test_compile_gate.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")
GATE_VOCAB = 151_936
FULL_VOCABS = (41, 4099, 32_000, 32_001, 128_256, 151_936, 262_144)
ARCHS = (80, 90)
#: the triton version these records and the ptxas output format were checked against (constraints pin it)
TRITON_VERSION = "3.7.1"


# ----------------------------------------------------------------------------------------------------------
# step 1: record the launches of the public API
# ----------------------------------------------------------------------------------------------------------
def _api_calls(vocab: int, full: bool):
    """Yield zero-argument callables covering every option combination of the public ops."""
    import torch

    import weakstrong.kernels as K

    dt = {name: getattr(torch, name) for name in DTYPES}
    shapes = [(2, 3)] + ([(1,), (16, 2), (2, 17)] if full else [])  # R = 3, 1, 2, 17: int specialisations

    def logits(shape, dtype, grad=True, view=None):
        if view == "shifted":
            x = torch.zeros(*shape[:-1], shape[-1] + 1, vocab, dtype=dtype)[..., :-1, :]
        elif view == "padded":
            x = torch.zeros(*shape, vocab + 8, dtype=dtype)[..., :vocab]
        else:
            x = torch.zeros(*shape, vocab, dtype=dtype)
        return x.requires_grad_(grad)

    views = [None] + (["shifted", "padded"] if full else [])
    for shape, view in itertools.product(shapes, views):
        idx = torch.zeros(shape, dtype=torch.long)
        mask = torch.ones(shape, dtype=torch.bool)
        for name in DTYPES:
            d = dt[name]

            def ent_grad(d=d, view=view, shape=shape):
                K.entropy_from_logits(logits(shape, d, view=view)).sum().backward()

            def ent_nograd(d=d, view=view, shape=shape):
                with torch.no_grad():
                    K.entropy_from_logits(logits(shape, d, False, view))

            yield ent_grad
            yield ent_nograd
            for use_mask, temp, which in itertools.product((False, True), (1.0, 0.7), ("both", "logp", "ent")):

                def both(d=d, view=view, shape=shape, use_mask=use_mask, temp=temp, which=which):
                    x = logits(shape, d, view=view)
                    lp, h = K.selective_log_softmax_and_entropy(x, idx, temp, mask if use_mask else None)
                    out = {"both": lp.sum() + h.sum(), "logp": lp.sum(), "ent": h.sum()}[which]
                    out.backward()

                yield both
            for da, db in itertools.product(DTYPES, DTYPES):
                # default: same-dtype pairs plus bf16 <-> fp32 (a bf16 model against an fp32 one); --full: all 9
                if da != name or not (full or da == db or {da, db} == {"bfloat16", "float32"}):
                    continue
                for lam, stats, grads in itertools.product((0.0, 0.5, 1.0), (False, True), ("ab", "a", "b")):

                    def mixed(da=da, db=db, lam=lam, stats=stats, grads=grads, view=view, shape=shape):
                        a = logits(shape, dt[da], "a" in grads, view)
                        b = logits(shape, dt[db], "b" in grads, view)
                        out = K.mixed_cross_entropy(a, b, idx, lam=lam, return_stats=stats)
                        (out[0] if stats else out).backward()

                    yield mixed

            def linear(d=d):
                h = torch.zeros(3, 8, dtype=d, requires_grad=True)
                w = torch.zeros(vocab, 8, dtype=d, requires_grad=True)
                y = torch.zeros(3, dtype=torch.long)
                lp, ent = K.linear_selective_log_softmax_and_entropy(h, w, y)
                (lp.sum() + ent.sum()).backward()
                K.linear_mixed_cross_entropy(h, w, h, w, y, lam=0.5, return_stats=True)[0].backward()

            yield linear


def collect(vocabs=(GATE_VOCAB,), full: bool = False) -> list[dict]:
    """Unique launch records of the public API at each vocabulary size (GPU block configuration)."""
    from ._dispatch import interpreting

    if not interpreting():
        raise RuntimeError("collect() needs TRITON_INTERPRET=1 set before weakstrong.kernels is imported")
    from . import _launch as L

    seen, out = set(), []
    saved = (L.FORCE_GPU_CONFIG, L.FORCE_FUSED_REDUCE, os.environ.get("WEAKSTRONG_KERNELS"))
    L.FORCE_GPU_CONFIG = L.FORCE_FUSED_REDUCE = True
    os.environ["WEAKSTRONG_KERNELS"] = "triton"
    try:
        for vocab in vocabs:
            for call in _api_calls(vocab, full):
                with L.record_launches(execute=False) as records:
                    call()
                for rec in records:
                    rec["vocab"] = vocab
                    key = json.dumps(rec, sort_keys=True)
                    if key not in seen:
                        seen.add(key)
                        out.append(rec)
    finally:
        L.FORCE_GPU_CONFIG, L.FORCE_FUSED_REDUCE = saved[:2]
        if saved[2] is None:
            os.environ.pop("WEAKSTRONG_KERNELS", None)
        else:
            os.environ["WEAKSTRONG_KERNELS"] = saved[2]
    return out


# ----------------------------------------------------------------------------------------------------------
# step 2: compile for GPU targets
# ----------------------------------------------------------------------------------------------------------
def ptxas_path() -> Path | None:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return p if p.is_file() and os.access(p, os.X_OK) else None


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(text: str) -> dict:
    """Registers and spill bytes from ``ptxas -v`` output; raises ValueError when a line cannot be read."""
    regs = [int(m) for m in _REGS.findall(text)]
    spills = [tuple(int(x) for x in m) for m in _SPILL.findall(text)]
    if not regs or not spills:
        raise ValueError(f"unparseable ptxas -v output: {text.strip()[:400]!r}")
    return {
        "registers": max(regs),
        "stack_bytes": max(s[0] for s in spills),
        "spill_stores": max(s[1] for s in spills),
        "spill_loads": max(s[2] for s in spills),
    }


class _ArgTensor:
    """What Triton's binder reads from a tensor argument: dtype and data_ptr (for 16-byte alignment)."""

    def __init__(self, dtype, aligned: bool):
        self.dtype = dtype
        self._ptr = 0 if aligned else 8

    def data_ptr(self):
        return self._ptr


def _arguments(record):
    import torch

    args = []
    for a in record["args"]:
        if "tensor" in a:
            args.append(_ArgTensor(getattr(torch, a["tensor"]), a["align16"]))
        else:
            (value,) = a.values()
            args.append(value)
    return args


def specialise(record: dict, arch: int):
    """``(fn, target, ASTSource, options)`` exactly as Triton's JIT builds them for this launch."""
    import importlib

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(importlib.import_module(record["module"]), record["kernel"])
    if type(fn).__name__ != "JITFunction":
        raise RuntimeError("compile step must run without TRITON_INTERPRET")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(record["constexprs"], num_warps=record["num_warps"])
    bound, specialization, options = binder(*_arguments(record), **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return fn, target, ASTSource(fn, signature, constexprs, attrs), options


def variant_key(record: dict, arch: int) -> str:
    """Identity of the compiled variant (records that differ only in integer values Triton does not
    specialise on compile to the same binary)."""
    fn, _, src, options = specialise(record, arch)
    return f"{fn.__name__}:{arch}:{src.hash()}:{sorted(options.__dict__.items())}"


def compile_record(record: dict, arch: int, ptxas: Path) -> dict:
    """Compile one record for ``sm_<arch>`` the way the JIT would; returns the ptxas figures."""
    import triton

    _, target, src, options = specialise(record, arch)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    text = compiled.asm["ptx"]
    m = re.search(r"^\.target\s+(sm_\w+)", text, re.M)  # sm_90 kernels are emitted for sm_90a
    if m is None:
        raise ValueError("unparseable PTX: no .target line")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(text)
        res = subprocess.run(
            [str(ptxas), "-v", f"--gpu-name={m.group(1)}", str(ptx), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}: {res.stderr.strip()[:800]}")
    return parse_ptxas(res.stdout + res.stderr)


_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int64": "i64", "uint8": "u8"}


def _label(rec: dict) -> str:
    dtypes = ",".join(_SHORT.get(a["tensor"], a["tensor"]) for a in rec["args"] if "tensor" in a)
    meta = ",".join(f"{k}={v}" for k, v in sorted(rec["constexprs"].items()))
    return f"{rec['kernel']}[{dtypes}|{meta}|warps={rec['num_warps']}|V={rec['vocab']}]"


def _dtype_family(rec: dict) -> str:
    return "+".join(sorted({a["tensor"] for a in rec["args"] if "tensor" in a} - {"int64", "uint8"}))


TARGET_MODES = ("rotate", "complement", "all")


def select_targets(records: list[dict], archs, mode: str = "rotate") -> list[tuple[dict, int]]:
    """Which (record, arch) pairs to compile.

    ``rotate`` (the default CI gate): each record on one arch, rotating over the records of each dtype family
    so that every family meets every arch; ``complement`` (the slow CI test): the pairs ``rotate`` left out;
    ``all``: every record on every arch (``rotate`` + ``complement``)."""
    archs = list(archs)
    if mode == "all" or len(archs) == 1:
        return [(r, a) for r in records for a in archs] if mode != "complement" else []
    count: dict[str, int] = {}
    picked = []
    for r in records:
        fam = _dtype_family(r)
        k = count[fam] = count.get(fam, -1) + 1
        chosen = archs[k % len(archs)]
        if mode == "rotate":
            picked.append((r, chosen))
        elif mode == "complement":
            picked += [(r, a) for a in archs if a != chosen]
        else:
            raise ValueError(f"mode must be one of {TARGET_MODES}, got {mode!r}")
    return picked


def run_gate(records: list[dict], archs=ARCHS, mode: str = "rotate") -> dict:
    ptxas = ptxas_path()
    if ptxas is None:
        raise FileNotFoundError("ptxas not found in the triton wheel (triton/backends/nvidia/bin/ptxas)")
    results, failures, seen = [], [], set()
    t0 = time.perf_counter()
    for rec, arch in select_targets(records, archs, mode):
        key = variant_key(rec, arch)
        if key in seen:
            continue
        seen.add(key)
        entry = {"kernel": _label(rec), "arch": f"sm_{arch}"}
        try:
            entry.update(compile_record(rec, arch, ptxas))
            if entry["spill_stores"] or entry["spill_loads"]:
                failures.append(f"{entry['kernel']} on sm_{arch}: spills {entry['spill_stores']}/{entry['spill_loads']} B")
        except Exception as exc:  # a compile error is a gate failure, reported with its variant
            entry["error"] = f"{type(exc).__name__}: {exc}"[:1000]
            failures.append(f"{entry['kernel']} on sm_{arch}: {entry['error']}")
        results.append(entry)
    return {"results": results, "failures": failures, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------------------
# CLI (both steps, each in its own process)
# ----------------------------------------------------------------------------------------------------------
def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", choices=("all", "collect", "compile"), default="all")
    ap.add_argument("--vocab", type=int, nargs="*", default=None, help=f"default {GATE_VOCAB} (--full: {FULL_VOCABS})")
    ap.add_argument("--arch", type=int, nargs="*", default=list(ARCHS))
    ap.add_argument("--full", action="store_true", help="all shapes/views/vocabularies/dtype pairs on every arch")
    ap.add_argument("--targets", choices=TARGET_MODES, default=None, help="(record, arch) pairs (default rotate)")
    ap.add_argument("--records", type=Path, help="records JSON (written by collect, read by compile)")
    ap.add_argument("--out", type=Path, help="report JSON")
    args = ap.parse_args(argv)
    vocabs = args.vocab or (list(FULL_VOCABS) if args.full else [GATE_VOCAB])
    if args.step == "collect":
        args.records.write_text(json.dumps(collect(vocabs, args.full)))
        return 0
    if args.step == "compile":
        mode = args.targets or ("all" if args.full else "rotate")
        report = run_gate(json.loads(args.records.read_text()), args.arch, mode)
        text = json.dumps(report, indent=1)
        if args.out:
            args.out.write_text(text)
        for line in report["failures"]:
            print("FAIL", line)
        regs = [r["registers"] for r in report["results"] if "registers" in r]
        print(f"{len(report['results'])} compiles, {len(report['failures'])} failures, registers "
              f"{min(regs, default=0)}-{max(regs, default=0)}, {report['seconds']:.1f} s")
        return 1 if report["failures"] else 0
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "records.json"
        base = [sys.executable, "-m", "weakstrong.kernels.compile_gate", "--records", str(rec)]
        vs = ["--vocab", *map(str, vocabs)] + (["--full"] if args.full else [])
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run(base + ["--step", "collect", *vs], env=env, check=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        mode = args.targets or ("all" if args.full else "rotate")
        extra = ["--targets", mode] + (["--out", str(args.out)] if args.out else [])
        return subprocess.run(base + ["--step", "compile", "--arch", *map(str, args.arch), *extra], env=env).returncode


if __name__ == "__main__":
    sys.exit(_main())
