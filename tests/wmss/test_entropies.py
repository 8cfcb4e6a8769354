"""Per-example entropies: the shift, the completion mask, batching, raw vs tokenized rows, errors."""

import numpy as np
import pytest
import torch

from weakstrong.wmss import example_entropies
from weakstrong.wmss.selection import tokenize_example


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
            ids = torch.tensor([r["input_ids"]])
            labels = torch.tensor(r["labels"])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            ent = -(logp.exp() * logp).sum(-1)  # [T]
            sup = labels[1:] != -100  # label t+1 supervised -> logits at t
            out.append(ent[:-1][sup].mean().item())
    return np.array(out)


def test_matches_reference_and_shift(tiny, rooms_chat):
    model, tok = tiny
    peaky(model)
    rows = [tokenize_example(tok, dict(r)) for r in rooms_chat.select(range(6))]
    got = example_entropies(model, rows, batch_size=4, pad_token_id=tok.pad_token_id)
    ref = reference_entropies(model, rows)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # one supervised token (the last): its entropy is read at the position before it, not at itself
    r = dict(rows[0])
    r["labels"] = [-100] * (len(r["labels"]) - 1) + [r["input_ids"][-1]]
    got1 = example_entropies(model, [r], pad_token_id=tok.pad_token_id)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([r["input_ids"]])).logits[0].double(), -1)
        ent = -(logp.exp() * logp).sum(-1)
    assert got1 == pytest.approx(ent[-2].item(), rel=1e-5)
    assert abs(ent[-1].item() - got1) > 1e-3  # the unshifted read (the official code's off-by-one) differs


def test_batch_size_and_raw_rows_agree(tiny, rooms_chat):
    model, tok = tiny
    data = rooms_chat.select(range(5))
    a = example_entropies(model, data, tokenizer=tok, batch_size=1)
    b = example_entropies(model, data, tokenizer=tok, batch_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert a.shape == (5,) and (a > 0).all()


def test_only_completion_tokens_count(tiny, rooms_chat):
    model, tok = tiny
    peaky(model)
    r = tokenize_example(tok, dict(rooms_chat[0]))
    n_prompt = sum(1 for x in r["labels"] if x == -100)
    assert 0 < n_prompt < len(r["labels"])
    # changing the prompt-part labels' values must not matter once they are masked; unmasking them must
    full = {"input_ids": r["input_ids"], "labels": list(r["input_ids"])}
    h = example_entropies(model, [r, full], pad_token_id=tok.pad_token_id)
    assert abs(h[0] - h[1]) > 1e-4


def test_no_supervised_tokens_names_rows(tiny):
    model, tok = tiny
    ok = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}
    bad = {"input_ids": [5, 6, 7], "labels": [5, -100, -100]}  # only position 0, which nothing predicts
    with pytest.raises(ValueError, match=r"rows 1, 2.*max_length"):
        example_entropies(model, [ok, bad, bad], pad_token_id=0)
