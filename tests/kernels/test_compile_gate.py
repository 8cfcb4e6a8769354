"""Compile gate (issues 13, 22): every Triton kernel variant the public wrappers launch compiles for sm_80 and
sm_90 without a register spill and below the register limit of its warp count (kernels/compile_gate.py).

Split (measured in benchmarks/README.md):
* default: the launches of the public API at V = 151,936 (every option), at V = 50,257 through the unaligned
  view ``logits[:, -1024:]`` (odd V, 1,024 real rows), and the hidden-state ops at their GPU token chunk, each
  variant compiled for one of sm_80 / sm_90, rotating within each dtype family so every family meets both;
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
    # the GPU config: one-stream kernels BLOCK 8192, two-stream (mixed) kernels 8192 or 4096, 16 warps
    from weakstrong.kernels._launch import gpu_block_config

    for r in records:
        blocks = {gpu_block_config(r["vocab"])[0], gpu_block_config(r["vocab"], streams=2)[0]}
        assert r["num_warps"] == 16 and r["constexprs"]["BLOCK"] in blocks, r
    assert {a["tensor"] for r in records for a in r["args"][:1]} == {"bfloat16", "float16", "float32"}


def test_default_records_cover_odd_vocab_real_rows_and_unaligned_views(records):
    """Issue 22: an odd V, the row counts the wrappers launch on a GPU, and an unaligned base pointer."""
    odd = [r for r in records if r["vocab"] == G.ODD_VOCAB]
    assert odd and G.ODD_VOCAB % 16
    # the logits ops on logits[:, -1024:] of [1, 1025, V]: R = 1024, and the base pointer is V elements in
    tail = [r for r in odd if r["case"] == "tail"]
    assert {r["kernel"] for r in tail} == _all_kernels()
    for r in tail:
        first = r["args"][0]
        assert first["align16"] is False  # V * itemsize bytes from a 16-byte aligned start, V odd
        assert {"int": 1024} in r["args"] and {"int": G.ODD_VOCAB} in r["args"]  # R and the odd row stride
    # the hidden-state ops at the token chunk their wrapper picks on a CUDA device
    for v in (G.GATE_VOCAB, G.ODD_VOCAB):
        real = G.gpu_token_chunk(v)
        chunk = [r for r in records if r["vocab"] == v and r["case"] == f"chunk{real}"]
        # both hidden-state ops run the log-sum-exp row kernels on each [token chunk, vocab tile] (the mixed op
        # on the mixed tile), so those are the kernels launched at the real chunk
        assert {r["kernel"] for r in chunk} >= {"_lse_entropy_fwd_kernel", "_lse_entropy_bwd_kernel"}
        assert real % 16 == 0 and G.same_specialisation_rows(real) == 16
    # 2**27 elements per tile at 32,768 vocabulary rows a tile (TRL 1.16's tile)
    assert (G.gpu_token_chunk(G.GATE_VOCAB), G.gpu_token_chunk(G.ODD_VOCAB)) == (4096, 4096)


def test_register_limit_rule():
    assert [G.register_limit(w) for w in (4, 8, 16, 32)] == [255, 255, 128, 64]
    assert not G.at_register_limit(120, 16)  # 120: one allocation unit below the cap
    assert G.at_register_limit(121, 16) and G.at_register_limit(127, 16)  # round up to 128 = the cap
    assert not G.at_register_limit(248, 8) and G.at_register_limit(249, 8)
    entry = {"kernel": "k", "arch": "sm_90", "registers": 127, "num_warps": 16, "register_limit": 128,
             "spill_stores": 0, "spill_loads": 0}
    assert "at the limit of 128 for 16 warps" in G.check(entry)
    assert G.check(dict(entry, registers=108)) is None
    assert "spills 8/0" in G.check(dict(entry, registers=108, spill_stores=8))
    assert "boom" in G.check({"kernel": "k", "arch": "sm_80", "error": "boom"})


def test_occupancy():
    # 108 registers x 512 threads: 16 warps of 3,584 registers -> 18 warps fit -> one 16-warp block
    assert G.occupancy(108, 16, 320, 90) == {"blocks_per_sm": 1, "warps_per_sm": 16, "fraction": 0.25,
                                             "limited_by": "registers"}
    assert G.occupancy(62, 16, 320, 90)["blocks_per_sm"] == 2
    assert G.occupancy(32, 4, 160 * 1024, 80) == {"blocks_per_sm": 1, "warps_per_sm": 4, "fraction": 0.062,
                                                  "limited_by": "shared"}


def test_two_stream_block_config_keeps_elements_per_thread():
    from weakstrong.kernels._launch import gpu_block_config

    assert gpu_block_config(151_936) == (8192, 16)
    assert gpu_block_config(151_936, streams=2) == (4096, 16)  # 2 x 8 elements per thread = 1 x 16
    assert gpu_block_config(50_257, streams=2) == (4096, 16)
    assert gpu_block_config(2053, streams=2) == (2048, 8)
    assert gpu_block_config(41, streams=2) == gpu_block_config(41) == (64, 4)


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


def _compile(records, tmp_path, mode, archs=("80", "90"), check=True):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "weakstrong.kernels.compile_gate", "--step", "compile", "--records", str(path),
           "--arch", *archs, "--targets", mode, "--out", str(out), "--jobs", "2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.exists(), res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(out.read_text())
    if check:
        assert not report["failures"], "\n".join(report["failures"])
        assert res.returncode == 0, res.stderr[-2000:]
    return report


def test_same_specialisation_rows_compile_like_the_real_chunk(tmp_path):
    """The gate records the hidden-state ops with a 16-row chunk; Triton must specialise it exactly as the
    4,096-row chunk a GPU launch has at V = 151,936 (same variant keys, so the same binaries)."""
    import weakstrong.kernels._launch as L

    def linear_records(real_rows):
        with G.gpu_launch_config():
            calls = list(G._api_calls(G.GATE_VOCAB, False, cases=(), real_rows=real_rows))
            with L.record_launches(execute=False) as recs:
                calls[0][1]()  # bfloat16: the cheapest 4,096 x V matmul on a CPU
        return recs

    real, proxy = linear_records(True), linear_records(False)
    assert {G.gpu_token_chunk(G.GATE_VOCAB)} <= {a.get("int") for r in real for a in r["args"]}
    assert {16} <= {a.get("int") for r in proxy for a in r["args"]}
    for r in real + proxy:
        r["vocab"] = G.GATE_VOCAB
    (tmp_path / "a.json").write_text(json.dumps(real))
    (tmp_path / "b.json").write_text(json.dumps(proxy))
    code = ("import json, sys; import weakstrong.kernels.compile_gate as G; "
            "k = lambda p: [G.variant_key(r, 90) for r in json.load(open(p))]; "
            "print(json.dumps(k(sys.argv[1]) == k(sys.argv[2])))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout) is True


@needs_ptxas
def test_compile_gate_default(records, tmp_path):
    report = _compile(records, tmp_path, "rotate")
    archs = {(r["kernel"].split("[")[0], r["arch"]) for r in report["results"]}
    assert {a for _, a in archs} == {"sm_80", "sm_90"}
    assert {k for k, _ in archs} == _all_kernels()
    assert all(r.get("registers", 0) > 0 and r["spill_stores"] == 0 for r in report["results"])
    assert not any(G.at_register_limit(r["registers"], r["num_warps"]) for r in report["results"])
    assert all(r["shared_bytes"] >= 0 and 0 < r["occupancy"]["fraction"] <= 1 for r in report["results"])
    labels = [r["kernel"] for r in report["results"]]
    assert any("V=50257|tail|unaligned" in k for k in labels)  # the unaligned odd-V variants were compiled
    assert any(f"|chunk{G.gpu_token_chunk(G.GATE_VOCAB)}" in k for k in labels)


@needs_ptxas
def test_mixed_forward_one_row_has_register_headroom(tmp_path):
    """fp32/fp32 mixed forward with statistics at V = 50,257 on a single row (R = 1, Triton makes it a
    constant): 127 of the 128 registers 16 warps allow at BLOCK = 8192 (issue 22); ~55 with streams=2."""
    recs = [r for r in G.collect([G.ODD_VOCAB], cases=("one",))
            if r["kernel"] == "_mixed_ce_fwd_kernel" and r["case"] == "one" and r["constexprs"]["MIX"] == 0
            and r["constexprs"]["WANT_STATS"] and {a.get("tensor") for a in r["args"][:4:3]} == {"float32"}]
    assert len(recs) == 1
    report = _compile(recs, tmp_path, "all", archs=("90",), check=False)
    assert not report["failures"], "\n".join(report["failures"])


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
