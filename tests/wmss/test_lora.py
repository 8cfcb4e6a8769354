"""LoRA mode: one copy of the base weights; the weak branch is a second adapter, zero-initialised (= the base model
M0) and trainable from round 1 (defect 8); gradient checkpointing gives the same gradients as no checkpointing for
both adapters (defect 1), with use_reentrant True and False."""

import copy

import numpy as np
import pytest
import torch

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model
from weakstrong.wmss import JointModel, example_entropies

peft = pytest.importorskip("peft")


def lora_config(**kw):
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0,
                           task_type="CAUSAL_LM", **kw)


def sft_adapter_model(seed=0):
    """M1 in LoRA mode: a tiny base with a non-zero 'default' adapter (as after LoRA SFT)."""
    base, tok = tiny_model("llama", seed=seed)
    return peft.get_peft_model(base, lora_config(init_lora_weights=False)), tok


def lora_weights(model, adapter):
    return {k: v.detach().clone() for k, v in model.named_parameters() if f".{adapter}." in k}


def test_zero_initialised_weak_adapter_is_the_base(make_args, rooms_chat, prepared):
    model, tok = sft_adapter_model()
    trainer = WMSSTrainer(model, args=make_args(), train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    joint = trainer.joint_model
    assert joint.adapters and set(model.peft_config) == {"default", "weak"}
    rows = prepared(trainer)
    with joint.branch("weak") as m:
        h_weak = example_entropies(m, rows, pad_token_id=tok.pad_token_id)
    with model.disable_adapter():
        h_base = example_entropies(model, rows, pad_token_id=tok.pad_token_id)
    with joint.branch("strong") as m:
        h_strong = example_entropies(m, rows, pad_token_id=tok.pad_token_id)
    np.testing.assert_allclose(h_weak, h_base, rtol=1e-6, atol=1e-7)
    assert np.abs(h_strong - h_base).max() > 1e-4  # the strong adapter is not the base
    # one copy of the base weights: base + two small adapters
    n_base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert sum(p.numel() for p in joint.parameters()) < 1.1 * n_base


def _adapter_grads(model, ids, labels, checkpointing, reentrant=False, pinned=True):
    joint = JointModel(model, None, lam=0.5)
    if not pinned:  # the defect: no adapter pinning around the recomputation
        joint._pinned = lambda func: func
    joint.train()
    if checkpointing:
        joint.activation_checkpointing_enable({"use_reentrant": reentrant})
    out = joint(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    (out.loss_sum / out.num_tokens).backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_gives_the_gradients_of_no_checkpointing(reentrant):
    model, tok = sft_adapter_model()
    model.add_adapter("weak", lora_config(init_lora_weights=False))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    ref = _adapter_grads(copy.deepcopy(model), ids, labels, checkpointing=False)
    got = _adapter_grads(copy.deepcopy(model), ids, labels, checkpointing=True, reentrant=reentrant)
    assert {n for n in ref if ".weak." in n} and {n for n in ref if ".default." in n}
    for name, r in ref.items():
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], r, rtol=1e-5, atol=1e-7, msg=name)
    # without the pinning the recomputed weak branch runs with the strong adapter (defect 1): wrong or no gradients
    bad = _adapter_grads(copy.deepcopy(model), ids, labels, checkpointing=True, reentrant=reentrant, pinned=False)
    weak = [n for n in ref if ".weak." in n]
    assert any(bad[n] is None or (bad[n] - ref[n]).abs().max() > 1e-3 for n in weak)


@pytest.mark.parametrize("reentrant", [False, True])
def test_trainer_step_with_checkpointing_equals_without(make_args, rooms_chat, reentrant):
    """SFTConfig's default gradient checkpointing, through the trainer: the same adapter updates."""
    data = rooms_chat.select(range(4))
    ref_model, tok = sft_adapter_model()
    gc_model = copy.deepcopy(ref_model)
    common = dict(max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, weight_decay=0.0,
                  selection=False, shuffle_dataset=False)
    WMSSTrainer(ref_model, args=make_args(output_dir=make_args().output_dir + "-ref", **common), train_dataset=data,
                processing_class=tok).train()
    WMSSTrainer(gc_model, args=make_args(activation_checkpointing=True,
                                         activation_checkpointing_kwargs={"use_reentrant": reentrant}, **common),
                train_dataset=data, processing_class=tok).train()
    layers = [m for m in gc_model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert layers and all(getattr(m._gradient_checkpointing_func, "_wmss_pinned", False) for m in layers)
    for adapter in ("default", "weak"):
        ref, got = lora_weights(ref_model, adapter), lora_weights(gc_model, adapter)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7, msg=k)
    assert any(v.abs().max() > 0 for k, v in lora_weights(gc_model, "weak").items() if "lora_B" in k)


@pytest.mark.parametrize("freeze", [False, True])
def test_round_one_weak_adapter_is_trained_unless_frozen(make_args, rooms_chat, freeze, tmp_path):
    model, tok = sft_adapter_model()
    base_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    args = make_args(max_steps=2, learning_rate=5e-3, freeze_weak=freeze, save_strategy="steps", save_steps=2)
    trainer = WMSSTrainer(model, args=args, train_dataset=rooms_chat.select(range(8)), processing_class=tok)
    trainer.train()
    weak_b = [v for k, v in lora_weights(model, "weak").items() if "lora_B" in k]
    moved = max(v.abs().max().item() for v in weak_b)
    assert (moved == 0.0) if freeze else (moved > 0.0)
    for k, v in model.named_parameters():
        if "lora_" not in k:
            torch.testing.assert_close(v, base_before[k], msg=k)  # base weights are never trained
    # checkpoints hold both adapters (resume); save_model writes the strong adapter only
    ckpt = tmp_path / "out" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "weak" / "adapter_model.safetensors").is_file()
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file() and not (tmp_path / "final" / "weak").exists()
    loaded = peft.PeftModel.from_pretrained(tiny_model("llama", seed=0)[0], str(tmp_path / "final"))
    for k, v in lora_weights(loaded, "default").items():
        torch.testing.assert_close(v, dict(model.named_parameters())[k], msg=k)


def test_weak_adapter_from_a_saved_adapter(make_args, rooms_chat, tmp_path):
    """Later rounds: weak_model = the folder of an earlier strong adapter, loaded as the trainable 'weak' adapter."""
    earlier, tok = sft_adapter_model(seed=0)
    earlier.save_pretrained(tmp_path / "earlier")
    model, _ = sft_adapter_model(seed=0)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if "lora_B" in k:
                p.add_(0.1)
    trainer = WMSSTrainer(model, weak_model=str(tmp_path / "earlier"), args=make_args(max_steps=1),
                          train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    want = lora_weights(earlier, "default")
    got = lora_weights(model, "weak")
    assert len(got) == len(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k.replace(".default.", ".weak.")], v)
    assert trainer.joint_model.set_trainable() is None and all(
        p.requires_grad for k, p in model.named_parameters() if ".weak." in k)
