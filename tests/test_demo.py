"""The main job end to end on a tiny random model: every stage runs, the same-budget comparison and its interval
print in 80 columns, the artefacts exist and the saved models load (the embedded model's run is the README's
`make demo`)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from weakstrong.cli import main as cli_main
from weakstrong.demo import _verdict
from weakstrong.stats import Interval


def test_demo_runs_every_stage_on_a_tiny_model(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--model", str(tiny_llama_dir), "--train-size", "8", "--test-size", "4",
                   "--max-new-tokens", "4", "--batch-size", "4", "--threads", "1", "--output-dir", str(out),
                   "--eval-m0"])
    assert rc == 0
    text = capsys.readouterr().out
    wmss_steps = json.loads((out / "round-1" / "trainer_state.json").read_text())["global_step"]
    control_state = json.loads((out / "sft-control" / "trainer_state.json").read_text())
    assert control_state["global_step"] == wmss_steps >= 1  # the same budget
    for stage in ("M0 (untrained)", "M1 (SFT, 1 epoch)", f"M1 + WMSS ({wmss_steps} steps)",
                  f"M1 + SFT ({wmss_steps} steps)", "Phase 2 (nats)", "WMSS − SFT:", "95% CI", "2e-05"):
        assert stage in text, stage
    assert "…" not in text, "a table cell was cut in 80 columns"
    assert max(len(line) for line in text.splitlines()) <= 80
    assert (out / "round-1" / "selection" / "entropies.png").stat().st_size > 10_000
    assert len((out / "round-1" / "selection" / "entropies.jsonl").read_text().splitlines()) == 8
    assert not (out / "round-1" / "weak").exists()
    assert f"WMSS {out / 'round-1'}" in text.replace("\n", "")
    # both saved models are trained models, not the starting M1
    m1 = dict(AutoModelForCausalLM.from_pretrained(out / "sft").named_parameters())
    for folder in ("round-1", "sft-control"):
        loaded = AutoModelForCausalLM.from_pretrained(out / folder)
        assert any(not torch.equal(p, m1[n]) for n, p in loaded.named_parameters() if n in m1), folder


def _iv(est, lo, hi, n=100):
    return Interval(est, lo, hi, n, 0.95, "bootstrap", 0.01)


@pytest.mark.parametrize("diff, only_w, only_s, expect", [
    (_iv(0.05, 0.01, 0.09), 7, 2, "WMSS beat the same budget of SFT, by 1.0 to 9.0 points"),
    (_iv(-0.05, -0.09, -0.01), 2, 7, "WMSS fell behind the same budget of SFT, by 1.0 to 9.0 points"),
    (_iv(0.02, -0.03, 0.07), 5, 3, "cannot tell WMSS from plain SFT. It allows anything from -3.0 to +7.0"),
    (_iv(0.0, 0.0, 0.0), 0, 0, "right on exactly the same problems"),
])
def test_verdict_says_what_the_interval_allows(diff, only_w, only_s, expect):
    lines = _verdict(diff, only_w, only_s)
    assert expect in " ".join(lines)
    assert f"over the {diff.n} test problems" in lines[0]


def _import_deepspeed(call_env_helper: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    code = ("import weakstrong.demo as d; d._cpu_accelerator_env(); " if call_env_helper else "") + \
        "import deepspeed.accelerator as a; a.get_accelerator()"
    # DeepSpeed's logger writes to stdout
    return subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300).stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is DeepSpeed's CPU fallback")
def test_demo_quiets_deepspeeds_cpu_warning():
    pytest.importorskip("deepspeed")
    assert "Setting accelerator to CPU" in _import_deepspeed(False)  # the warning this guards against exists
    assert "Setting accelerator to CPU" not in _import_deepspeed(True)


def test_default_threads_follow_the_cores_free_now(monkeypatch):
    import weakstrong.demo as demo

    busy = demo._busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    for busy_now, threads in ((0.0, 2), (0.4, 2), (0.6, 1), (1.9, 1)):
        monkeypatch.setattr(demo, "_busy_cores", lambda interval=0.5, b=busy_now: b)
        assert demo._default_threads() == threads, busy_now
