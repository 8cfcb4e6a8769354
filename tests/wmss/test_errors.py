"""Every user error names its fix; the weak model is loaded like the strong one (defect 4); configs convert without
losing tokens (defect 5); NaN weights and empty data are named (defect 6); the collapse is warned about."""

import copy

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig

from weakstrong import WMSSConfig, WMSSTrainer
from weakstrong.models import tiny_model


@pytest.mark.parametrize("kw, match", [
    (dict(mix_lambda=0.0), r"mix_lambda must be in \(0, 1\].*0.5"),
    (dict(mix_lambda=1.2), r"mix_lambda must be in \(0, 1\]"),
    (dict(alpha=-1.0), r">= 0.*defaults"),
    (dict(alpha=0.0, beta=0.0, gamma=0.0), r"all 0.*at least one"),
    (dict(weight_formula="v3"), "weight_formula"),
    (dict(entropy_max_tokens=0), "entropy_max_tokens"),
    (dict(packing=True), "packing=False"),
])
def test_config_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        WMSSConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def test_config_defaults(tmp_path):
    args = WMSSConfig(output_dir=str(tmp_path), report_to="none", mix_lambda=1.0)
    assert (args.alpha, args.beta, args.gamma, args.weight_formula, args.dedup) == (0.1, 0.8, 0.1, "paper", True)
    assert "Parameters:" in WMSSConfig.__doc__ and "mix_lambda" in WMSSConfig.__doc__


def test_sft_config_converts_with_its_tokens(tmp_path, pair, rooms_chat):
    """Defect 5: to_dict() redacts *_token fields; from_sft_config and the trainer keep them."""
    sft = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, hub_token="hf_secret",
                    eos_token="<|im_end|>", learning_rate=2e-5, num_train_epochs=2, activation_checkpointing=False)
    lossy = WMSSConfig(**sft.to_dict())  # the idiom the old error message suggested: tokens become placeholders
    assert (lossy.hub_token, lossy.eos_token) == ("<HUB_TOKEN>", "<EOS_TOKEN>")
    args = WMSSConfig.from_sft_config(sft, mix_lambda=0.4)
    assert (args.hub_token, args.eos_token, args.learning_rate, args.num_train_epochs, args.mix_lambda) == \
        ("hf_secret", "<|im_end|>", 2e-5, 2, 0.4)
    assert args.activation_checkpointing is False
    strong, weak, tok = pair
    trainer = WMSSTrainer(strong, weak_model=weak, args=sft, train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    assert isinstance(trainer.args, WMSSConfig) and trainer.args.hub_token == "hf_secret"


def test_weak_model_loaded_with_model_init_kwargs(make_args, rooms_chat, tmp_path):
    """Defect 4: a string weak model gets the strong one's model_init_kwargs (dtype, attention), unless its own."""
    strong, tok = tiny_model("llama", seed=0)
    weak, _ = tiny_model("llama", seed=1)
    for name, m in (("strong", strong), ("weak", weak)):
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    init = {"dtype": "bfloat16", "attn_implementation": "eager"}
    trainer = WMSSTrainer(str(tmp_path / "strong"), weak_model=str(tmp_path / "weak"), args=make_args(model_init_kwargs=init),
                          train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    joint = trainer.joint_model
    for m in (joint.strong, joint.weak):
        assert next(m.parameters()).dtype == torch.bfloat16
        assert m.config._attn_implementation == "eager"
    own = make_args(model_init_kwargs=init, weak_model_init_kwargs={"dtype": "float32"})
    trainer = WMSSTrainer(str(tmp_path / "strong"), weak_model=str(tmp_path / "weak"), args=own,
                          train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    assert next(trainer.joint_model.weak.parameters()).dtype == torch.float32


def test_nan_weights_are_named(make_args, pair, rooms_chat):
    strong, weak, tok = pair
    with torch.no_grad():
        weak.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    trainer = WMSSTrainer(strong, weak_model=weak, args=make_args(max_steps=1), train_dataset=rooms_chat.select(range(4)),
                          processing_class=tok)
    with pytest.raises(ValueError, match=r"weak model's weights contain NaN/Inf.*up_proj"):
        trainer.train()


def test_empty_dataset_is_named(make_args, pair):
    strong, weak, tok = pair
    empty = Dataset.from_dict({"prompt": [], "completion": []})
    with pytest.raises(ValueError, match="train_dataset is empty"):
        WMSSTrainer(strong, weak_model=weak, args=make_args(), train_dataset=empty, processing_class=tok)


def test_examples_truncated_away_are_left_out_like_sft(make_args, pair, rooms_chat, caplog):
    strong, weak, tok = pair
    rows = rooms_chat.select(range(4)).to_list()
    rows[2]["prompt"] = [{"role": "user", "content": "word " * 300}]  # truncation leaves no completion token
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    with caplog.at_level("WARNING"):
        trainer = WMSSTrainer(strong, weak_model=weak, args=make_args(max_length=128), train_dataset=ds, processing_class=tok)
    assert sorted(trainer._full_train_dataset["wmss_index"]) == [0, 1, 3]
    assert "rows 2" in caplog.text


def test_weak_model_required_in_full_mode(make_args, pair, rooms_chat):
    strong, _, tok = pair
    with pytest.raises(ValueError, match="weak_model is required.*run_wmss"):
        WMSSTrainer(strong, args=make_args(), train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    from peft import LoraConfig

    with pytest.raises(ValueError, match="strong model itself.*collapse"):
        WMSSTrainer(strong, args=make_args(), train_dataset=rooms_chat.select(range(4)), processing_class=tok,
                    peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))


def test_vocab_mismatch(make_args, rooms_chat):
    model, tok = tiny_model("llama", vocab_size=512)
    weak, _ = tiny_model("llama", vocab_size=384)
    assert weak.config.vocab_size != model.config.vocab_size
    with pytest.raises(ValueError, match=r"vocabulary.*Fix"):
        WMSSTrainer(model, weak_model=weak, args=make_args(), train_dataset=rooms_chat.select(range(4)), processing_class=tok)


def test_collapse_is_warned(make_args, tiny, rooms_chat):
    model, tok = tiny
    trainer = WMSSTrainer(model, weak_model=copy.deepcopy(model), args=make_args(max_steps=1),
                          train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    with pytest.warns(UserWarning, match="COLLAPSE"):
        trainer.train()
