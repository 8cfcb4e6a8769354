"""Per-example entropies from hidden states: the shift, the supervised mask, token-budget batching, padding-free
batches, errors (rows without supervised tokens, NaN weights)."""

import numpy as np
import pytest
import torch

from weakstrong.wmss import example_entropies
from weakstrong.wmss.selection import budget_batches


RTOL = 1e-10  # float64 throughout (test_matches_reference_and_shift)


def peaky(model):
    """A random tiny model is almost uniform (H ≈ ln V everywhere); sharpen it so positions differ."""
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


def reference_entropies(model, rows):
    """One example at a time, full logits: position t predicts token t+1."""
    out = []
    with torch.no_grad():
        for r in rows:
            logp = torch.log_softmax(model(torch.tensor([r["input_ids"]])).logits[0].double(), -1)
            ent = -(logp.exp() * logp).sum(-1)  # [T]
            sup = torch.tensor(r["labels"])[1:] != -100  # label t+1 supervised -> logits at t
            out.append(ent[:-1][sup].mean().item())
    return np.array(out)


def rows_of(tok, data):
    """input_ids + completion-only labels, as SFTTrainer prepares prompt/completion rows."""
    from weakstrong import WMSSConfig, WMSSTrainer
    from weakstrong.models import tiny_model

    strong, _ = tiny_model("llama", seed=3)
    weak, _ = tiny_model("llama", seed=4)
    tr = WMSSTrainer(strong, weak_model=weak, args=WMSSConfig("/tmp/unused-wmss", report_to="none", use_cpu=True),
                     train_dataset=data, processing_class=tok)
    return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in tr._full_train_dataset]


def test_matches_reference_and_shift(tiny, rooms_chat):
    # float64: the model and the hidden-state op (float64 in, float64 out) agree with the reference to ~1e-15 on any
    # CPU; a float32 computation anywhere on the path would show as ~1e-8
    model, tok = tiny
    model.double()
    peaky(model)
    rows = rows_of(tok, rooms_chat.select(range(6)))
    assert all(r["labels"][0] == -100 for r in rows)  # completion-only
    got = example_entropies(model, rows, batch_size=4, pad_token_id=tok.pad_token_id)
    np.testing.assert_allclose(got, reference_entropies(model, rows), rtol=RTOL, atol=0)
    # one supervised token (the last): its entropy is read at the position before it, not at itself
    r = dict(rows[0])
    r["labels"] = [-100] * (len(r["labels"]) - 1) + [r["input_ids"][-1]]
    got1 = example_entropies(model, [r], pad_token_id=tok.pad_token_id)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([r["input_ids"]])).logits[0].double(), -1)
        ent = -(logp.exp() * logp).sum(-1)
    assert got1 == pytest.approx(ent[-2].item(), rel=RTOL)
    assert abs(ent[-1].item() - got1) > 1e-3  # the unshifted read (the official code's off-by-one) differs


def test_token_budget_and_padding_free_agree(tiny, rooms_chat):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok = tiny
    model.double()  # float64: batching changes only the summation order
    peaky(model)
    rows = rows_of(tok, rooms_chat.select(range(5)))
    a = example_entropies(model, rows, batch_size=1, pad_token_id=tok.pad_token_id)
    b = example_entropies(model, rows, batch_size=5, max_tokens=10**6, pad_token_id=tok.pad_token_id)
    flat = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    c = example_entropies(model, rows, collator=flat, batch_size=5, max_tokens=10**6)
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)
    np.testing.assert_allclose(a, c, rtol=RTOL, atol=0)


def test_budget_batches():
    lengths = [10, 50, 20, 30, 40]
    got = budget_batches(lengths, batch_size=8, max_tokens=90)
    assert sorted(i for b in got for i in b) == list(range(5))
    for b in got:  # rows × longest within the budget, or a single row
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 90
    assert budget_batches(lengths, batch_size=2, max_tokens=10**6) == [[0, 2], [3, 4], [1]]
    assert budget_batches([500], batch_size=4, max_tokens=10) == [[0]]  # longer than the budget: alone


def test_only_supervised_tokens_count(tiny, rooms_chat):
    model, tok = tiny
    peaky(model)
    r = rows_of(tok, rooms_chat.select(range(1)))[0]
    full = {"input_ids": r["input_ids"], "labels": list(r["input_ids"])}  # every token supervised
    h = example_entropies(model, [r, full], pad_token_id=tok.pad_token_id)
    assert abs(h[0] - h[1]) > 1e-4


def test_no_supervised_tokens_names_rows(tiny):
    model, _ = tiny
    ok = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}
    bad = {"input_ids": [5, 6, 7], "labels": [5, -100, -100]}  # only position 0, which nothing predicts
    with pytest.raises(ValueError, match=r"rows 1, 2.*max_length"):
        example_entropies(model, [ok, bad, bad], pad_token_id=0)


def test_nan_logits_are_named(tiny):
    model, _ = tiny
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        example_entropies(model, [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}], pad_token_id=0)
