"""Data like TRL (defect 3): WMSS trains and measures exactly the tokens SFTTrainer trains — every completion,
every assistant turn of a multi-turn chat (assistant_only_loss), text / formatting_func (language modelling); only
packing is refused; padding-free batches count num_tokens (defect 6)."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model

# the tiny tokenizer's ChatML template with {% generation %} markers around every assistant turn
GEN_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chats(n=4):
    rows = []
    for i in range(n):
        rows.append({"messages": [
            {"role": "user", "content": f"what is {i} plus one"},
            {"role": "assistant", "content": f"it is {i + 1}"},
            {"role": "user", "content": "and twice that"},
            {"role": "assistant", "content": f"that is {2 * (i + 1)} for sure"},
        ]})
    return Dataset.from_list(rows)


def sft_labels(tok, data, **cfg):
    model, _ = tiny_model("llama", seed=2)
    tr = SFTTrainer(model, args=SFTConfig("/tmp/unused-sft", report_to="none", use_cpu=True, bf16=False,
                                          shuffle_dataset=False, **cfg), train_dataset=data, processing_class=tok)
    return [list(r["labels"]) for r in tr.train_dataset]


def wmss(make_args, data, tok, dtype=torch.float32, **kw):
    strong, _ = tiny_model("llama", seed=0, dtype=dtype)
    weak, _ = tiny_model("llama", seed=1, dtype=dtype)
    fmt = kw.pop("formatting_func", None)
    return WMSSTrainer(strong, weak_model=weak, args=make_args(shuffle_dataset=False, **kw), train_dataset=data,
                       processing_class=tok, formatting_func=fmt)


def test_every_assistant_turn_is_supervised(make_args):
    _, tok = tiny_model("llama")
    tok.chat_template = GEN_TEMPLATE
    data = chats()
    trainer = wmss(make_args, data, tok, assistant_only_loss=True, max_steps=1)
    labels = [list(r["labels"]) for r in trainer._full_train_dataset]
    assert labels == sft_labels(tok, data, assistant_only_loss=True)  # the same tokens as SFT
    text = tok.decode([t for t in labels[0] if t != -100])
    assert "it is 1" in text and "that is 2 for sure" in text  # both assistant turns, not only the last
    assert "plus one" not in text and "twice" not in text  # no user turn
    trainer.train()
    # phase 2 measured over the same tokens: its per-example count is the supervised count
    assert trainer.selection is not None and len(trainer.selection["h_strong"]) == 4


def test_messages_without_assistant_only_loss_is_language_modelling(make_args):
    _, tok = tiny_model("llama")
    data = chats(2)
    trainer = wmss(make_args, data, tok)
    assert [list(r["labels"]) for r in trainer._full_train_dataset] == sft_labels(tok, data)


def test_text_and_formatting_func(make_args):
    _, tok = tiny_model("llama")
    text = Dataset.from_dict({"text": ["the cat sat on the mat", "two plus two is four"] * 2})
    trainer = wmss(make_args, text, tok, max_steps=1)
    labels = [list(r["labels"]) for r in trainer._full_train_dataset]
    assert labels == [list(r["input_ids"]) for r in trainer._full_train_dataset]  # every token trained
    trainer.train()
    raw = Dataset.from_dict({"question": ["two plus two", "one plus one"], "answer": ["four", "two"]})
    trainer = wmss(make_args, raw, tok, max_steps=1, formatting_func=lambda ex: f"{ex['question']} = {ex['answer']}")
    assert "two plus two = four" in tok.decode(trainer._full_train_dataset[0]["input_ids"])
    trainer.train()


def test_prompt_completion_is_completion_only(make_args, rooms_chat):
    _, tok = tiny_model("llama")
    data = rooms_chat.select(range(4))
    trainer = wmss(make_args, data, tok)
    labels = [list(r["labels"]) for r in trainer._full_train_dataset]
    assert labels == sft_labels(tok, data)
    assert all(lab[0] == -100 and any(x != -100 for x in lab) for lab in labels)


def test_packing_is_refused(make_args):
    with pytest.raises(ValueError, match="packing=False"):
        make_args(packing=True)


def test_padding_free_counts_tokens_and_matches_padded(make_args, rooms_chat):
    _, tok = tiny_model("llama")
    data = rooms_chat.select(range(4))
    runs = {}
    for pf in (False, True):
        # float64 models (and float64 hidden-state ops): padded and padding-free batches differ only in summation
        # order, ~1e-15; the Trainer logs the loss after rounding it to float32 (2**-24, twice at most)
        trainer = wmss(make_args, data, tok, dtype=torch.float64, padding_free=pf, max_length=None, max_steps=2,
                       per_device_train_batch_size=2, dedup=False)
        trainer.train()
        runs[pf] = trainer
    logs = {pf: [h for h in t.state.log_history if "loss" in h] for pf, t in runs.items()}
    counts = [h["num_tokens"] for h in logs[True]]
    assert counts[0] > 0 and counts[1] > counts[0]  # counted in every step (was frozen under padding_free)
    np.testing.assert_allclose(runs[True].selection["h_strong"], runs[False].selection["h_strong"], rtol=1e-10)
    np.testing.assert_allclose([h["loss"] for h in logs[True]], [h["loss"] for h in logs[False]], rtol=2.0**-23)
