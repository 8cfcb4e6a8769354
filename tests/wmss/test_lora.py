"""LoRA mode: no second copy of the base weights; round 1 weak = adapter disabled (frozen); later rounds a second
trainable adapter, with gradients reaching both adapters."""

import copy

import pytest
import torch
import torch.nn.functional as F

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model
from weakstrong.wmss import JointModel
from weakstrong.wmss.selection import tokenize_example

peft = pytest.importorskip("peft")


def lora_config(**kw):
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                           task_type="CAUSAL_LM", **kw)


def test_two_adapter_gradients_match_reference(rooms_chat):
    base, tok = tiny_model("llama")
    model = peft.get_peft_model(base, lora_config(init_lora_weights=False))
    model.add_adapter("weak", lora_config(init_lora_weights=False))
    ref_s, ref_w = copy.deepcopy(model), copy.deepcopy(model)
    ref_w.set_adapter("weak")
    rows = [tokenize_example(tok, dict(r)) for r in rooms_chat.select(range(2))]
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (n - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (n - len(r["labels"])) for r in rows])
    attn = (torch.arange(n)[None] < torch.tensor([len(r["input_ids"]) for r in rows])[:, None]).long()
    joint = JointModel(model, None, lam=0.5, weak_adapter="weak")
    out = joint(input_ids=ids, attention_mask=attn, labels=labels)
    (out.loss_sum / out.num_tokens).backward()
    zs = ref_s(input_ids=ids, attention_mask=attn).logits[:, :-1]
    zw = ref_w(input_ids=ids, attention_mask=attn).logits[:, :-1]
    ref = F.cross_entropy((0.5 * zs + 0.5 * zw).reshape(-1, zs.shape[-1]), labels[:, 1:].reshape(-1))
    ref.backward()
    checked = 0
    for (name, p), (_, q_s), (_, q_w) in zip(model.named_parameters(), ref_s.named_parameters(),
                                            ref_w.named_parameters()):
        if ".default." in name:
            torch.testing.assert_close(p.grad, q_s.grad, rtol=1e-4, atol=1e-7, msg=name)
            checked += 1
        elif ".weak." in name:
            torch.testing.assert_close(p.grad, q_w.grad, rtol=1e-4, atol=1e-7, msg=name)
            checked += 1
        else:
            assert p.grad is None, name  # base weights are never trained
    assert checked == 2 * 2 * 2 * 2  # 2 layers x (q, v) x (A, B) x 2 adapters


def test_lora_rounds(make_args, rooms_chat):
    from peft import get_peft_model_state_dict
    from peft.utils import load_peft_weights

    model, tok = tiny_model("llama")
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    args = make_args(rounds=2, max_steps=2, learning_rate=5e-3)
    trainer = WMSSTrainer(model, args=args, train_dataset=rooms_chat.select(range(8)), processing_class=tok,
                          peft_config=lora_config())
    trainer.train()
    pm = trainer.model
    assert set(pm.peft_config) == {"default", "weak"}
    # no copy of the base: the joint module holds base + two adapters
    n_base = sum(v.numel() for v in base_before.values())
    n_joint = sum(p.numel() for p in trainer._joint.parameters())
    assert n_joint < 1.1 * n_base
    # base weights untouched
    for name, p in pm.get_base_model().named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, base_before[name.replace(".base_layer", "")], msg=name)
    # round 2's weak adapter started from the round-1 strong snapshot and was trained (freeze_weak=False)
    snap = load_peft_weights(str(tmp_dir(args) / "round-1" / "strong-start"))
    weak_now = get_peft_model_state_dict(pm, adapter_name="weak")
    assert set(snap) == set(weak_now)
    assert any(not torch.allclose(snap[k], weak_now[k]) for k in snap)
    # save_model writes only the strong adapter
    out = tmp_dir(args) / "final"
    trainer.save_model(str(out))
    assert (out / "adapter_model.safetensors").is_file() and not (out / "weak").exists()


def tmp_dir(args):
    from pathlib import Path

    return Path(args.output_dir)
