"""One-shot GPU check of the kernels (issue 13): run on a CUDA machine, ≤ 8 minutes, CSVs named by the device.

    bash benchmarks/gpu_check.sh                     # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --out DIR --skip wmss --budget 480

Steps (each a subprocess with its own time limit; a failed step is recorded and the next one runs):

1. ``tests``:  ``tests/kernels/test_cuda.py`` on CUDA (bf16 and fp32 against the fp64 reference, strided and
   masked rows, torch.compile, TRL's Triton kernel side by side; the cuda:1 case when a second GPU exists).
2. ``bench``:  the three kernel benchmarks at a reduced sweep (V = 151,936; 2,048 and 8,192 tokens; bf16),
   against TRL 1.16's own Triton kernel (``trl`` provider) and Liger (``liger``; a missing Liger is said so in
   the CSV), torch eager and torch.compile.
3. ``copy``:   a device-to-device copy of 2 GiB timed with ``triton.testing.do_bench``: the bandwidth limit.
3b. ``peers``: ``benchmarks/kernels/bench_peers.py`` at 8,192 tokens x 896 -> 151,936 in bf16: our hidden-state
   and logits-level ops against TRL 1.16's ``ChunkedLogProbFunction``, Triton ``selective_log_softmax_and_entropy``
   and ``ChunkedDivergenceFunction``, Liger's fused linear CE and eager, same inputs, values against float64.
4. ``wmss``:   a 20-step WMSS run in bf16 on the embedded model through the CLI
   (``weakstrong wmss --config recipes/wmss/config.yaml`` with overrides), its console log kept.
5. ``summary``: ratios from the CSVs (forward bandwidth as a share of the copy, speed-up over TRL's kernel,
   mixed CE fwd+bwd speed-up and peak memory against torch eager; the peers' times beside the time the copy
   bandwidth needs to read the bf16 logits once) -> ``summary_<device>.csv`` and stdout.

Everything lands in ``--out`` (default ``benchmarks/kernels/results/gpu_<device>/``).  Without CUDA it stops at
once with exit status 2 and says why.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "kernels"
STEPS = ("tests", "bench", "copy", "peers", "wmss", "summary")
SWEEP = ["--tokens", "2048", "8192", "--vocab", "151936", "--dtypes", "bf16"]
#: seconds per step (sum ≤ the 8-minute budget; the summary is instant)
LIMITS = {"tests": 100, "bench": 180, "copy": 30, "peers": 60, "wmss": 100}
#: the side-by-side shape (Qwen2.5-0.5B head; tokens, hidden, vocabulary) and dtype of the ``peers`` step
PEERS_SHAPE = (8192, 896, 151_936)


class NoCuda(SystemExit):
    pass


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def require_cuda(torch_module=None):
    """Return the device name of cuda:0, or exit (status 2) with the reason CUDA is not usable."""
    torch = torch_module
    if torch is None:
        import torch
    if not torch.cuda.is_available():
        built = getattr(torch.version, "cuda", None)
        why = "this torch build has no CUDA" if not built else f"no CUDA device visible (torch built for CUDA {built})"
        raise NoCuda(f"gpu_check needs a CUDA GPU: torch.cuda.is_available() is False; {why}. Nothing was run.")
    return torch.cuda.get_device_name(0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/kernels/results/gpu_<device>)")
    p.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps to leave out")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480 = 8 min)")
    p.add_argument("--copy-gib", type=float, default=2.0, help="size of the device-to-device copy")
    return p.parse_args(argv)


def write_rows(path: Path, rows: list[dict]) -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _run(name, cmd, limit, out: Path, env=None, log=print) -> dict:
    t0 = time.perf_counter()
    logf = out / f"{name}.log"
    with open(logf, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit, env=env).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    secs = time.perf_counter() - t0
    log(f"[{name}] rc={rc} in {secs:.0f} s (log: {logf})")
    return {"step": name, "rc": rc, "seconds": round(secs, 1), "log": str(logf)}


def copy_bandwidth(gib: float, device_name: str) -> dict:
    import torch
    import triton.testing

    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    p50, p20, p80 = triton.testing.do_bench(lambda: dst.copy_(src), quantiles=[0.5, 0.2, 0.8])
    bytes_moved = 2 * src.numel() * src.element_size()  # read + write
    return {
        "metric": "d2d_copy_bandwidth",
        "unit": "GB/s",
        "p50": bytes_moved / (p50 * 1e-3) / 1e9,
        "p20": bytes_moved / (p80 * 1e-3) / 1e9,  # slower time = lower bandwidth
        "p80": bytes_moved / (p20 * 1e-3) / 1e9,
        "bytes": bytes_moved,
        "device_name": device_name,
    }


def _read(path: Path):
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _get(rows, kernel, provider, mode, metric, tokens, dtype="bf16"):
    for r in rows:
        if (r["kernel"], r["provider"], r["mode"], r["metric"], r["x_value"], r["dtype"]) == (
            kernel, provider, mode, metric, str(tokens), dtype
        ):
            try:
                v = float(r["p50"])
            except ValueError:
                return None
            return None if math.isnan(v) else v
    return None


def summarize(out: Path, dev_slug: str, copy_gbs: float | None, tokens: int = 8192, vocab: int = 151_936) -> list[dict]:
    """Target ratios from the benchmark CSVs (None where a figure is missing)."""
    ent = _read(out / f"entropy_cuda-{dev_slug}.csv")
    mix = _read(out / f"mixed_ce_cuda-{dev_slug}.csv")
    rows = []
    logits_bytes = tokens * vocab * 2  # bf16, read once by a forward
    for kernel in ("entropy", "logp_entropy"):
        ours = _get(ent, kernel, "weakstrong", "fwd", "time", tokens)
        trl = _get(ent, kernel, "trl", "fwd", "time", tokens)
        gbs = logits_bytes / (ours * 1e-3) / 1e9 if ours else None
        rows.append({"target": f"{kernel} fwd bandwidth / copy bandwidth (>= 0.90)", "value": gbs / copy_gbs if gbs and copy_gbs else None})
        rows.append({"target": f"{kernel} fwd speed-up over TRL 1.16 (>= 1.1)", "value": trl / ours if ours and trl else None})
    ours_t = _get(mix, "mixed_ce", "weakstrong", "full", "time", tokens)
    eager_t = _get(mix, "mixed_ce", "torch_eager", "full", "time", tokens)
    ours_m = _get(mix, "mixed_ce", "weakstrong", "full", "memory", tokens)
    eager_m = _get(mix, "mixed_ce", "torch_eager", "full", "memory", tokens)
    rows.append({"target": "mixed_ce fwd+bwd speed-up over torch eager (>= 3)", "value": eager_t / ours_t if ours_t and eager_t else None})
    rows.append({"target": "mixed_ce fwd+bwd peak memory / torch eager (<= 1/3)", "value": ours_m / eager_m if ours_m and eager_m else None})
    for r in rows:
        r.update(tokens=tokens, V=vocab, dtype="bf16")
    return rows + summarize_peers(out, dev_slug, copy_gbs)


def summarize_peers(out: Path, dev_slug: str, copy_gbs: float | None, shape=PEERS_SHAPE, dtype="bf16") -> list[dict]:
    """bench_peers.py's times (ms, p50) at ``shape``, the speed-ups of ours over TRL's and Liger's, and beside
    them the copy-bandwidth floor: reading the logits once (N x V x 2 bytes) at the measured copy rate."""
    n, h, v = shape
    table = {}
    for r in _read(out / f"peers_cuda-{dev_slug}.csv"):
        if (r["N"], r["H"], r["V"], r["dtype"]) == (str(n), str(h), str(v), dtype):
            try:
                t = float(r["p50_ms"])
            except ValueError:
                t = math.nan
            table[(r["task"], r["provider"], r["mode"])] = None if math.isnan(t) else t
    rows = [{"target": "logits read once at copy bandwidth, ms (the floor of a logits-level forward)",
             "value": n * v * 2 / (copy_gbs * 1e9) * 1e3 if copy_gbs else None}]
    for (task, prov, mode), t in table.items():
        rows.append({"target": f"peers {task} {prov} {mode} ms", "value": t})
    pairs = [("logp_entropy", "weakstrong_linear", "trl_chunked"), ("logp_entropy", "weakstrong_logits", "trl_triton"),
             ("ce", "weakstrong_linear", "liger_flce"), ("two_heads", "weakstrong_linear", "trl_divergence")]
    for task, ours, peer in pairs:
        for mode in ("fwd", "full"):
            a, b = table.get((task, ours, mode)), table.get((task, peer, mode))
            rows.append({"target": f"peers {task} {mode}: {ours} speed-up over {peer}", "value": b / a if a and b else None})
    for r in rows:
        r.update(tokens=n, V=v, dtype=dtype)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        name = require_cuda()
    except NoCuda as exc:
        print(exc, file=sys.stderr)
        return 2
    import torch

    dev = slug(name)
    out = args.out or (BENCH / "results" / f"gpu_{dev}")
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget
    steps = []

    def limit(step):
        return max(5.0, min(LIMITS[step], deadline - time.perf_counter()))

    env = dict(os.environ, WEAKSTRONG_CUDA_TESTS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TRITON_INTERPRET", None)
    if "tests" not in args.skip:
        cmd = [sys.executable, "-m", "pytest", "tests/kernels/test_cuda.py", "-q", "-rs", f"--junitxml={out / 'tests.xml'}"]
        steps.append(_run("tests", cmd, limit("tests"), out, env))
    if "bench" not in args.skip:
        for script in ("bench_entropy.py", "bench_mixed_ce.py", "bench_linear.py"):
            cmd = [sys.executable, str(BENCH / script), "--device", "cuda", *SWEEP, "--out", str(out)]
            steps.append(_run(script.removesuffix(".py"), cmd, limit("bench") / 3, out, env))
    copy_gbs = None
    if "copy" not in args.skip:
        t0 = time.perf_counter()
        try:
            row = copy_bandwidth(args.copy_gib, name)
            copy_gbs = row["p50"]
            write_rows(out / f"copy_bandwidth_{dev}.csv", [row])
            steps.append({"step": "copy", "rc": 0, "seconds": round(time.perf_counter() - t0, 1), "log": f"{copy_gbs:.0f} GB/s"})
        except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
            steps.append({"step": "copy", "rc": f"{type(exc).__name__}: {exc}"[:200], "seconds": 0, "log": ""})
        print(f"[copy] {steps[-1]}")
    if "peers" not in args.skip:
        cmd = [sys.executable, str(BENCH / "bench_peers.py"), "--device", "cuda", "--shapes",
               "x".join(map(str, PEERS_SHAPE)), "--dtypes", "bf16", "--out", str(out)]
        steps.append(_run("peers", cmd, limit("peers"), out, env))
    if "wmss" not in args.skip:
        wdir = out / "wmss_run"
        shutil.rmtree(wdir, ignore_errors=True)
        cli = shutil.which("weakstrong", path=os.path.dirname(sys.executable)) or shutil.which("weakstrong")
        base = [cli] if cli else [sys.executable, "recipes/wmss/train.py"]
        cmd = base[:1] + (["wmss"] if cli else base[1:]) + [
            "--config", "recipes/wmss/config.yaml", "--bf16", "true", "--max_steps", "20", "--train_size", "80",
            "--output_dir", str(wdir), "--report_to", "none", "--logging_steps", "1",
        ]
        steps.append(_run("wmss", cmd, limit("wmss"), out, env))
    write_rows(out / f"steps_{dev}.csv", [dict(s, device_name=name) for s in steps])
    if "summary" not in args.skip:
        rows = summarize(out, dev, copy_gbs)
        write_rows(out / f"summary_{dev}.csv", [dict(r, device_name=name) for r in rows])
        for r in rows:
            v = r["value"]
            print(f"  {r['target']:<58} {'n/a' if v is None else f'{v:.2f}'}")
    failed = [s for s in steps if s["rc"] != 0]
    print(f"gpu_check on {name}: {len(steps) - len(failed)}/{len(steps)} steps ok; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
