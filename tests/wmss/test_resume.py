"""Checkpoints carry phase, round and drawn indices: a run killed in phase 3 resumes there (not at phase 1) and
ends with the same strong model as an uninterrupted run."""

import json

import pytest
import torch
from transformers import TrainerCallback

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model


class Crash(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if "joint" in args.output_dir and state.global_step == 2:
            raise KeyboardInterrupt("simulated crash in phase 3")


class Phases(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen.append(args.output_dir.rstrip("/").split("/")[-1])


def run(make_args, data, out, callbacks=(), resume=None):
    model, tok = tiny_model("llama")
    args = make_args(output_dir=str(out), per_device_train_batch_size=2, save_strategy="steps", save_steps=2,
                     dedup=False, learning_rate=3e-3)
    trainer = WMSSTrainer(model, args=args, train_dataset=data, processing_class=tok, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_in_phase_3(make_args, rooms_chat, tmp_path):
    data = rooms_chat.select(range(8))  # 4 SFT steps, 4 joint steps (8 draws, duplicates kept)
    full = run(make_args, data, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(make_args, data, tmp_path / "b", callbacks=[Crash()])
    ckpt = tmp_path / "b" / "round-1" / "joint" / "checkpoint-2"
    state = json.loads((ckpt / "wmss_state.json").read_text())
    assert state["phase"] == "joint" and state["round"] == 1 and len(state["indices"]) == 8
    assert state["indices"] == full.selections[1]["indices"]
    assert WMSSTrainer.latest_checkpoint(str(tmp_path / "b")) == str(ckpt)
    phases = Phases()
    resumed = run(make_args, data, tmp_path / "b", callbacks=[phases], resume=True)
    assert phases.seen == ["joint"]  # no phase 1, no new selection
    assert resumed.state.global_step == full.state.global_step == 4
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    for p, q in zip(full.weak_model.parameters(), resumed.weak_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
