"""The mixed loss from hidden states: JointModel vs a plain full-logits autograd reference (loss, gradients, the
strong/weak CE and entropies of the same pass), no [N, V] logits in the loss path, and one step through the trainer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from weakstrong.models import tiny_model
from weakstrong.wmss import JointModel


TIGHT = dict(rtol=1e-9, atol=1e-12)  # float64 vs float64 in another summation order


def batch_of(tok, n=3, seed=0, width=20):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tok), (n, width), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt
    attn = torch.ones_like(ids)
    attn[0, -4:] = 0  # right padding in one row
    labels[0, -4:] = -100
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def full_logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]


def reference_loss(strong, weak, batch, lam):
    zs, zw = full_logits(strong, batch), full_logits(weak, batch)
    z = lam * zs + (1 - lam) * zw
    y = batch["labels"][:, 1:]
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=-100), zs, zw, y


@pytest.mark.parametrize("lam, freeze", [(0.3, False), (0.5, True), (1.0, False)])
def test_joint_loss_gradients_and_stats_match_reference(lam, freeze):
    # float64 models and ops (float64 in, float64 out): the hidden-state path and the full-logits reference differ
    # only in summation order, ~1e-15 relative, on any CPU; a float32 step anywhere would show as ~1e-7
    strong, tok = tiny_model("llama", seed=0, dtype=torch.float64)
    weak, _ = tiny_model("llama", seed=1, dtype=torch.float64)
    ref_s, ref_w = copy.deepcopy(strong), copy.deepcopy(weak)
    batch = batch_of(tok)
    joint = JointModel(strong, weak, lam=lam, freeze_weak=freeze)
    out = joint(**batch)
    n = int(out.num_tokens)
    (out.loss_sum / n).backward()
    ref, zs, zw, y = reference_loss(ref_s, ref_w, batch, lam)
    ref.backward()
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(out.loss_sum / n, ref, **TIGHT)
    for (name, p), q in zip(strong.named_parameters(), ref_s.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TIGHT, msg=name)
    if freeze or lam == 1.0:
        assert all(p.grad is None for p in weak.parameters())
    else:
        for p, q in zip(weak.parameters(), ref_w.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **TIGHT)
    # the same pass gives the strong model's own CE and entropy (and the weak ones unless λ = 1)
    mask = y != -100
    zs, zw, y = zs.detach()[mask], zw.detach()[mask], y[mask]

    def entropy(z):
        logp = torch.log_softmax(z.double(), -1)
        return -(logp.exp() * logp).sum(-1).mean()

    # the logged statistics are float32 sums (joint.py): one rounding of a float64 value, 2**-24 relative
    stat = dict(rtol=2.0**-23, atol=0)
    torch.testing.assert_close((out.strong_nll_sum / n).double(), F.cross_entropy(zs, y), **stat)
    torch.testing.assert_close((out.strong_entropy_sum / n).double(), entropy(zs), **stat)
    if lam < 1.0:
        torch.testing.assert_close((out.weak_nll_sum / n).double(), F.cross_entropy(zw, y), **stat)
        torch.testing.assert_close((out.weak_entropy_sum / n).double(), entropy(zw), **stat)
    else:
        assert float(out.weak_nll_sum) == 0.0  # the weak model is not run at λ = 1


class LargestLogits(TorchDispatchMode):
    """Records the largest tensor whose last dimension is the vocabulary (views of the weights aside, e.g. the
    head's transpose), over every op in the block."""

    def __init__(self, vocab, *models):
        super().__init__()
        self.vocab, self.largest = vocab, 0
        self.weights = {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab
                    and t.untyped_storage().data_ptr() not in self.weights):
                self.largest = max(self.largest, t.numel() // self.vocab)
        return out


def test_no_full_logits_in_the_loss(monkeypatch):
    """Forward + backward of the joint loss build logits one chunk of tokens at a time, never [N, V]."""
    import weakstrong.kernels.linear as linear

    strong, tok = tiny_model("llama", seed=0, hidden_size=32)
    weak, _ = tiny_model("llama", seed=1, hidden_size=32)
    vocab = strong.config.vocab_size
    batch = batch_of(tok, n=4, width=24)
    n_sup = int((batch["labels"][:, 1:] != -100).sum())
    chunk = 8
    monkeypatch.setattr(linear, "default_token_chunk", lambda n, v, d: chunk)
    # The hidden-state ops are torch.library custom ops: a dispatch mode sees the op, not the chunk matmuls inside
    # it, so the chunk logits are recorded where the kernels build them.
    built, build = [], linear._logits
    monkeypatch.setattr(linear, "_logits", lambda h, w, b: built.append(h.shape[0]) or build(h, w, b))
    joint = JointModel(strong, weak, lam=0.5)
    with LargestLogits(vocab, strong, weak) as seen:
        out = joint(**batch)
        out.loss_sum.backward()
    assert seen.largest <= chunk  # outside the kernels: nothing of vocabulary width beyond one chunk
    assert built and max(built) <= chunk < n_sup  # inside: forward and backward logits one chunk at a time
    rs, rw = copy.deepcopy(strong), copy.deepcopy(weak)
    with LargestLogits(vocab, rs, rw) as ref:  # the monitor does see the full logits of the reference path
        reference_loss(rs, rw, batch, 0.5)[0].backward()
    assert ref.largest >= n_sup


def test_one_trainer_step_is_the_reference_gradient(make_args, pair, rooms_chat, prepared):
    """One SGD step (no clipping, no decay): Δθ = -lr · ∇ of the reference mixed loss, for both models."""
    from weakstrong import WMSSTrainer

    strong, weak, tok = pair
    # float64: in float32 the step's difference before - after loses ~ulp(θ)/Δθ ~ 1e-3 of its digits to cancellation
    strong, weak = strong.double(), weak.double()
    ref_s, ref_w = copy.deepcopy(strong), copy.deepcopy(weak)
    before_s = {k: v.clone() for k, v in strong.state_dict().items()}
    before_w = {k: v.clone() for k, v in weak.state_dict().items()}
    lr, lam = 0.5, 0.4
    args = make_args(mix_lambda=lam, selection=False, optim="sgd", learning_rate=lr, max_grad_norm=0.0,
                     weight_decay=0.0, lr_scheduler_type="constant", max_steps=1, per_device_train_batch_size=6,
                     shuffle_dataset=False)
    trainer = WMSSTrainer(strong, weak_model=weak, args=args, train_dataset=rooms_chat.select(range(6)), processing_class=tok)
    trainer.train()
    batch = trainer.data_collator(prepared(trainer))
    reference_loss(ref_s, ref_w, batch, lam)[0].backward()
    for k, q in ref_s.named_parameters():
        torch.testing.assert_close(before_s[k] - strong.state_dict()[k], lr * q.grad, rtol=1e-8, atol=1e-12, msg=k)
    for k, q in ref_w.named_parameters():
        torch.testing.assert_close(before_w[k] - weak.state_dict()[k], lr * q.grad, rtol=1e-8, atol=1e-12, msg=k)
    logs = [h for h in trainer.state.log_history if "mixed_ce" in h]
    assert logs and {"strong_ce", "weak_ce", "entropy", "weak_entropy", "num_tokens"} <= set(logs[0])


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_one_kernel_pass_per_step(monkeypatch, lam):
    """The loss, the strong CE and the entropies come from ONE pass over the vocabulary (defect 7: no extra
    strong-CE pass; at λ = 1 one selective log-softmax, the weak model not run)."""
    import weakstrong.kernels as kernels

    calls = []
    for name in ("linear_mixed_cross_entropy", "linear_selective_log_softmax_and_entropy"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    strong, tok = tiny_model("llama", seed=0)
    weak, _ = tiny_model("llama", seed=1)
    weak_forward = []
    weak.model.register_forward_hook(lambda *a: weak_forward.append(1))
    JointModel(strong, weak, lam=lam)(**batch_of(tok)).loss_sum.backward()
    want = "linear_mixed_cross_entropy" if lam < 1 else "linear_selective_log_softmax_and_entropy"
    assert calls == [want]
    assert len(weak_forward) == (1 if lam < 1 else 0)
