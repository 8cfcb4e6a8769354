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
   registers and spill bytes.  ``ptxas -v`` lines that do not parse are an error (never a guess).  Each variant
   also reports the shared memory Triton requests at launch (``metadata.shared``: dynamic shared memory, which
   ``ptxas -v`` does not see) and the occupancy these imply (:func:`occupancy`).

What the default gate covers (``DEFAULT_CASES``), each through the public API:

* V = 151,936 (a multiple of 16), ``[2, 3, V]`` logits: every option combination of every op (R = 3: no
  integer specialisation);
* V = 50,257 (odd: the row stride and V lose their divisibility-by-16 specialisation) with the row counts the
  wrappers launch on a GPU: ``[1, 1024, V]`` logits (R = 1,024), and the same rows as the view
  ``logits[:, -1024:]`` of ``[1, 1025, V]``, whose base pointer is not 16-byte aligned at odd V (Triton then
  drops the pointer's alignment attribute: narrower vector loads, more registers);
* the hidden-state ops at both vocabularies with ``chunk_size`` set to the token chunk their wrapper picks on
  a CUDA device (one ``[token chunk, vocab tile]`` tile of ``kernels.linear.CUDA_CHUNK_ELEMENTS``: 4,096 tokens
  x 32,768 vocabulary rows at both).

It fails on a compile error, on any spill, and on a variant at the register limit of its warp count
(:func:`register_limit`: ptxas caps a thread at ``65536 / (32 * num_warps)`` registers, at most 255; a variant
whose count rounds up, in the 8-register allocation unit, to that cap has no headroom left and spills on the
next change).

CLI: ``python -m weakstrong.kernels.compile_gate [--vocab V ...] [--arch 80 90] [--full] [--jobs N]`` (runs
both steps).  Tested by ``tests/kernels/test_compile_gate.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
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
ODD_VOCAB = 50_257
#: rows of one sequence of logits in the default gate: a ``[B, T, V]`` batch launches with R = T
SEQ_ROWS = 1024
#: the API calls' shapes/views (see :func:`_logits`): ``small`` [2, 3, V]; ``one`` [1, V] (R = 1); ``rows16``
#: [16, 2, V]; ``rows17`` [2, 17, V]; ``shifted`` logits[:, :-1]; ``padded`` a vocab-padded [..., :V];
#: ``seq`` [1, SEQ_ROWS, V]; ``tail`` logits[:, -SEQ_ROWS:] of [1, SEQ_ROWS + 1, V] (unaligned at odd V)
CASES = ("small", "one", "rows16", "rows17", "shifted", "padded", "seq", "tail")
#: the default gate: every option of every op on [2, 3, V] logits at V = 151,936; at V = 50,257 the view
#: ``logits[:, -1024:]`` (odd V, R = 1,024 real rows, unaligned base pointer, odd strides: every integer and
#: pointer specialisation off at once) with the mixed op at lam = 0.5 only (the two-stream kernels: lam = 0
#: or 1 read one stream and use fewer registers); the hidden-state ops at their GPU token chunk at both.
ALL_LAMS = (0.0, 0.5, 1.0)
DEFAULT_CASES = {GATE_VOCAB: (("small",), ALL_LAMS), ODD_VOCAB: (("tail",), (0.5,))}
FULL_VOCABS = (41, 4099, 32_000, 32_001, 50_257, 128_256, 151_936, 262_144)
ARCHS = (80, 90)
#: the triton version these records and the ptxas output format were checked against (constraints pin it)
TRITON_VERSION = "3.7.1"


# ----------------------------------------------------------------------------------------------------------
# step 1: record the launches of the public API
# ----------------------------------------------------------------------------------------------------------
def _logits(case: str, vocab: int, dtype, grad: bool = True):
    """CPU logits of one :data:`CASES` entry, uninitialised: a recorded launch never reads them, and large
    buffers stay unmapped pages (no time spent filling them)."""
    import torch

    shapes = {"small": (2, 3), "one": (1,), "rows16": (16, 2), "rows17": (2, 17), "shifted": (2, 3),
              "padded": (2, 3), "seq": (1, SEQ_ROWS), "tail": (1, SEQ_ROWS)}
    if case not in shapes:
        raise ValueError(f"unknown case {case!r}; one of {CASES}")
    shape = shapes[case]
    if case == "shifted":
        x = torch.empty(*shape[:-1], shape[-1] + 1, vocab, dtype=dtype)[..., :-1, :]
    elif case == "tail":
        x = torch.empty(*shape[:-1], shape[-1] + 1, vocab, dtype=dtype)[..., -shape[-1]:, :]
    elif case == "padded":
        x = torch.empty(*shape, vocab + 8, dtype=dtype)[..., :vocab]
    else:
        x = torch.empty(*shape, vocab, dtype=dtype)
    return x.requires_grad_(grad)


def gpu_token_chunk(vocab: int, cap: int = 8192) -> int:
    """Tokens per chunk the hidden-state wrappers use on a CUDA device at ``vocab`` (their own heuristic: one
    ``[token chunk, vocab tile]`` tile of ``CUDA_CHUNK_ELEMENTS``), capped at ``cap`` tokens."""
    import torch

    from .linear import _chunks

    return _chunks(0, 0, cap, vocab, torch.device("cuda"))[0]


def same_specialisation_rows(rows: int) -> int:
    """The fewest rows whose launch Triton specialises exactly like a ``rows``-row launch.

    Triton specialises an integer argument only on ``== 1`` and on divisibility by 16; the launches of the
    hidden-state ops take R = rows, batch stride rows * V and row stride V.  So a 16-row chunk compiles to the
    same binary as a 4,096-row one (both multiples of 16), and the gate records it without building a
    4,096 x V logits chunk on the CPU (tests/kernels/test_compile_gate.py checks the two variant keys match)."""
    if rows == 1 or rows % 16:
        return rows
    return 16


def _api_calls(vocab: int, full: bool, cases=None, lams=ALL_LAMS, linear: bool = True, real_rows: bool = False):
    """Yield zero-argument callables covering every option combination of the public ops on ``cases``."""
    import torch

    import weakstrong.kernels as K

    dt = {name: getattr(torch, name) for name in DTYPES}
    cases = tuple(cases if cases is not None else (CASES if full else ("small",)))

    for case in cases:
        lead = _logits(case, 1, torch.float32, False).shape[:-1]
        idx = torch.zeros(lead, dtype=torch.long)
        mask = torch.ones(lead, dtype=torch.bool)
        for name in DTYPES:
            d = dt[name]

            def ent_grad(d=d, case=case):
                K.entropy_from_logits(_logits(case, vocab, d)).sum().backward()

            def ent_nograd(d=d, case=case):
                with torch.no_grad():
                    K.entropy_from_logits(_logits(case, vocab, d, False))

            yield case, ent_grad
            yield case, ent_nograd
            for use_mask, temp, which in itertools.product((False, True), (1.0, 0.7), ("both", "logp", "ent")):

                def both(d=d, case=case, idx=idx, mask=mask, use_mask=use_mask, temp=temp, which=which):
                    x = _logits(case, vocab, d)
                    lp, h = K.selective_log_softmax_and_entropy(x, idx, temp, mask if use_mask else None)
                    out = {"both": lp.sum() + h.sum(), "logp": lp.sum(), "ent": h.sum()}[which]
                    out.backward()

                yield case, both
            for da, db in itertools.product(DTYPES, DTYPES):
                # default: same-dtype pairs plus bf16 <-> fp32 (a bf16 model against an fp32 one); --full: all 9
                if da != name or not (full or da == db or {da, db} == {"bfloat16", "float32"}):
                    continue
                for lam, stats, grads in itertools.product(lams, (False, True), ("ab", "a", "b")):

                    def mixed(da=da, db=db, lam=lam, stats=stats, grads=grads, case=case, idx=idx):
                        a = _logits(case, vocab, dt[da], "a" in grads)
                        b = _logits(case, vocab, dt[db], "b" in grads)
                        out = K.mixed_cross_entropy(a, b, idx, lam=lam, return_stats=stats)
                        (out[0] if stats else out).backward()

                    yield case, mixed

    if not linear:
        return
    real = gpu_token_chunk(vocab)
    rows = real if real_rows else same_specialisation_rows(real)
    for name in DTYPES:
        d = dt[name]

        def linear_ops(d=d):
            # one full token chunk, specialised as a GPU launch of `real` rows; H = 1 keeps the matmuls cheap
            h = torch.zeros(rows, 1, dtype=d, requires_grad=True)
            w = torch.zeros(vocab, 1, dtype=d, requires_grad=True)
            y = torch.zeros(rows, dtype=torch.long)
            lp, ent = K.linear_selective_log_softmax_and_entropy(h, w, y, chunk_size=rows)
            (lp.sum() + ent.sum()).backward()
            K.linear_mixed_cross_entropy(h, w, h, w, y, lam=0.5, return_stats=True, chunk_size=rows)[0].backward()

        yield f"chunk{real}", linear_ops


def collect(vocabs=None, full: bool = False, cases=None) -> list[dict]:
    """Unique launch records of the public API (GPU block configuration).

    Default: :data:`DEFAULT_CASES` (each vocabulary with its cases); ``full``: every case of :data:`CASES` at
    every vocabulary of ``vocabs`` (default :data:`FULL_VOCABS`); ``cases``: these cases at every vocabulary."""
    if vocabs is None:
        plan = {v: (CASES, ALL_LAMS) for v in FULL_VOCABS} if full else dict(DEFAULT_CASES)
    else:
        plan = {v: ((CASES, ALL_LAMS) if full else DEFAULT_CASES.get(v, (("small",), ALL_LAMS))) for v in vocabs}
    if cases is not None:
        plan = {v: (tuple(cases), ALL_LAMS) for v in plan}
    from ._dispatch import interpreting

    if not interpreting():
        raise RuntimeError("collect() needs TRITON_INTERPRET=1 set before weakstrong.kernels is imported")
    from . import _launch as L

    seen, out = set(), []
    with gpu_launch_config():
        for vocab, (vocab_cases, lams) in plan.items():
            for case, call in _api_calls(vocab, full, vocab_cases, lams):
                with L.record_launches(execute=False) as records:
                    call()
                for rec in records:
                    rec["vocab"] = vocab
                    rec["case"] = case
                    key = json.dumps(rec, sort_keys=True)
                    if key not in seen:
                        seen.add(key)
                        out.append(rec)
    return out


@contextlib.contextmanager
def gpu_launch_config():
    """Within: the Triton wrappers take their CUDA block configuration and fused reductions, and the public ops
    dispatch to the Triton path (the interpreter records the launches a GPU would get)."""
    from . import _launch as L

    saved = (L.FORCE_GPU_CONFIG, L.FORCE_FUSED_REDUCE, os.environ.get("WEAKSTRONG_KERNELS"))
    L.FORCE_GPU_CONFIG = L.FORCE_FUSED_REDUCE = True
    os.environ["WEAKSTRONG_KERNELS"] = "triton"
    try:
        yield
    finally:
        L.FORCE_GPU_CONFIG, L.FORCE_FUSED_REDUCE = saved[:2]
        if saved[2] is None:
            os.environ.pop("WEAKSTRONG_KERNELS", None)
        else:
            os.environ["WEAKSTRONG_KERNELS"] = saved[2]


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
    """Compile one record for ``sm_<arch>`` the way the JIT would; returns the ptxas figures, the shared memory
    Triton requests at launch and the occupancy they imply."""
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
    out = parse_ptxas(res.stdout + res.stderr)
    warps = int(record["num_warps"])
    out["num_warps"] = warps
    out["register_limit"] = register_limit(warps)
    out["shared_bytes"] = int(compiled.metadata.shared)
    out["occupancy"] = occupancy(out["registers"], warps, out["shared_bytes"], arch)
    return out


#: per-SM limits of the CUDA occupancy calculator (compute capability 8.0 and 9.0): 64K 32-bit registers
#: allocated per warp in units of 256, 64 resident warps, 32 resident blocks, shared memory per SM usable by
#: blocks (A100: 164 KiB; H100: 228 KiB) with 1 KiB reserved per block
_SM = {80: {"smem": 164 * 1024}, 90: {"smem": 228 * 1024}}
_REGS_PER_SM, _MAX_WARPS, _MAX_BLOCKS, _REG_UNIT = 65536, 64, 32, 256


def register_limit(num_warps: int) -> int:
    """Most registers ptxas may give a thread of a ``num_warps`` block (Triton sets ``.maxntid``)."""
    return min(255, _REGS_PER_SM // (32 * num_warps) // 8 * 8)


def at_register_limit(registers: int, num_warps: int) -> bool:
    """True when ``registers``, rounded up to the 8-register allocation unit, reaches the cap of the warp
    count: ptxas had no headroom left (the next register it needs is a spill)."""
    return -(-registers // 8) * 8 >= register_limit(num_warps)


def occupancy(registers: int, num_warps: int, shared_bytes: int, arch: int) -> dict:
    """Resident blocks and warps per SM for this variant (registers, shared memory and warp limits)."""
    regs_per_warp = -(-registers * 32 // _REG_UNIT) * _REG_UNIT
    by_regs = (_REGS_PER_SM // regs_per_warp) // num_warps
    smem = _SM.get(arch, _SM[90])["smem"]
    by_smem = smem // (shared_bytes + 1024) if shared_bytes else _MAX_BLOCKS
    blocks = min(by_regs, by_smem, _MAX_WARPS // num_warps, _MAX_BLOCKS)
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps,
            "fraction": round(blocks * num_warps / _MAX_WARPS, 3),
            "limited_by": min(("registers", by_regs), ("shared", by_smem), ("warps", _MAX_WARPS // num_warps),
                              key=lambda t: t[1])[0]}


_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int64": "i64", "uint8": "u8"}


def _label(rec: dict) -> str:
    dtypes = ",".join(_SHORT.get(a["tensor"], a["tensor"]) for a in rec["args"] if "tensor" in a)
    meta = ",".join(f"{k}={v}" for k, v in sorted(rec["constexprs"].items()))
    aligned = "" if all(a["align16"] for a in rec["args"] if "tensor" in a) else "|unaligned"
    case = f"|{rec['case']}" if rec.get("case") else ""
    return f"{rec['kernel']}[{dtypes}|{meta}|warps={rec['num_warps']}|V={rec['vocab']}{case}{aligned}]"


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


def _compile_one(job):
    rec, arch, ptxas = job
    entry = {"kernel": _label(rec), "arch": f"sm_{arch}"}
    try:
        entry.update(compile_record(rec, arch, Path(ptxas)))
    except Exception as exc:  # a compile error is a gate failure, reported with its variant
        entry["error"] = f"{type(exc).__name__}: {exc}"[:1000]
    return entry


def check(entry: dict) -> str | None:
    """The gate's verdict on one compiled variant: None, or why it fails."""
    where = f"{entry['kernel']} on {entry['arch']}"
    if "error" in entry:
        return f"{where}: {entry['error']}"
    if entry["spill_stores"] or entry["spill_loads"]:
        return f"{where}: spills {entry['spill_stores']}/{entry['spill_loads']} B"
    if at_register_limit(entry["registers"], entry["num_warps"]):
        return (f"{where}: {entry['registers']} registers, at the limit of {entry['register_limit']} for "
                f"{entry['num_warps']} warps (no headroom: fewer elements per thread or fewer warps)")
    return None


def run_gate(records: list[dict], archs=ARCHS, mode: str = "rotate", jobs: int = 1) -> dict:
    """Compile every unique (variant, arch) of ``records`` in ``jobs`` processes; report and verdicts."""
    ptxas = ptxas_path()
    if ptxas is None:
        raise FileNotFoundError("ptxas not found in the triton wheel (triton/backends/nvidia/bin/ptxas)")
    todo, seen = [], set()
    t0 = time.perf_counter()
    for rec, arch in select_targets(records, archs, mode):
        key = variant_key(rec, arch)
        if key not in seen:
            seen.add(key)
            todo.append((rec, arch, str(ptxas)))
    if jobs > 1 and len(todo) > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no forked copy of a half-initialised compiler
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            results = list(pool.map(_compile_one, todo, chunksize=max(1, len(todo) // (4 * jobs))))
    else:
        results = [_compile_one(job) for job in todo]
    failures = [f for f in map(check, results) if f]
    return {"results": results, "failures": failures, "seconds": time.perf_counter() - t0, "jobs": jobs}


def summary_table(report: dict) -> str:
    """One line per compiled variant: registers / limit, spills, shared memory, occupancy."""
    lines = [f"{'arch':<6} {'regs':>9} {'spill':>6} {'smem B':>7} {'occ':>5}  variant"]
    for e in sorted(report["results"], key=lambda e: (-e.get("registers", 999), e["kernel"])):
        if "error" in e:
            lines.append(f"{e['arch']:<6} {'ERROR':>9} {'':>6} {'':>7} {'':>5}  {e['kernel']}")
            continue
        occ = e["occupancy"]
        lines.append(f"{e['arch']:<6} {e['registers']:>4}/{e['register_limit']:<4} "
                     f"{e['spill_stores'] + e['spill_loads']:>6} {e['shared_bytes']:>7} {occ['fraction']:>5.2f}  {e['kernel']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# CLI (both steps, each in its own process)
# ----------------------------------------------------------------------------------------------------------
def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", choices=("all", "collect", "compile"), default="all")
    ap.add_argument("--vocab", type=int, nargs="*", default=None,
                    help=f"default {sorted(DEFAULT_CASES)} with their cases (--full: {FULL_VOCABS})")
    ap.add_argument("--case", nargs="*", choices=CASES, default=None, help="these cases at every vocabulary")
    ap.add_argument("--arch", type=int, nargs="*", default=list(ARCHS))
    ap.add_argument("--full", action="store_true", help="all cases/vocabularies/dtype pairs on every arch")
    ap.add_argument("--targets", choices=TARGET_MODES, default=None, help="(record, arch) pairs (default rotate)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    ap.add_argument("--records", type=Path, help="records JSON (written by collect, read by compile)")
    ap.add_argument("--out", type=Path, help="report JSON")
    ap.add_argument("--table", action="store_true", help="print one line per variant")
    args = ap.parse_args(argv)
    if args.step == "collect":
        args.records.write_text(json.dumps(collect(args.vocab, args.full, args.case)))
        return 0
    if args.step == "compile":
        mode = args.targets or ("all" if args.full else "rotate")
        report = run_gate(json.loads(args.records.read_text()), args.arch, mode, args.jobs)
        text = json.dumps(report, indent=1)
        if args.out:
            args.out.write_text(text)
        if args.table:
            print(summary_table(report))
        for line in report["failures"]:
            print("FAIL", line)
        regs = [r["registers"] for r in report["results"] if "registers" in r]
        print(f"{len(report['results'])} compiles, {len(report['failures'])} failures, registers "
              f"{min(regs, default=0)}-{max(regs, default=0)}, {report['seconds']:.1f} s ({args.jobs} jobs)")
        return 1 if report["failures"] else 0
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "records.json"
        base = [sys.executable, "-m", "weakstrong.kernels.compile_gate", "--records", str(rec)]
        vs = (["--vocab", *map(str, args.vocab)] if args.vocab else []) + (["--full"] if args.full else [])
        vs += ["--case", *args.case] if args.case else []
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run(base + ["--step", "collect", *vs], env=env, check=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        mode = args.targets or ("all" if args.full else "rotate")
        extra = ["--targets", mode, "--jobs", str(args.jobs)] + (["--out", str(args.out)] if args.out else [])
        extra += ["--table"] if args.table else []
        return subprocess.run(base + ["--step", "compile", "--arch", *map(str, args.arch), *extra], env=env).returncode


if __name__ == "__main__":
    sys.exit(_main())
