"""A tiny model through every phase: it must learn (held-out gold-answer NLL falls), write its artefacts, and
save a strong model that AutoModelForCausalLM loads."""

import json

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model
from weakstrong.tasks import ArithmeticTask
from weakstrong.wmss.selection import supervised_logits, tokenize_example


@torch.no_grad()
def gold_nll(model, tok, data):
    model.eval()
    total, n = 0.0, 0
    for r in data:
        t = tokenize_example(tok, dict(r))
        ids, labels = torch.tensor([t["input_ids"]]), torch.tensor([t["labels"]])
        logits, y, _ = supervised_logits(model, ids, torch.ones_like(ids), labels)
        total += F.cross_entropy(logits, y, reduction="sum").item()
        n += y.numel()
    return total / n


def test_all_phases_learn(make_args, tmp_path):
    task = ArithmeticTask()
    train, test = task.generate(48, seed=1), task.generate(12, seed=2)
    model, tok = tiny_model("llama")
    before = gold_nll(model, tok, test)
    args = make_args(per_device_train_batch_size=8, learning_rate=3e-3, sft_epochs=2, wmss_epochs=2,
                     weight_formula="official")
    trainer = WMSSTrainer(model, args=args, train_dataset=train, processing_class=tok)
    trainer.train()
    after_wmss = gold_nll(trainer.model, tok, test)
    assert after_wmss < before - 1.0, (before, after_wmss)  # from ~ln(V) = 6.2 nats
    # phase 3 itself keeps lowering the training loss
    mixed = [h["mixed_ce"] for h in trainer.state.log_history if "mixed_ce" in h]
    assert len(mixed) >= 2 and mixed[-1] < mixed[0]
    # per-round artefacts
    lines = (tmp_path / "out" / "round-1" / "entropies.jsonl").read_text().splitlines()
    assert len(lines) == 48 and {"index", "H_weak", "H_strong", "weight"} <= set(json.loads(lines[0]))
    assert (tmp_path / "out" / "round-1" / "entropies.png").stat().st_size > 10_000
    # the strong model only, loadable as an ordinary checkpoint
    trainer.save_model()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "weak").exists()
    ids = torch.tensor([tokenize_example(tok, dict(test[0]))["input_ids"]])
    trainer.model.eval()
    torch.testing.assert_close(loaded(ids).logits, trainer.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_phase3_learning_rate_is_its_own(make_args, rooms_chat):
    """wmss_learning_rate applies to phase 3 only; phase 1 keeps learning_rate, and args are restored after train."""
    model, tok = tiny_model("llama")
    args = make_args(learning_rate=1e-3, wmss_learning_rate=2e-4, lr_scheduler_type="constant", sft_max_steps=2,
                     wmss_max_steps=2)
    from transformers import TrainerCallback

    seen = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs or {}))

    trainer = WMSSTrainer(model, args=args, train_dataset=rooms_chat, processing_class=tok, callbacks=[Record()])
    trainer.train()
    sft = [h["learning_rate"] for h in seen if "loss" in h and "mixed_ce" not in h]
    joint = [h["learning_rate"] for h in seen if "mixed_ce" in h]
    assert sft and joint
    assert all(abs(lr - 1e-3) < 1e-12 for lr in sft), sft
    assert all(abs(lr - 2e-4) < 1e-12 for lr in joint), joint
    assert trainer.args.learning_rate == 1e-3


def test_phase3_learning_rate_must_be_positive(make_args):
    import pytest

    with pytest.raises(ValueError, match="wmss_learning_rate must be > 0"):
        make_args(wmss_learning_rate=0.0)
