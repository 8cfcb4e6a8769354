"""A tiny model through the whole method (run_wmss: SFT, selection, joint training): it must learn (held-out gold
answer CE, measured by SFTTrainer.evaluate, falls), write its artefacts, and end with a strong model that
AutoModelForCausalLM loads."""

import json

from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from weakstrong.models import tiny_model
from weakstrong.tasks import ArithmeticTask
from weakstrong.wmss import run_wmss


def heldout_ce(model, tok, test, tmp):
    cfg = SFTConfig(str(tmp), report_to="none", use_cpu=True, bf16=False, per_device_eval_batch_size=6)
    return SFTTrainer(model, args=cfg, train_dataset=test, eval_dataset=test, processing_class=tok).evaluate()[
        "eval_loss"]


def test_all_phases_learn(make_args, tmp_path):
    task = ArithmeticTask()
    train, test = task.generate(48, seed=1), task.generate(12, seed=2)
    m0, tok = tiny_model("llama")
    before = heldout_ce(m0, tok, test, tmp_path / "ev0")
    args = make_args(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=3e-3,
                     num_train_epochs=2, weight_formula="official")
    res = run_wmss(m0, train, args, processing_class=tok)
    final = AutoModelForCausalLM.from_pretrained(res.final_dir)
    after = heldout_ce(final, tok, test, tmp_path / "ev1")
    assert after < before - 1.0, (before, after)  # from ~ln(V) = 6.2 nats
    mixed = [h["mixed_ce"] for h in res.log_history["round-1"] if "mixed_ce" in h]
    assert len(mixed) >= 2 and mixed[-1] < mixed[0]  # phase 3 itself keeps lowering its loss
    lines = (tmp_path / "out" / "round-1" / "selection" / "entropies.jsonl").read_text().splitlines()
    assert len(lines) == 48 and {"index", "H_weak", "H_strong", "weight"} <= set(json.loads(lines[0]))
    assert (tmp_path / "out" / "round-1" / "selection" / "entropies.png").stat().st_size > 10_000
    assert not (tmp_path / "out" / "round-1" / "weak").exists()  # the strong model only
