"""WMSSTrainer keeps SFTTrainer's promises (issue 21): SFT's constructor order and errors, ``mean_token_accuracy``,
``loss_type="dft"`` / ``label_smoothing_factor`` on the mixed logits, the MoE router loss, prompt-learning adapters.

Comparisons of two computations run in float64 (the claim is "the same"), so they do not depend on BLAS or threads."""

import inspect

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother
from trl import SFTConfig, SFTTrainer

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model
from weakstrong.wmss.joint import JointModel, mixed_loss


def _pair():
    strong, tok = tiny_model("llama", seed=0)
    weak, _ = tiny_model("llama", seed=1)
    return strong, weak, tok


# --------------------------------------------------------------------------------------------- item 6, 8: signature


def test_signature_is_sfts_with_weak_model_keyword():
    sft = list(inspect.signature(SFTTrainer.__init__).parameters)
    params = inspect.signature(WMSSTrainer.__init__).parameters
    assert list(params)[: len(sft)] == sft  # every SFTTrainer parameter, in SFT's positional order
    assert params["weak_model"].kind is inspect.Parameter.KEYWORD_ONLY


def test_positional_order_as_sft(make_args, rooms_chat):
    strong, weak, tok = _pair()
    args = make_args(max_steps=1)
    trainer = WMSSTrainer(strong, args, None, rooms_chat.select(range(4)), None, tok, weak_model=weak)
    assert trainer.args is args and len(trainer._full_train_dataset) == 4
    with pytest.raises(TypeError, match="weak_model=M0"):  # the old order (model, weak, ...) is told what to do
        WMSSTrainer(strong, weak, train_dataset=rooms_chat.select(range(4)), processing_class=tok)


def test_missing_train_dataset_error_is_sfts(make_args, tmp_path):
    strong, weak, tok = _pair()
    with pytest.raises(ValueError) as sft_error:
        SFTTrainer(strong, SFTConfig(str(tmp_path / "sft"), report_to="none", use_cpu=True, bf16=False),
                   processing_class=tok)
    with pytest.raises(ValueError) as wmss_error:
        WMSSTrainer(strong, make_args(), processing_class=tok, weak_model=weak)
    assert str(wmss_error.value) == str(sft_error.value) == "`train_dataset` is required"


def test_compute_loss_func_is_refused(make_args, rooms_chat):
    strong, weak, tok = _pair()
    with pytest.raises(ValueError, match="compute_loss_func is not supported.*loss_type"):
        WMSSTrainer(strong, make_args(), train_dataset=rooms_chat.select(range(4)), processing_class=tok,
                    compute_loss_func=lambda *a, **k: 0.0, weak_model=weak)


# --------------------------------------------------------------------------------------------- item 5: the objective


def _hidden_case(seed=0, n=12, h=8, v=23):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    hw = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    ww = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    return hs, ws, hw, ww, y


def _reference(hs, ws, hw, ww, y, lam, loss_type, eps):
    """The objective from the full float64 logits: TRL's DFT formula, transformers' LabelSmoother."""
    z = lam * hs @ ws.T + (1 - lam) * hw @ ww.T
    logp = torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    if loss_type == "dft":
        return (-logp * logp.exp().detach()).sum()
    if eps:  # LabelSmoother's mean over tokens, times the token count = the sum
        smoother = LabelSmoother(epsilon=eps)
        labels = torch.cat([y.new_full((1,), -100), y])[None]  # shift_labels=True drops the first label
        logits = torch.cat([z, z[:1]])[None]
        return smoother({"logits": logits}, labels, shift_labels=True) * len(y)
    return -logp.sum()


@pytest.mark.parametrize("lam", [0.5, 1.0])
@pytest.mark.parametrize("loss_type,eps", [("nll", 0.0), ("dft", 0.0), ("nll", 0.1)])
def test_mixed_loss_matches_full_logits(lam, loss_type, eps):
    hs, ws, hw, ww, y = _hidden_case()
    got, st = mixed_loss(hs, ws, hw if lam < 1 else None, ww if lam < 1 else None, y, lam, loss_type=loss_type,
                         label_smoothing=eps)
    ref = _reference(hs, ws, hw, ww, y, lam, loss_type, eps)
    leaves = [hs, ws] + ([hw, ww] if lam < 1 else [])
    g_got = torch.autograd.grad(got, leaves)
    g_ref = torch.autograd.grad(ref, leaves)
    # The hidden-state kernels compute in float32 (kernels.linear.compute_dtype) even for float64 inputs: each
    # logit is a sum of H=8 products and each log-sum-exp one over V=23 terms, so the relative error is a few
    # (H + V) * 2^-24 ~ 2e-6; 2e-5 leaves a 10x margin and is still far below any effect of a wrong formula.
    tol = dict(rtol=2e-5, atol=2e-6)
    assert got.item() == pytest.approx(ref.item(), rel=tol["rtol"])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b, **tol)
    own = _reference(hs, ws, hs, ws, y, 1.0, loss_type, eps)  # the strong model alone: eval_loss
    assert st["strong_loss"].sum().item() == pytest.approx(own.item(), rel=tol["rtol"])
    assert torch.equal(st["strong_top1"], (hs @ ws.T).argmax(-1) == y)


def test_dft_and_smoothing_change_the_trained_loss():
    """The options are live (issue 21 item 5: they used to give the default loss)."""
    hs, ws, hw, ww, y = _hidden_case(seed=1)
    base = mixed_loss(hs, ws, hw, ww, y, 0.5)[0].item()
    assert mixed_loss(hs, ws, hw, ww, y, 0.5, loss_type="dft")[0].item() != pytest.approx(base, rel=1e-3)
    assert mixed_loss(hs, ws, hw, ww, y, 0.5, label_smoothing=0.2)[0].item() != pytest.approx(base, rel=1e-3)


def test_label_smoothing_with_dft_is_refused(make_args):
    with pytest.raises(ValueError, match="label_smoothing_factor=0.1 with loss_type='dft'"):
        make_args(loss_type="dft", label_smoothing_factor=0.1)


def test_trainer_uses_loss_type(make_args, rooms_chat):
    strong, weak, tok = _pair()
    trainer = WMSSTrainer(strong, make_args(loss_type="dft", label_smoothing_factor=0.0), weak_model=weak,
                          train_dataset=rooms_chat.select(range(4)), processing_class=tok)
    joint = trainer.joint_model
    assert joint.loss_type == "dft"
    trainer2 = WMSSTrainer(tiny_model("llama", seed=0)[0], make_args(label_smoothing_factor=0.1),
                           weak_model=tiny_model("llama", seed=1)[0], train_dataset=rooms_chat.select(range(4)),
                           processing_class=tok)
    assert trainer2.joint_model.label_smoothing == 0.1


# --------------------------------------------------------------------------------------------- item 3: token accuracy


def test_mean_token_accuracy_train_and_eval(make_args, rooms_chat):
    """Logged for train and eval as SFT defines it (strong argmax == label over the loss tokens), so
    metric_for_best_model="mean_token_accuracy" works."""
    strong, weak, tok = _pair()
    args = make_args(max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                     metric_for_best_model="mean_token_accuracy", load_best_model_at_end=True,
                     per_device_eval_batch_size=4)
    trainer = WMSSTrainer(strong, args, weak_model=weak, train_dataset=rooms_chat.select(range(4)),
                          eval_dataset=rooms_chat.select(range(4, 8)), processing_class=tok)
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert train_logs and all(0.0 <= h["mean_token_accuracy"] <= 1.0 for h in train_logs)
    assert eval_logs and all(0.0 <= h["eval_mean_token_accuracy"] <= 1.0 for h in eval_logs)
    assert trainer.state.best_metric == max(h["eval_mean_token_accuracy"] for h in eval_logs)


def test_first_log_is_an_evaluation(make_args, rooms_chat):
    """When the run's first log entry is an evaluation, evaluate() still returns SFT's metrics with the selection's
    (TRL's test_train_with_metric_for_best_model: metric_for_best_model="eval_mean_token_accuracy")."""
    strong, weak, tok = _pair()
    args = make_args(max_steps=2, logging_steps=10, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                     save_steps=1, metric_for_best_model="eval_mean_token_accuracy", per_device_train_batch_size=2)
    trainer = WMSSTrainer(strong, args, weak_model=weak, train_dataset=rooms_chat.select(range(4)),
                          eval_dataset=rooms_chat.select(range(4, 6)), processing_class=tok)
    trainer.train()
    first = trainer.state.log_history[0]
    assert "eval_loss" in first and "eval_mean_token_accuracy" in first and "wmss/selection/size" in first
    assert trainer.state.best_metric is not None


def test_token_accuracy_counts_strong_argmax(pair):
    strong, weak, tok = pair
    rows = [tok(f"meeting {i} at room {i % 3}")["input_ids"] for i in range(3)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    out = JointModel(strong, weak, lam=0.5)(input_ids=ids, attention_mask=mask, labels=labels)
    with torch.no_grad():
        logits = strong(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    hits = ((logits.argmax(-1) == target) & (target != -100)).sum()
    assert out.strong_top1_sum.item() == hits.item() and out.num_tokens.item() == (target != -100).sum().item()


# --------------------------------------------------------------------------------------------- item 2: MoE router loss


def _tiny_moe(seed, tok):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=4, num_experts_per_tok=2, output_router_logits=True,
                            router_aux_loss_coef=0.25, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(config)


def test_moe_router_loss_is_added_and_logged_as_sft(make_args, rooms_chat):
    _, tok = tiny_model("llama")
    strong, weak = _tiny_moe(0, tok), _tiny_moe(1, tok)
    trainer = WMSSTrainer(strong, make_args(max_steps=1, per_device_train_batch_size=2), weak_model=weak,
                          train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.25  # SFT's own resolution of the coef
    batch = trainer.data_collator([trainer._full_train_dataset[i] for i in range(2)])
    joint = trainer.joint_model
    out = joint(**batch)
    with torch.no_grad():  # the model's own aux loss (transformers' forward with router logits)
        own = strong(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_router_logits=True).aux_loss
    assert out.aux_loss.item() == pytest.approx(own.item(), rel=1e-6)
    joint.train()
    loss = trainer.compute_loss(joint, dict(batch))
    expected = out.loss_sum / out.num_tokens + 0.25 * out.aux_loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert trainer._metrics["train"]["aux_loss"] == [pytest.approx(out.aux_loss.item(), rel=1e-6)]
    trainer._metrics["train"].clear()
    joint.eval()  # eval_loss: the strong model's own loss plus the weighted router loss, as SFT's eval_loss
    with torch.no_grad():
        eval_loss = trainer.compute_loss(joint, dict(batch))
    assert eval_loss.item() == pytest.approx((out.strong_loss_sum / out.num_tokens + 0.25 * out.aux_loss).item(),
                                             rel=1e-5)
    trainer._metrics["eval"].clear()
    trainer.train()
    assert "aux_loss" in [h for h in trainer.state.log_history if "loss" in h][0]


def test_moe_router_loss_off_with_zero_coef(make_args, rooms_chat):
    _, tok = tiny_model("llama")
    trainer = WMSSTrainer(_tiny_moe(0, tok), make_args(router_aux_loss_coef=0.0), weak_model=_tiny_moe(1, tok),
                          train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    batch = trainer.data_collator([trainer._full_train_dataset[i] for i in range(2)])
    assert trainer.joint_model(**batch).aux_loss is None


# --------------------------------------------------------------------------------------------- item 1: prompt learning


def _prompt_configs():
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    return {
        "prompt_tuning": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "prefix_tuning": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "p_tuning": PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16),
    }


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_prompt_learning_adapters_are_trained(kind, make_args, rooms_chat):
    """The virtual-token parameters change (they did not: the bare backbone ran), and the entropies and the loss are
    the PeftModel's own (virtual tokens included)."""
    strong, weak, tok = _pair()
    trainer = WMSSTrainer(strong, make_args(max_steps=2, per_device_train_batch_size=2), weak_model=weak,
                          train_dataset=rooms_chat.select(range(4)), processing_class=tok,
                          peft_config=_prompt_configs()[kind])
    peft_model = trainer.joint_model.strong
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert before and all("prompt_encoder" in n for n in before)
    batch = trainer.data_collator([trainer._full_train_dataset[i] for i in range(2)])
    joint = trainer.joint_model
    with torch.no_grad():
        out = joint(**batch)
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    virtual = logits.shape[1] - batch["input_ids"].shape[1]
    assert virtual == (4 if kind != "prefix_tuning" else 0)
    logp = torch.log_softmax(logits[:, virtual:-1].double(), -1)
    target = batch["labels"][:, 1:]
    keep = target != -100
    nll = -logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)[keep].sum()
    # float32 model and kernel against a float64 softmax of the same float32 logits: the kernel's float32
    # log-sum-exp over V~300 terms of a 64-wide dot product errs by ~(64 + 300) * 2^-24 relative per token
    assert out.strong_nll_sum.item() == pytest.approx(nll.item(), rel=1e-4)
    trainer.train()
    after = dict(peft_model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)


def test_prompt_learning_padding_free_refused(make_args, rooms_chat):
    strong, weak, tok = _pair()
    with pytest.raises(ValueError, match="padding_free=True is not supported with a prompt-learning adapter"):
        WMSSTrainer(strong, make_args(padding_free=True, max_length=None), weak_model=weak,
                    train_dataset=rooms_chat.select(range(4)), processing_class=tok,
                    peft_config=_prompt_configs()["prompt_tuning"])


@pytest.mark.parametrize("kind", ["ia3", "loha"])
def test_other_tuner_types_train_with_a_full_weak_model(kind, make_args, rooms_chat):
    """Tuner types that live in the layers (LoRA, IA3, LoHa, ...) run inside the backbone: trained like SFT."""
    from peft import IA3Config, LoHaConfig

    config = {"ia3": IA3Config(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "down_proj"],
                               feedforward_modules=["down_proj"]),
              "loha": LoHaConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], r=4)}[kind]
    strong, weak, tok = _pair()
    trainer = WMSSTrainer(strong, make_args(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2),
                          weak_model=weak, train_dataset=rooms_chat.select(range(4)), processing_class=tok,
                          peft_config=config)
    peft_model = trainer.joint_model.strong
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(peft_model.named_parameters())
    assert before and any(not torch.equal(before[n], after[n].detach()) for n in before)


def test_lora_mode_refuses_other_adapter_types(make_args, rooms_chat):
    """LoRA mode (the weak model = a second adapter on the same base) needs LoRA: other types are refused."""
    from peft import IA3Config, get_peft_model

    strong, _, tok = _pair()
    model = get_peft_model(strong, IA3Config(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "down_proj"],
                                             feedforward_modules=["down_proj"]))
    with pytest.raises(NotImplementedError, match="LoRA mode supports LoraConfig adapters, got IA3Config"):
        WMSSTrainer(model, make_args(), train_dataset=rooms_chat.select(range(4)), processing_class=tok)


# --------------------------------------------------------------------------------------------- item 4: the user's model


def test_trainer_model_is_the_users_model(make_args, rooms_chat, tmp_path):
    """``trainer.model`` is the strong model, before and after train() (as SFTTrainer's): isinstance, generate, tags,
    save_model; the trained module (strong + weak) is ``trainer.joint_model``."""
    strong, weak, tok = _pair()
    cls = type(strong)
    trainer = WMSSTrainer(strong, make_args(max_steps=1, per_device_train_batch_size=2), weak_model=weak,
                          train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    assert trainer.model is strong and isinstance(trainer.model, cls)
    assert "wmss" in trainer.model.model_tags and "sft" in trainer.model.model_tags
    assert isinstance(trainer.joint_model, JointModel) and trainer.joint_model.strong is strong
    trainer.train()
    assert trainer.model is strong and trainer.weak_model is weak
    out = trainer.model.generate(torch.tensor([[tok.bos_token_id or 1, 5, 6]]), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5)
    trainer.save_model(str(tmp_path / "saved"))
    saved = cls.from_pretrained(str(tmp_path / "saved"))
    for (n, a), b in zip(strong.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), n


def test_trainer_model_is_the_peft_model_in_lora_mode(make_args, rooms_chat):
    from peft import LoraConfig, PeftModel, get_peft_model

    strong, _, tok = _pair()
    model = get_peft_model(strong, LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], r=4))
    trainer = WMSSTrainer(model, make_args(max_steps=1, per_device_train_batch_size=2),
                          train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    assert trainer.model is model and isinstance(trainer.model, PeftModel)
    trainer.train()
    assert trainer.model is model


def test_neftune_noise_on_both_branches(make_args, rooms_chat):
    """``neftune_noise_alpha`` trains (it crashed: no get_input_embeddings) with noise on the strong model's and the
    weak model's embeddings during training only."""
    strong, weak, tok = _pair()
    seen = {"strong": [], "weak": []}
    for name, m in (("strong", strong), ("weak", weak)):
        m.get_input_embeddings().register_forward_hook(
            lambda mod, i, o, name=name: seen[name].append(getattr(mod, "_forward_hooks", None) and len(mod._forward_hooks)))
    trainer = WMSSTrainer(strong, make_args(max_steps=1, per_device_train_batch_size=2, neftune_noise_alpha=5.0),
                          weak_model=weak, train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    trainer.train()
    # during training each embedding had our probe and NEFTune's hook; afterwards NEFTune's hooks are gone
    assert max(seen["strong"]) == 2 and max(seen["weak"]) == 2
    assert len(strong.get_input_embeddings()._forward_hooks) == 1 == len(weak.get_input_embeddings()._forward_hooks)


def test_liger_is_applied_to_both_models(make_args, rooms_chat):
    """``use_liger_kernel=True`` patches the strong and the weak model (Transformers' call on SFT's model); it used
    to be skipped silently ("not an instance of PreTrainedModel"). Only the patching is checked: Liger's kernels
    need a GPU."""
    pytest.importorskip("liger_kernel")
    strong, weak, tok = _pair()
    trainer = WMSSTrainer(strong, make_args(use_liger_kernel=True), weak_model=weak,
                          train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    import transformers.models.llama.modeling_llama as llama

    saved = dict(vars(llama))  # Liger also patches the module's functions and classes: restore them for later tests
    try:
        trainer._apply_liger_kernel()
        for name, norm in (("strong", strong.model.norm), ("weak", weak.model.norm)):
            assert "liger" in repr(norm.forward).lower(), name
    finally:
        for key, value in saved.items():
            setattr(llama, key, value)


# --------------------------------------------------------------------------------------------- item 7: logit transforms


def _family(kind, seed, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=False)
    extra = {"gemma2": dict(final_logit_softcapping=3.0), "cohere": dict(logit_scale=0.5),
             "granite": dict(logits_scaling=4.0), "llama_bias": {}}[kind]
    config = AutoConfig.for_model("llama" if kind == "llama_bias" else kind, **common, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        if kind == "llama_bias":
            head = torch.nn.Linear(32, len(tok), bias=True)
            torch.nn.init.normal_(head.bias, std=1.0)
            model.lm_head = head
    return model


def _kernels_take(names):
    from weakstrong.kernels import linear_mixed_cross_entropy

    return all(n in inspect.signature(linear_mixed_cross_entropy).parameters for n in names)


@pytest.mark.parametrize("kind,needs", [("gemma2", ["final_logit_softcapping"]), ("cohere", ["logit_scale"]),
                                        ("granite", ["logit_scale"]), ("llama_bias", ["strong_bias", "weak_bias"])])
def test_logit_transform_families(kind, needs, make_args, rooms_chat):
    """Gemma-2 (soft-cap), Cohere (logit_scale), Granite (1/logits_scaling) and a biased LM head train on the exact
    mixed CE of their own logits where the kernels take the transform; until then they are refused at construction,
    naming the missing kernel argument (never trained on other logits)."""
    _, tok = tiny_model("llama")
    strong, weak = _family(kind, 0, tok), _family(kind, 1, tok)
    data = rooms_chat.select(range(2))
    if not _kernels_take(needs):
        with pytest.raises(NotImplementedError, match=needs[0]):
            WMSSTrainer(strong, make_args(), weak_model=weak, train_dataset=data, processing_class=tok)
        return
    trainer = WMSSTrainer(strong, make_args(max_steps=1, per_device_train_batch_size=2), weak_model=weak,
                          train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer._full_train_dataset[i] for i in range(2)])
    with torch.no_grad():
        out = trainer.joint_model(**batch)
        zs = strong(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        zw = weak(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    target = batch["labels"][:, 1:]
    keep = target != -100
    logp = torch.log_softmax(0.5 * zs + 0.5 * zw, -1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    # float32 model and kernels against float64 log-softmax of the same float32 logits: ~(32 + V) * 2^-24 relative
    assert out.mixed_ce_sum.item() == pytest.approx(-logp[keep].sum().item(), rel=1e-4)
    trainer.train()


def test_bias_head_strong_alone_is_exact(make_args, rooms_chat):
    """At λ = 1 (the strong model alone) a biased head already runs through the kernels' bias argument."""
    _, tok = tiny_model("llama")
    strong, weak = _family("llama_bias", 0, tok), _family("llama_bias", 1, tok)
    trainer = WMSSTrainer(strong, make_args(mix_lambda=1.0), weak_model=weak,
                          train_dataset=rooms_chat.select(range(2)), processing_class=tok)
    batch = trainer.data_collator([trainer._full_train_dataset[i] for i in range(2)])
    with torch.no_grad():
        out = trainer.joint_model(**batch)
        z = strong(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    target = batch["labels"][:, 1:]
    keep = target != -100
    nll = -torch.log_softmax(z, -1).gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)[keep].sum()
    assert out.strong_nll_sum.item() == pytest.approx(nll.item(), rel=1e-4)
    hits = ((z.argmax(-1) == target) & keep).sum().item()
    assert out.strong_top1_sum.item() == hits
