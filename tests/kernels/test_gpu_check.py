"""benchmarks/gpu_check.py without a GPU: argument parsing, the clear no-CUDA exit, the CSVs and the target
ratios computed from benchmark CSVs (a fake device name; the GPU steps themselves need a GPU)."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_arguments(gc):
    a = gc.parse_args([])
    assert a.budget == 480 and a.skip == [] and a.out is None
    a = gc.parse_args(["--skip", "wmss", "copy", "--out", "/tmp/x", "--budget", "100"])
    assert a.skip == ["wmss", "copy"] and a.out == Path("/tmp/x") and a.budget == 100
    with pytest.raises(SystemExit):
        gc.parse_args(["--skip", "everything"])
    assert sum(gc.LIMITS.values()) <= 480  # the per-step limits fit the 8-minute budget


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_no_cuda_fails_fast_and_clearly(gc, tmp_path, capsys):
    assert gc.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "is_available() is False" in err
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "needs a CUDA GPU" in res.stderr


def _bench_csv(path, rows):
    cols = ["kernel", "provider", "mode", "metric", "x_value", "dtype", "p50"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(cols, r)))


def test_summary_ratios_from_csvs(gc, tmp_path):
    dev = gc.slug("NVIDIA H200 (fake)")
    assert dev == "nvidia-h200-fake"
    t = 8192
    _bench_csv(tmp_path / f"entropy_cuda-{dev}.csv", [
        ("entropy", "weakstrong", "fwd", "time", t, "bf16", 0.8),
        ("entropy", "trl", "fwd", "time", t, "bf16", 1.0),
        ("logp_entropy", "weakstrong", "fwd", "time", t, "bf16", 1.0),
        ("logp_entropy", "trl", "fwd", "time", t, "bf16", "nan"),
    ])
    _bench_csv(tmp_path / f"mixed_ce_cuda-{dev}.csv", [
        ("mixed_ce", "weakstrong", "full", "time", t, "bf16", 2.0),
        ("mixed_ce", "torch_eager", "full", "time", t, "bf16", 8.0),
        ("mixed_ce", "weakstrong", "full", "memory", t, "bf16", 100.0),
        ("mixed_ce", "torch_eager", "full", "memory", t, "bf16", 400.0),
    ])
    rows = gc.summarize(tmp_path, dev, copy_gbs=4000.0, tokens=t)
    got = {r["target"].split(" (")[0]: r["value"] for r in rows}
    gbs = t * 151_936 * 2 / 0.8e-3 / 1e9
    assert got["entropy fwd bandwidth / copy bandwidth"] == pytest.approx(gbs / 4000.0)
    assert got["entropy fwd speed-up over TRL 1.16"] == pytest.approx(1.25)
    assert got["logp_entropy fwd speed-up over TRL 1.16"] is None  # missing figure: no ratio, no guess
    assert got["mixed_ce fwd+bwd speed-up over torch eager"] == pytest.approx(4.0)
    assert got["mixed_ce fwd+bwd peak memory / torch eager"] == pytest.approx(0.25)
    path = gc.write_rows(tmp_path / f"summary_{dev}.csv", [dict(r, device_name="NVIDIA H200 (fake)") for r in rows])
    back = list(csv.DictReader(open(path)))
    assert len(back) == len(rows) and back[0]["device_name"] == "NVIDIA H200 (fake)"
    assert path.name == "summary_nvidia-h200-fake.csv"


def test_summary_peers_beside_the_copy_floor(gc, tmp_path):
    dev = gc.slug("NVIDIA H200 (fake)")
    n, h, v = gc.PEERS_SHAPE
    cols = ["task", "provider", "mode", "N", "H", "V", "dtype", "p50_ms"]
    with open(tmp_path / f"peers_cuda-{dev}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for task, prov, mode, t in [("logp_entropy", "weakstrong_linear", "full", 40.0),
                                    ("logp_entropy", "trl_chunked", "full", 50.0),
                                    ("ce", "liger_flce", "full", "nan")]:
            w.writerow(dict(zip(cols, (task, prov, mode, n, h, v, "bf16", t))))
    got = {r["target"]: r["value"] for r in gc.summarize_peers(tmp_path, dev, copy_gbs=4000.0)}
    assert got["logits read once at copy bandwidth, ms (the floor of a logits-level forward)"] == pytest.approx(
        n * v * 2 / 4e12 * 1e3)
    assert got["peers logp_entropy full: weakstrong_linear speed-up over trl_chunked"] == pytest.approx(1.25)
    assert got["peers ce full: weakstrong_linear speed-up over liger_flce"] is None  # missing: no ratio
    assert got["peers logp_entropy trl_chunked full ms"] == 50.0

