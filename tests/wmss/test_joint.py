"""The mixed loss and its gradients: JointModel vs a plain autograd reference, and through the trainer."""

import copy

import pytest
import torch
import torch.nn.functional as F

from weakstrong.models import tiny_model
from weakstrong.wmss import JointModel
from weakstrong.wmss.selection import tokenize_example


def collate(rows, pad):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], attn[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def reference_loss(strong, weak, batch, lam):
    zs = strong(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    zw = weak(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    z = lam * zs + (1 - lam) * zw
    y = batch["labels"][:, 1:]
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("lam, freeze", [(0.3, False), (0.5, True), (1.0, False)])
def test_joint_loss_and_gradients_match_reference(rooms_chat, lam, freeze):
    strong, tok = tiny_model("llama", seed=0)
    weak, _ = tiny_model("llama", seed=1)
    ref_s, ref_w = copy.deepcopy(strong), copy.deepcopy(weak)
    batch = collate([tokenize_example(tok, dict(r)) for r in rooms_chat.select(range(3))], tok.pad_token_id)
    joint = JointModel(strong, weak, lam=lam, freeze_weak=freeze)
    out = joint(**batch)
    loss = out.loss_sum / out.num_tokens
    loss.backward()
    ref = reference_loss(ref_s, ref_w, batch, lam)
    ref.backward()
    torch.testing.assert_close(loss, ref.float(), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(strong.named_parameters(), ref_s.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    if freeze or lam == 1.0:
        assert all(p.grad is None for p in weak.parameters())
    else:
        for p, q in zip(weak.parameters(), ref_w.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    # telemetry: strong CE and entropies are per-token sums over the supervised tokens
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert int(out.num_tokens) == n
    zs = ref_s(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    ce = F.cross_entropy(zs.reshape(-1, zs.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.strong_ce_sum / n, ce.detach(), rtol=1e-5, atol=1e-5)


def test_gradients_through_the_trainer(make_args, rooms_chat):
    """One SGD step of phase 3 (no clipping, no decay): Δθ = -lr · ∇ of the reference mixed loss, both models."""
    from weakstrong import WMSSTrainer

    strong, tok = tiny_model("llama", seed=0)
    weak, _ = tiny_model("llama", seed=1)
    ref_s, ref_w = copy.deepcopy(strong), copy.deepcopy(weak)
    before_s = {k: v.clone() for k, v in strong.state_dict().items()}
    before_w = {k: v.clone() for k, v in weak.state_dict().items()}
    data = rooms_chat.select(range(6))
    lr, lam = 0.5, 0.4
    args = make_args(weak_model=weak, mix_lambda=lam, selection=False, optim="sgd", learning_rate=lr,
                     max_grad_norm=0.0, weight_decay=0.0, lr_scheduler_type="constant", max_steps=1,
                     per_device_train_batch_size=6, shuffle_dataset=False)
    trainer = WMSSTrainer(strong, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    prepared = trainer._full_train_dataset
    batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in prepared])
    reference_loss(ref_s, ref_w, batch, lam).backward()
    for (k, p), q in zip(ref_s.named_parameters(), ref_s.parameters()):
        torch.testing.assert_close(before_s[k] - strong.state_dict()[k], lr * q.grad, rtol=2e-3, atol=1e-6, msg=k)
    for (k, p), q in zip(ref_w.named_parameters(), ref_w.parameters()):
        torch.testing.assert_close(before_w[k] - weak.state_dict()[k], lr * q.grad, rtol=2e-3, atol=1e-6, msg=k)
    logs = [h for h in trainer.state.log_history if "mixed_ce" in h]
    assert logs and {"strong_ce", "entropy/strong", "entropy/weak", "entropy/delta"} <= set(logs[0])
