"""Every user error names its fix; the collapse (weak ≈ strong) is warned about loudly."""

import copy

import pytest
from datasets import Dataset

from weakstrong import WMSSConfig, WMSSTrainer
from weakstrong.models import tiny_model


@pytest.mark.parametrize("kw, match", [
    (dict(mix_lambda=0.0), r"mix_lambda must be in \(0, 1\].*0.5"),
    (dict(mix_lambda=1.2), r"mix_lambda must be in \(0, 1\]"),
    (dict(alpha=-1.0), r">= 0.*defaults"),
    (dict(alpha=0.0, beta=0.0, gamma=0.0), r"all 0.*at least one"),
    (dict(weight_formula="v3"), "weight_formula"),
    (dict(rounds=0), "rounds"),
    (dict(packing=True), "packing=False"),
])
def test_config_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        WMSSConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def test_config_defaults_and_lambda_one(tmp_path):
    args = WMSSConfig(output_dir=str(tmp_path), report_to="none", mix_lambda=1.0)
    assert (args.alpha, args.beta, args.gamma, args.weight_formula, args.dedup) == (0.1, 0.8, 0.1, "paper", True)
    assert "Parameters:" in WMSSConfig.__doc__ and "mix_lambda" in WMSSConfig.__doc__


def test_dataset_without_needed_columns(make_args, tiny):
    model, tok = tiny
    ds = Dataset.from_dict({"text": ["hello world"] * 4})
    with pytest.raises(ValueError, match=r"'prompt' and 'completion'.*'messages'.*Fix"):
        WMSSTrainer(model, args=make_args(), train_dataset=ds, processing_class=tok)


def test_example_without_supervised_tokens_names_rows(make_args, tiny, rooms_chat):
    model, tok = tiny
    rows = rooms_chat.select(range(4)).to_list()
    rows[2]["prompt"] = [{"role": "user", "content": "word " * 300}]  # truncation leaves no completion token
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    with pytest.raises(ValueError, match=r"rows 2\b.*max_length"):
        WMSSTrainer(model, args=make_args(max_length=128), train_dataset=ds, processing_class=tok)


def test_vocab_mismatch(make_args, rooms_chat):
    model, tok = tiny_model("llama", vocab_size=512)
    weak, _ = tiny_model("llama", vocab_size=384)
    assert weak.config.vocab_size != model.config.vocab_size
    trainer = WMSSTrainer(model, args=make_args(weak_model=weak), train_dataset=rooms_chat.select(range(4)),
                          processing_class=tok)
    with pytest.raises(ValueError, match=r"vocabulary.*Fix"):
        trainer.train()


def test_collapse_is_warned(make_args, tiny, rooms_chat):
    model, tok = tiny
    args = make_args(weak_model=copy.deepcopy(model), max_steps=1)
    trainer = WMSSTrainer(model, args=args, train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    with pytest.warns(UserWarning, match="COLLAPSE"):
        trainer.train()


def test_messages_dataset_is_accepted(make_args, tiny):
    from weakstrong.tasks import ArithmeticTask

    model, tok = tiny
    ds = ArithmeticTask().generate(4, seed=0, format="messages")
    trainer = WMSSTrainer(model, args=make_args(), train_dataset=ds, processing_class=tok)
    row = trainer.train_dataset[0]
    assert row["labels"][0] == -100 and any(x != -100 for x in row["labels"])  # completion-only
