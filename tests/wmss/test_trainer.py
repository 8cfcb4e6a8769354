"""The Trainer lifecycle (defect 2): one train() = one run (one step sequence, one log_history with the selection at
step 0, one on_train_begin/end, TrainOutput of the whole run, num_train_epochs / max_steps as in TRL); checkpoints
output_dir/checkpoint-N found by get_last_checkpoint, resume = the uninterrupted run (selection included);
evaluation on the strong model (eval_loss = its CE, as SFTTrainer's; eval_mixed_ce apart; compute_metrics gets
logits); load_best_model_at_end; save = the strong model only."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model


class Count(TrainerCallback):
    def __init__(self):
        self.begin = self.end = 0

    def on_train_begin(self, *a, **k):
        self.begin += 1

    def on_train_end(self, *a, **k):
        self.end += 1


def models(dtype=torch.float32):
    strong, tok = tiny_model("llama", seed=0, dtype=dtype)
    weak, _ = tiny_model("llama", seed=1, dtype=dtype)
    return strong, weak, tok


def test_one_train_is_one_run(make_args, rooms_chat):
    strong, weak, tok = models()
    count = Count()
    args = make_args(num_train_epochs=2, per_device_train_batch_size=2, learning_rate=3e-3)
    trainer = WMSSTrainer(strong, weak_model=weak, args=args, train_dataset=rooms_chat.select(range(8)), processing_class=tok,
                          callbacks=[count])
    out = trainer.train()
    size = int(trainer.selection["stats"]["selection/size"])
    assert size == len(trainer.train_dataset) == len(set(trainer.selection["indices"]))  # dedup'ed draw
    assert out.global_step == trainer.state.global_step == 2 * math.ceil(size / 2)  # num_train_epochs counts
    assert (count.begin, count.end) == (1, 1)
    history = trainer.state.log_history
    first = history[0]
    # the selection joins the run's first log entry (SFT's log_history shape: no extra entry)
    assert first["step"] == 1 and "loss" in first and first["wmss/selection/size"] == size
    assert "wmss/entropy/delta" in first and sum("wmss/selection/size" in h for h in history) == 1
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == list(range(1, out.global_step + 1))
    assert out.metrics["train_loss"] == pytest.approx(np.mean([h["loss"] for h in history if "loss" in h]), rel=1e-4)
    lines = open(trainer.args.output_dir + "/selection/entropies.jsonl").read().splitlines()
    assert len(lines) == 8


class Crash(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt("simulated crash")


def run(make_args, data, out, callbacks=(), resume=None, dtype=torch.float32, **kw):
    strong, weak, tok = models(dtype)
    args = make_args(output_dir=str(out), per_device_train_batch_size=2, save_strategy="steps", save_steps=2,
                     dedup=False, learning_rate=3e-3, **kw)
    trainer = WMSSTrainer(strong, weak_model=weak, args=args, train_dataset=data, processing_class=tok, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_is_the_uninterrupted_run(make_args, rooms_chat, tmp_path, monkeypatch):
    """In float64: the resumed run repeats the uninterrupted run's operations, so any difference is rounding;
    Adam turns a gradient perturbation δg into at most ~lr * δg / eps a step (3e-3 * 1e-15 / 1e-8 in float64, over
    12 steps: < 1e-9), whatever the CPU's summation order. In float32 the same bound would be ~1e-2."""
    data = rooms_chat.select(range(8))  # 8 draws with repeats, batch 2, SFTConfig's 3 epochs: 12 steps
    full = run(make_args, data, tmp_path / "a", dtype=torch.float64)
    with pytest.raises(KeyboardInterrupt):
        run(make_args, data, tmp_path / "b", callbacks=[Crash()], dtype=torch.float64)
    assert get_last_checkpoint(str(tmp_path / "b")) == str(tmp_path / "b" / "checkpoint-2")

    def no_selection(self):
        raise AssertionError("a resumed run must not measure and draw again")

    monkeypatch.setattr(WMSSTrainer, "select", no_selection)
    count = Count()
    resumed = run(make_args, data, tmp_path / "b", callbacks=[count], resume=True, dtype=torch.float64)
    assert resumed.state.global_step == full.state.global_step == 12 and count.begin == 1
    assert resumed.selection["indices"] == full.selection["indices"]
    for a, b in ((full.joint_model.strong, resumed.joint_model.strong), (full.joint_model.weak, resumed.joint_model.weak)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert p.dtype == torch.float64, name
            torch.testing.assert_close(p, q, rtol=0, atol=1e-9, msg=name)
    for key in ("loss", "num_tokens"):
        a, b = ([h[key] for h in t.state.log_history if "loss" in h] for t in (full, resumed))
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=key)
    assert "wmss/selection/size" in resumed.state.log_history[0]  # the selection's log survives the resume
    # a resume with another identity refuses
    monkeypatch.undo()
    with pytest.raises(ValueError, match="identity changed.*mix_lambda"):
        run(make_args, data, tmp_path / "b", resume=True, mix_lambda=0.3)


def test_resume_from_a_non_wmss_checkpoint_refuses(make_args, rooms_chat, tmp_path):
    (tmp_path / "sft" / "checkpoint-1").mkdir(parents=True)
    strong, weak, tok = models()
    trainer = WMSSTrainer(strong, weak_model=weak, args=make_args(max_steps=1), train_dataset=rooms_chat.select(range(4)),
                          processing_class=tok)
    with pytest.raises(ValueError, match="not a WMSSTrainer checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "sft" / "checkpoint-1"))


def test_evaluation_is_on_the_strong_model(make_args, rooms_chat):
    from trl import SFTConfig, SFTTrainer

    strong, weak, tok = models()
    evalset = rooms_chat.select(range(8, 12))
    seen = {}

    def metrics(pred):
        seen["shape"] = tuple(pred.predictions.shape)
        return {"probe": 1.0}

    trainer = WMSSTrainer(strong, weak_model=weak, args=make_args(per_device_eval_batch_size=2),
                          train_dataset=rooms_chat.select(range(4)), eval_dataset=evalset, processing_class=tok,
                          compute_metrics=metrics)
    got = trainer.evaluate()
    sft = SFTTrainer(tiny_model("llama", seed=0)[0], args=SFTConfig(trainer.args.output_dir + "-sft", report_to="none",
                                                                    use_cpu=True, bf16=False,
                                                                    per_device_eval_batch_size=2),
                     eval_dataset=evalset, train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    ref = sft.evaluate()
    assert got["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-5)  # eval_loss means what SFT's means
    assert got["eval_strong_ce"] == pytest.approx(got["eval_loss"], rel=1e-5)
    assert abs(got["eval_mixed_ce"] - got["eval_loss"]) > 1e-5
    assert got["eval_probe"] == 1.0 and seen["shape"][-1] == strong.config.vocab_size  # compute_metrics ran


def test_load_best_model_at_end_and_strong_only_save(make_args, rooms_chat, tmp_path):
    strong, weak, tok = models()
    args = make_args(max_steps=4, per_device_train_batch_size=2, learning_rate=3e-2, eval_strategy="steps",
                     eval_steps=1, save_strategy="steps", save_steps=1, load_best_model_at_end=True,
                     metric_for_best_model="eval_loss", dedup=False)
    trainer = WMSSTrainer(strong, weak_model=weak, args=args, train_dataset=rooms_chat.select(range(8)),
                          eval_dataset=rooms_chat.select(range(8, 10)), processing_class=tok)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.startswith(args.output_dir + "/checkpoint-")
    final = tmp_path / "final"
    trainer.save_model(str(final))
    assert not (final / "weak").exists()
    loaded = AutoModelForCausalLM.from_pretrained(final)
    best_strong = AutoModelForCausalLM.from_pretrained(best)
    for (name, p), q in zip(loaded.named_parameters(), best_strong.parameters()):
        torch.testing.assert_close(p, q, msg=name)  # the saved model is the best checkpoint's strong model
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert trainer.state.best_metric == pytest.approx(min(evals))
