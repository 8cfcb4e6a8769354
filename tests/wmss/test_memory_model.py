"""The WMSS memory model (benchmarks/methods/wmss_memory_model.py) against real models and the kernels' tensors."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "methods"))

import wmss_memory_model as mm  # noqa: E402

from weakstrong.kernels import linear_mixed_cross_entropy, mixed_cross_entropy  # noqa: E402


def _tiny_config(kind: str, tied: bool, **extra):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"qwen3": Qwen3Config, "llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    kw = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=tied, max_position_embeddings=64)
    if kind == "qwen3":
        kw["head_dim"] = 16  # not hidden / heads (= 12): the formula must read head_dim
    kw.update(extra)
    return cls(**kw)


def _model(cfg):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize(
    "kind,tied,extra",
    [
        ("qwen3", True, {}),
        ("qwen3", False, {}),
        ("qwen3", False, {"attention_bias": True}),
        ("llama", True, {}),
        ("llama", False, {}),
        ("llama", False, {"attention_bias": True, "mlp_bias": True}),
        ("qwen2", False, {}),
    ],
)
def test_param_count_matches_transformers(kind, tied, extra):
    cfg = _tiny_config(kind, tied, **extra)
    model = _model(cfg)
    assert model.config.tie_word_embeddings is tied
    assert mm.param_count(mm.Arch.from_config(cfg)) == sum(p.numel() for p in model.parameters())


def test_lora_param_count_matches_peft():
    from peft import LoraConfig, get_peft_model

    cfg = _tiny_config("qwen3", False)
    arch = mm.Arch.from_config(cfg)
    peft_model = get_peft_model(_model(cfg), LoraConfig(r=4, lora_alpha=8, target_modules=list(mm.ALL_LINEAR)))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert mm.lora_param_count(arch, 4, mm.ALL_LINEAR) == trainable
    assert mm.lora_param_count(arch, 4, ("q_proj", "v_proj")) < trainable


def test_qwen3_constants_reproduce_the_model_cards():
    # model cards: Qwen3-4B-Base 4.0B parameters / 3.6B non-embedding (tied), Qwen3-8B 8.2B / 6.95B (untied)
    for arch, total, non_emb in ((mm.QWEN3_4B, 4.0e9, 3.6e9), (mm.QWEN3_8B, 8.2e9, 6.95e9)):
        p = mm.param_count(arch)
        emb = arch.vocab * arch.hidden * (1 if arch.tied else 2)
        assert abs(p - total) / total < 0.01, arch.name
        assert abs((p - emb) - non_emb) / non_emb < 0.01, arch.name


def _saved_and_grads(fn, leaves):
    """Bytes of the tensors autograd saves during ``fn()`` and of the gradients reaching ``leaves``."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    grads = []
    for leaf in leaves:
        leaf.register_hook(lambda g: grads.append(g))
    loss.backward()
    return saved, grads


def _bytes(ts, cols=None, exclude=()):
    """Bytes of distinct storages among ``ts`` (optionally only 2-D/3-D tensors with ``cols`` columns)."""
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    seen = {}
    for t in ts:
        if cols is not None and not (t.dim() in (2, 3) and t.shape[-1] == cols):
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("frozen", [False, True])
def test_wmss_logits_terms_are_what_mixed_ce_keeps(frozen):
    n, v = 7, 41
    arch = mm.Arch("t", vocab=v, hidden=8, layers=1, intermediate=8, heads=1, kv_heads=1, head_dim=8, tied=False)
    st = mm.Settings(seq_len=n, supervised=n)
    a = torch.randn(n, v, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(n, v, dtype=torch.bfloat16, requires_grad=not frozen)
    y = torch.randint(0, v, (n,))
    leaves = [a] if frozen else [a, b]
    saved, grads = _saved_and_grads(lambda: mixed_cross_entropy(a, b, y, lam=0.5, reduction="sum"), leaves)
    kept = _bytes(saved, cols=v) + _bytes(grads, cols=v)
    mode = "wmss_frozen_weak" if frozen else "wmss_full"
    assert kept == sum(mm.loss_terms(arch, mode, "logits", st).values())


def test_sft_logits_forward_terms_are_what_hf_keeps():
    # forward-held part of the SFT logits term: bf16 logits (in the output) + fp32 log_softmax output = 6·s·V B
    cfg = _tiny_config("qwen3", False)
    model = _model(cfg).to(torch.bfloat16)
    s = 12
    ids = torch.randint(0, cfg.vocab_size, (1, s))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, labels=ids)
    # the LM head's weight (saved transposed by its matmul, [H, V]) is a parameter, not a loss temporary
    held = _bytes(saved, cols=cfg.vocab_size, exclude=list(model.parameters())) + _bytes([out.logits])
    terms = mm.loss_terms(mm.Arch.from_config(cfg), "sft", "logits", mm.Settings(seq_len=s, supervised=s))
    assert held == terms["bf16 logits [s,V]"] + terms["fp32 log_softmax output [s,V]"]


def test_hidden_path_keeps_no_logits_and_head_grads_are_bf16_weights():
    n, v, h = 9, 53, 16
    arch = mm.Arch("t", vocab=v, hidden=h, layers=1, intermediate=8, heads=1, kv_heads=1, head_dim=16, tied=False)
    st = mm.Settings(seq_len=n, supervised=n, chunk_tokens=4)
    sh = torch.randn(n, h, dtype=torch.bfloat16, requires_grad=True)
    wh = torch.randn(n, h, dtype=torch.bfloat16, requires_grad=True)
    sw = torch.randn(v, h, dtype=torch.bfloat16, requires_grad=True)
    ww = torch.randn(v, h, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, v, (n,))
    saved, grads = _saved_and_grads(
        lambda: linear_mixed_cross_entropy(sh, sw, wh, ww, y, reduction="sum", chunk_size=4), [sw, ww])
    # nothing [*, V] is kept between forward and backward (the two weights are [V, H]: H columns)
    assert not any(t.dim() >= 2 and t.shape[-1] == v for t in saved)
    terms = mm.loss_terms(arch, "wmss_full", "hidden", st)
    assert _bytes(grads) == terms["LM head weight grad [V,H] x2"]
    assert terms["chunk logits [4,V] x2"] == 2 * mm.logits_bytes(4, v, 2)


def test_breakdown_orders_and_scales():
    st = mm.Settings()
    for arch in (mm.QWEN3_4B, mm.QWEN3_8B):
        full = {p: mm.breakdown(arch, "wmss_full", p, st) for p in mm.PATHS}
        sft = mm.breakdown(arch, "sft", "logits", st)
        frozen = mm.breakdown(arch, "wmss_frozen_weak", "logits", st)
        lora = mm.breakdown(arch, "wmss_lora", "hidden", st)
        # two trained models: twice SFT's optimizer state; frozen weak: SFT's optimizer, twice its weights
        assert full["logits"]["optimizer"] == 2 * sft["optimizer"]
        assert frozen["optimizer"] == sft["optimizer"] and frozen["weights"] == 2 * sft["weights"]
        assert lora["optimizer"] < sft["optimizer"] / 50
        assert full["hidden"]["loss"] < full["logits"]["loss"]
        # ZeRO-3: 8 GPUs hold an eighth of the 16 B/param each
        assert sft["weights"] + sft["grads"] + sft["optimizer"] == pytest.approx(16 * mm.param_count(arch) / 8, abs=8)
        # the logits term is linear in the supervised tokens, the hidden path's is flat
        big = mm.Settings(seq_len=8192, supervised=8192)
        assert mm.breakdown(arch, "wmss_full", "logits", big)["loss"] == 2 * full["logits"]["loss"]
        assert mm.breakdown(arch, "wmss_full", "hidden", big)["loss"] == full["hidden"]["loss"]
