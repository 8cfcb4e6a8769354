"""Compile gate (issue 13): every Triton kernel variant the public wrappers launch compiles for sm_80 and
sm_90 at V = 151,936 without a register spill (kernels/compile_gate.py).

Split (measured in benchmarks/README.md):
* default: the launches of the public API at V = 151,936, each variant compiled for one of sm_80 / sm_90,
  rotating within each dtype family so every family meets both targets;
* ``slow``: the complementary (variant, target) pairs, so default + slow = every variant on both targets;
* ``WEAKSTRONG_FULL_COMPILE_GATE=1``: the exhaustive sweep (all 9 strong/weak dtype pairs, row counts that
  trigger other integer specialisations, shifted and vocab-padded views, V in kernels.compile_gate.FULL_VOCABS).
"""

import json
import os
import subprocess
import sys

import pytest

import weakstrong.kernels.compile_gate as G

triton = pytest.importorskip("triton")
PTXAS = G.ptxas_path()
needs_ptxas = pytest.mark.skipif(PTXAS is None, reason="ptxas not found in the triton wheel (triton/backends/nvidia/bin)")


def test_triton_is_the_pinned_version():
    pins = open(os.path.join(os.path.dirname(__file__), "..", "..", "constraints", "cpu.txt")).read()
    assert f"triton=={G.TRITON_VERSION}" in pins
    assert triton.__version__ == G.TRITON_VERSION, "the gate's records and ptxas parsing were checked on this version"


def test_parse_ptxas():
    ok = "ptxas info    : Used 40 registers, used 1 barriers\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    assert G.parse_ptxas(ok) == {"registers": 40, "stack_bytes": 0, "spill_stores": 0, "spill_loads": 0}
    bad = ok.replace("0 bytes spill stores", "16 bytes spill stores")
    assert G.parse_ptxas(bad)["spill_stores"] == 16
    with pytest.raises(ValueError, match="unparseable"):
        G.parse_ptxas("ptxas info : something else entirely")


def _all_kernels():
    import weakstrong.kernels.entropy as E
    import weakstrong.kernels.mixed_ce as M

    names = set()
    for mod in (E, M):
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and type(obj).__name__ in ("JITFunction", "InterpretedFunction"):
                names.add(name)
    return names


@pytest.fixture(scope="module")
def records():
    return G.collect()


def test_records_cover_every_kernel_and_option(records):
    kernels = {r["kernel"] for r in records}
    assert kernels == _all_kernels()  # a new kernel the wrappers never launch would show here
    fwd = [r for r in records if r["kernel"] == "_mixed_ce_fwd_kernel"]
    assert {(r["constexprs"]["MIX"], r["constexprs"]["WANT_STATS"]) for r in fwd} == {
        (m, s) for m in (0, 1, 2) for s in (False, True)
    }
    bwd = [r for r in records if r["kernel"] == "_lse_entropy_bwd_kernel"]
    assert {(r["constexprs"]["HAS_GLP"], r["constexprs"]["HAS_GENT"], r["constexprs"]["HAS_MASK"]) for r in bwd} >= {
        (True, True, False), (True, False, True), (False, True, False)
    }
    assert all(r["constexprs"]["BLOCK"] == 8192 and r["num_warps"] == 16 for r in records)  # the GPU config
    assert {a["tensor"] for r in records for a in r["args"][:1]} == {"bfloat16", "float16", "float32"}


def test_records_are_the_launch_arguments(monkeypatch):
    """The recorder sees exactly the tuple the kernel is launched with (interpreter run, executed)."""
    import torch

    import weakstrong.kernels._launch as L
    from weakstrong.kernels import selective_log_softmax_and_entropy

    monkeypatch.setenv("WEAKSTRONG_KERNELS", "triton")
    with L.record_launches() as recs:
        x = torch.randn(2, 3, 41)[:, :-1]
        selective_log_softmax_and_entropy(x, torch.zeros(2, 2, dtype=torch.long))
    # a [2, 2, V] view of a [2, 3, V] tensor: batch stride 3V, row stride V, R = 2, no copy
    assert len(recs) == 1 and recs[0]["args"][1:4] == [{"int": 3 * 41}, {"int": 41}, {"int": 2}]
    assert recs[0]["kernel"] == "_lse_entropy_fwd_kernel" and recs[0]["args"][0] == {"tensor": "float32", "align16": True}


def _compile(records, tmp_path, mode):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "weakstrong.kernels.compile_gate", "--step", "compile", "--records", str(path),
           "--arch", "80", "90", "--targets", mode, "--out", str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.exists(), res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert not report["failures"], "\n".join(report["failures"])
    assert res.returncode == 0, res.stderr[-2000:]
    return report


@needs_ptxas
def test_compile_gate_default(records, tmp_path):
    report = _compile(records, tmp_path, "rotate")
    archs = {(r["kernel"].split("[")[0], r["arch"]) for r in report["results"]}
    assert {a for _, a in archs} == {"sm_80", "sm_90"}
    assert {k for k, _ in archs} == _all_kernels()
    assert all(r.get("registers", 0) > 0 and r["spill_stores"] == 0 for r in report["results"])


@needs_ptxas
@pytest.mark.slow
def test_compile_gate_other_targets(records, tmp_path):
    report = _compile(records, tmp_path, "complement")
    assert report["results"]


@needs_ptxas
@pytest.mark.skipif(os.environ.get("WEAKSTRONG_FULL_COMPILE_GATE") != "1", reason="set WEAKSTRONG_FULL_COMPILE_GATE=1")
def test_compile_gate_full(tmp_path):
    report = _compile(G.collect(G.FULL_VOCABS, full=True), tmp_path, "all")
    assert report["results"]
