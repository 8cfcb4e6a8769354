"""The main job end to end on a tiny random model: every stage runs, the summary prints, the artefacts exist and
the saved strong model loads (the embedded model's run is the README's `make demo`)."""

import torch
from transformers import AutoModelForCausalLM

from weakstrong.cli import main as cli_main


def test_demo_runs_every_stage_on_a_tiny_model(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--model", str(tiny_llama_dir), "--train-size", "8", "--test-size", "4",
                   "--max-new-tokens", "4", "--batch-size", "4", "--threads", "1", "--output-dir", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for stage in ("M0 (untrained)", "M1 (after phase 1: SFT)", "M2 (after WMSS)", "Phase 2 telemetry", "phase-3 lr 2e-05"):
        assert stage in text, stage
    assert (out / "round-1" / "selection" / "entropies.png").stat().st_size > 10_000
    assert len((out / "round-1" / "selection" / "entropies.jsonl").read_text().splitlines()) == 8
    loaded = AutoModelForCausalLM.from_pretrained(out / "round-1")
    assert not (out / "round-1" / "weak").exists()
    assert f"Strong model (loadable with AutoModelForCausalLM): {out / 'round-1'}" in text
    # the saved model is the trained strong model, not the starting one
    start = dict(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).named_parameters())
    assert any(not torch.equal(p, start[n]) for n, p in loaded.named_parameters() if n in start)
