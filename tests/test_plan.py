"""weakstrong plan: the library memory model as a user command (one implementation with the benchmark script)."""

import json
import os
import subprocess
import sys

import pytest

from weakstrong.cli import main as cli_main
from weakstrong.memory_model import GiB, QWEN3_8B, Settings, breakdown, fit_options

QWEN3_8B_CONFIG = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 36,
                   "intermediate_size": 12288, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                   "tie_word_embeddings": False, "attention_bias": False}


def _plan(capsys, *argv):
    assert cli_main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_from_a_config_equals_the_committed_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B_CONFIG))
    p = _plan(capsys, "--model", str(tmp_path), "--mode", "wmss", "--gpus", "8", "--zero-stage", "3",
              "--seq-len", "4096")
    # the committed result (benchmarks/README.md): Qwen3-8B, WMSS full, hidden path, 8 GPUs, ZeRO-3: 38.56 GiB
    assert round(p["per_gpu_gib"]["peak"], 2) == 38.56
    assert p["per_gpu_gib"]["peak"] == breakdown(QWEN3_8B, "wmss_full", "hidden", Settings())["peak"] / GiB
    assert p["fits"] and p["accumulation"] == 64  # 512 = 1 x 8 x 64
    # the built-in hub id gives the same numbers without a download
    q = _plan(capsys, "--model", "Qwen/Qwen3-8B-Base", "--mode", "wmss")
    assert q["per_gpu_gib"] == p["per_gpu_gib"]


def test_the_benchmark_script_runs_the_library_model():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks", "methods"))
    try:
        import wmss_memory_model as script
    finally:
        sys.path.pop(0)
    import weakstrong.memory_model as lib

    assert script.breakdown is lib.breakdown and script.Arch is lib.Arch


def test_fit_search_orders_and_respects_the_budget():
    st = Settings(gpu_gib=48.0)
    opts = fit_options(QWEN3_8B, "wmss_full", "hidden", st, reserve_gib=3.0)
    fitting = [o for o in opts if o["fits"]]
    assert fitting and all(o["peak_gib"] <= 45.0 for o in fitting)
    assert all(o["peak_gib"] > 45.0 for o in opts if not o["fits"])
    # stage 3 + checkpointing: micro-batch 2 (41.0 GiB) fits 45 GiB, 4 (45.9 GiB) does not; the largest first
    assert [(o["zero_stage"], o["checkpointing"], o["micro_batch"]) for o in fitting] == [(3, True, 2), (3, True, 1)]
    # lower stages keep more per GPU; no checkpointing keeps more activations
    peaks = {(o["zero_stage"], o["checkpointing"], o["micro_batch"]): o["peak_gib"] for o in opts}
    assert peaks[(0, True, 1)] > peaks[(1, True, 1)] > peaks[(2, True, 1)] > peaks[(3, True, 1)]
    assert peaks[(3, False, 1)] > peaks[(3, True, 1)]


def test_lora_fits_where_full_wmss_does_not(capsys):
    lora = _plan(capsys, "--model", "Qwen/Qwen3-8B-Base", "--mode", "lora", "--gpus", "1", "--gpu-gib", "24")
    full = _plan(capsys, "--model", "Qwen/Qwen3-8B-Base", "--mode", "wmss", "--gpus", "1", "--gpu-gib", "24")
    assert not full["fits"] and full["recommended"] is None
    assert lora["per_gpu_gib"]["peak"] < full["per_gpu_gib"]["peak"]


def test_plan_errors_offline_and_bad_values(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "weakstrong.cli", "plan", "--model", "someone/unknown-7b"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Pass the path of its config.json" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_8B_CONFIG, "model_type": "mamba"}))
    r = subprocess.run([sys.executable, "-m", "weakstrong.cli", "plan", "--model", str(tmp_path / "config.json")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "llama, qwen2 and qwen3" in r.stderr


@pytest.mark.parametrize("argv,match", [(["--gpus", "0"], "--gpus must be >= 1"),
                                        (["--gpu-gib", "2"], "must exceed --reserve-gib")])
def test_plan_refuses_bad_values(argv, match, capsys):
    assert cli_main(["plan", "--model", "Qwen/Qwen3-4B-Base", *argv]) == 2
    assert match in capsys.readouterr().err
