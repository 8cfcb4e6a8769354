"""The method lab's task, tokenizer and scorer (benchmarks/methods/lab): quick checks, no training."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks folder is not an installed package
    sys.path.insert(0, str(ROOT))
if importlib.util.find_spec("benchmarks.methods.lab") is None:  # pragma: no cover
    pytest.skip("benchmarks/ not importable", allow_module_level=True)

from benchmarks.methods.lab.model import lab_model  # noqa: E402
from benchmarks.methods.lab.scoring import encode, pack, score, unpack  # noqa: E402
from benchmarks.methods.lab.task import AdditionTask, char_tokenizer  # noqa: E402


def test_task_answers_and_disjoint_split():
    task = AdditionTask(3)
    assert task.prompt(47, 589) == "047+589=" and task.answer(47, 589) == "0636"
    assert task.carries(999, 1) == 3 and task.carries(123, 456) == 0
    train, test = task.split(500, 800, seed=1)
    train2, test2 = task.split(300, 800, seed=2)
    assert (test == test2).all()  # the held-out set does not depend on the training seed
    ids = lambda p: {int(a) * 1000 + int(b) for a, b in p}  # noqa: E731
    assert len(ids(train)) == 500 and len(ids(test)) == 800
    assert not ids(train) & ids(test) and not ids(train2) & ids(test)
    assert ids(train) != ids(train2)
    for a, b in train[:50]:
        assert int(task.answer(a, b)) == a + b
    with pytest.raises(ValueError, match="distinct problems"):
        AdditionTask(1).split(60, 50, seed=0)


def test_char_tokenizer_one_token_per_character():
    tok = char_tokenizer()
    text = "047+589=0636" + tok.eos_token
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 13 and ids[-1] == tok.eos_token_id
    assert len(set(ids[:12])) == len(set(text[:12]))
    assert tok.decode(ids, skip_special_tokens=True) == "047+589=0636"
    assert tok.pad_token_id == 0 and len(tok) == 15


def test_encoding_matches_sft_trainer(tmp_path):
    """The scorer sees exactly the tokens SFTTrainer trains on: same ids, the completion (+ EOS) supervised."""
    from trl import SFTConfig, SFTTrainer

    task, tok = AdditionTask(3), char_tokenizer()
    pairs, _ = task.split(8, 10, seed=0)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_length=64)
    trainer = SFTTrainer(lab_model(tok), args=args, train_dataset=task.dataset(pairs), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    enc = encode(task, tok, pairs)
    assert torch.equal(batch["input_ids"], enc.input_ids)
    supervised = batch["labels"] != -100
    assert supervised[:, : task.prompt_len].sum() == 0
    assert supervised[:, task.prompt_len:].all()


@pytest.mark.parametrize("seed", [0, 1])
def test_teacher_forced_score_equals_greedy_decoding(seed):
    """Greedy decoding agrees with the teacher-forced argmax up to and including the first wrong answer token, so
    'every teacher-forced argmax right' is 'greedy output = gold' (the scorer's claim)."""
    task, tok = AdditionTask(2), char_tokenizer()
    model = lab_model(tok, seed=seed)
    train, test = task.split(512, 64, seed=seed, test_seed=seed)
    # a few Adam steps, so that the model gets some answer prefixes right (a random model gets none)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = encode(task, tok, train).input_ids
    torch.manual_seed(seed)
    for _ in range(40):
        batch = data[torch.randint(0, len(data), (64,))]
        labels = batch.clone()
        labels[:, : task.prompt_len] = -100
        model(input_ids=batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    enc = encode(task, tok, test)
    result = score(model, enc)
    logits = model(input_ids=enc.input_ids[:, :-1]).logits[:, enc.prompt_len - 1:]
    tf = logits.argmax(-1)
    gold = enc.targets
    gen = model.generate(enc.input_ids[:, : enc.prompt_len], max_new_tokens=gold.shape[1], do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=None)[:, enc.prompt_len:]
    prefix_hits = 0
    for i in range(len(enc)):
        wrong = (tf[i] != gold[i]).nonzero()
        k = int(wrong[0]) if len(wrong) else gold.shape[1] - 1
        assert torch.equal(gen[i, : k + 1], tf[i, : k + 1]), i
        assert bool(result["correct"][i]) == torch.equal(gen[i], gold[i])
        prefix_hits += k
    assert prefix_hits > 0  # not vacuous: some problems have a right prefix


def test_logit_statistics_by_hand():
    task, tok = AdditionTask(2), char_tokenizer()
    model = lab_model(tok, seed=3).double()  # float64: batching (2 vs all) changes only the summation order
    _, test = task.split(0, 5, seed=0)
    enc = encode(task, tok, test)
    res = score(model, enc, batch_size=2)
    z = model(input_ids=enc.input_ids[:, :-1]).logits[:, enc.prompt_len - 1:].detach().double()
    y = enc.targets
    zt = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    other = z.scatter(-1, y.unsqueeze(-1), float("-inf"))
    p = z.softmax(-1)
    # the scorer rounds logits to float32 and sums them in float32 over the 15-token vocabulary or the 5 problems
    # (<= 2**4 terms): abs error <= 2**4 * 2**-24 * max|z| = 2**-20 * max|z|
    tol = dict(rel=0, abs=2.0**-20 * z.abs().max().item())
    assert res["target_logit"] == pytest.approx(zt.mean().item(), **tol)
    assert res["nontarget_logit_mean"] == pytest.approx(((z.sum(-1) - zt) / (z.shape[-1] - 1)).mean().item(), **tol)
    assert res["margin"] == pytest.approx((zt - other.max(-1).values).mean().item(), **tol)
    assert res["entropy"] == pytest.approx(-(p * p.log()).sum(-1).mean().item(), **tol)
    assert res["nll"] == pytest.approx(-(p.gather(-1, y.unsqueeze(-1)).log()).mean().item(), **tol)
    assert res["n"] == 5 and res["correct"].dtype == bool


def test_pack_roundtrip():
    bits = np.random.default_rng(0).random(4001) < 0.4
    assert (unpack(pack(bits), 4001) == bits).all()


def test_zero_head_weak_model_has_zero_logits(tmp_path):
    from benchmarks.methods.lab.arms import _zero_head

    tok = char_tokenizer()
    model = lab_model(tok, seed=0)
    model.save_pretrained(tmp_path / "m1")
    tok.save_pretrained(tmp_path / "m1")
    from transformers import AutoModelForCausalLM

    weak = AutoModelForCausalLM.from_pretrained(_zero_head(str(tmp_path / "m1"), str(tmp_path / "arm")))
    z = weak(input_ids=torch.tensor([[1, 2, 3, 4, 5]])).logits
    assert torch.count_nonzero(z) == 0
    # the rest of the model is M1's
    assert torch.equal(weak.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_reading_rule():
    from benchmarks.methods.lab.report import reading
    from weakstrong.stats import Interval

    def iv(lo, hi):
        return Interval((lo + hi) / 2, lo, hi, 10, 0.95, "t", 0.01)

    assert reading(iv(0.001, 0.02)) == "reproduced"
    assert reading(iv(-0.02, -0.001)) == "not reproduced (reversed)"
    assert reading(iv(-0.01, 0.004)).startswith("not reproduced (any gain <")
    assert reading(iv(-0.01, 0.02)) == "not resolved"
    assert reading(None) == "n/a"


def test_tiny_lab_run_new_arms(tmp_path):
    """Phase 1 + three arms on a tiny config: snapshots sharing a step are both kept (98% rounds to M1 here), and
    the temperature-only arm trains something else than plain SFT (a hook on the head's output would not: TRL
    computes its loss from the head's weight)."""
    from benchmarks.methods.lab.arms import run_arm
    from benchmarks.methods.lab.config import LabConfig

    cfg = LabConfig(n_train=64, n_test=128, phase1_epochs=4, budget_epochs=2, warmup_steps=2, phase1_eval_every=2)
    rows = {a: run_arm(cfg, 0, a, str(tmp_path), log=lambda *_: None)["row"] for a in ("sft_p3", "temp_only", "weak_w098")}
    assert (tmp_path / "seed0" / "phase1" / "w098").is_dir() and (tmp_path / "seed0" / "phase1" / "w100").is_dir()
    assert rows["temp_only"]["nll"] != rows["sft_p3"]["nll"]
    assert rows["temp_only"]["weak"] == "zero" and rows["weak_w098"]["weak"] == 0.98
    assert all(r["train_steps"] == cfg.budget_steps for r in rows.values())


def test_lab_on_a_pretrained_model_folder(tmp_path):
    """``LabConfig.model``: phase 1 starts from a saved model and its own tokenizer (the SmolLM2 stage's path), the
    snapshot at 0 is that model, and an arm whose snapshot is not kept says so."""
    from transformers import AutoModelForCausalLM

    from benchmarks.methods.lab.arms import run_arm
    from benchmarks.methods.lab.config import LabConfig

    tok = char_tokenizer()
    lab_model(tok, seed=5).save_pretrained(tmp_path / "m0")
    tok.save_pretrained(tmp_path / "m0")
    cfg = LabConfig(model=str(tmp_path / "m0"), n_train=32, n_test=64, probe_size=16, batch_size=16, phase1_epochs=2,
                    budget_epochs=1, warmup_steps=1, phase1_eval_every=1, snapshot_fractions=(0.0, 0.25, 1.0),
                    budget_points=(1.0,))
    work = tmp_path / "work"
    res = run_arm(cfg, 0, "weak_w000", str(work), log=lambda *_: None)
    assert res["row"]["train_steps"] == cfg.budget_steps and len(res["correct"]) == 64
    m0 = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "m0").named_parameters())
    w0 = AutoModelForCausalLM.from_pretrained(work / "seed0" / "phase1" / "w000")
    assert all(torch.equal(p, m0[n]) for n, p in w0.named_parameters())
    with pytest.raises(ValueError, match="snapshot at 0.5 of phase 1"):
        run_arm(cfg, 0, "weak_w050", str(work), log=lambda *_: None)


def test_lab_refuses_a_tokenizer_that_merges_digits(tiny_llama_dir, tmp_path):
    from benchmarks.methods.lab.config import LabConfig
    from benchmarks.methods.lab.phase1 import lab_data

    with pytest.raises(ValueError, match="each digit, '\\+' and '=' as one token"):
        lab_data(LabConfig(model=str(tiny_llama_dir), n_train=32, n_test=200), 0)


# ------------------------------------------------------------------ the reviewers' controls (issue 23)


def _few_steps(model, task, tok, train, steps=40, seed=0):
    """A few Adam steps, so that the model gets some answers (partly) right."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = encode(task, tok, train).input_ids
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (64,), generator=gen)]
        labels = batch.clone()
        labels[:, : task.prompt_len] = -100
        model(input_ids=batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_pass_at_k_unbiased_estimator_by_hand():
    from math import comb

    from benchmarks.methods.lab.scoring import pass_at_k_exact, pass_at_k_unbiased

    n = 16
    for c in range(n + 1):
        for k in (1, 4, 16):
            want = 1 - comb(n - c, k) / comb(n, k)
            assert pass_at_k_unbiased(n, [c], k)[0] == pytest.approx(want, abs=1e-12)
    assert pass_at_k_exact([0.0, 0.5, 1.0], 2).tolist() == [0.0, 0.75, 1.0]
    with pytest.raises(ValueError, match="at least k samples"):
        pass_at_k_unbiased(4, [1], 16)


def test_exact_pass_at_k_equals_sampling():
    """The scorer's pass@k (1 - (1-p)^k with p from one teacher-forced pass) is what the unbiased estimator over real
    samples converges to: they agree within 5 standard errors of the sampled estimate."""
    from benchmarks.methods.lab.scoring import pass_at_k_exact, pass_at_k_unbiased, pass_key, sample_correct

    task, tok = AdditionTask(2), char_tokenizer()
    train, test = task.split(512, 96, seed=0, test_seed=0)
    model = _few_steps(lab_model(tok, seed=0), task, tok, train, steps=60)
    enc = encode(task, tok, test)
    res = score(model, enc)
    n = 32
    for t in (1.0, 0.6):
        c = sample_correct(model, enc, n=n, temperature=t, seed=1)
        assert 0 < c.sum() < n * len(enc)  # not vacuous: some samples right, some wrong
        for k in (1, 4, 16):
            est = pass_at_k_unbiased(n, c, k)
            exact = res[pass_key(k, t)]
            # per problem, Var(U-statistic of order k over n samples) <= (k/n)·q(1-q), q = its mean (Hoeffding);
            # q from the sampled share c/n, q(1-q) floored at 1/n (a problem with c = 0 or n still counts); the
            # problems are independent, so the variances of the mean over problems add up
            q = pass_at_k_exact(c / n, k)
            se = np.sqrt(np.sum(k / n * np.maximum(q * (1 - q), 1 / n))) / len(enc)
            assert abs(est.mean() - exact) <= 5 * se, (t, k, est.mean(), exact, se)
    assert res[pass_key(1, 1.0)] <= res[pass_key(4, 1.0)] <= res[pass_key(16, 1.0)]


def test_shuffled_weak_logits_same_entropy_no_information():
    """Through the path WMSSTrainer takes (the weak backbone's hidden states times the head's weight, never the
    head's output), the shuffled weak model gives each token the same probabilities in another order: the same
    entropy, another content. Checked on the joint model's own statistics too."""
    from weakstrong.wmss.joint import JointModel
    from weakstrong.wmss.selection import causal_lm_parts, head_weight, supervised_hidden

    from benchmarks.methods.lab.weak import ShuffledLogitsLM

    task, tok = AdditionTask(2), char_tokenizer()
    train, test = task.split(256, 32, seed=0, test_seed=0)
    weak = _few_steps(lab_model(tok, seed=1), task, tok, train, steps=30).double()
    shuffled = ShuffledLogitsLM(weak, seed=0)
    ids = encode(task, tok, test).input_ids
    labels = ids.clone()
    labels[:, : task.prompt_len] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    _, head = causal_lm_parts(shuffled)
    with torch.no_grad():
        z_s = supervised_hidden(shuffled, batch) @ head_weight(head).T
        z = supervised_hidden(weak, batch) @ head_weight(weak.get_output_embeddings()).T
    assert z_s.shape == z.shape
    # a permutation per token: the same multiset of logits, so the same entropy (float64: exact up to rounding)
    assert torch.equal(z_s.sort(-1).values, z.sort(-1).values)

    def entropy(x):
        lp = x.log_softmax(-1)
        return -(lp.exp() * lp).sum(-1)

    assert torch.allclose(entropy(z_s), entropy(z), rtol=0, atol=1e-12)
    assert (z_s.argmax(-1) != z.argmax(-1)).double().mean() > 0.5  # the content is gone
    assert not torch.equal(shuffled.shuffle(z), shuffled.shuffle(z))  # a fresh permutation each time
    # the joint model (the loss WMSSTrainer trains) sees the same weak entropy and another weak NLL
    strong = lab_model(tok, seed=2).double()
    plain = JointModel(strong, weak, lam=0.5, freeze_weak=True)(**batch)
    mixed = JointModel(strong, shuffled, lam=0.5, freeze_weak=True)(**batch)
    assert mixed.weak_entropy_sum.item() == pytest.approx(plain.weak_entropy_sum.item(), rel=1e-9)
    assert abs(mixed.weak_nll_sum.item() - plain.weak_nll_sum.item()) > 1.0
    assert mixed.strong_nll_sum.item() == pytest.approx(plain.strong_nll_sum.item(), rel=1e-9)
    assert not any(p.requires_grad for p in shuffled.parameters())


def test_tiny_lab_run_control_arms(tmp_path):
    """The control arms on a tiny config: label smoothing changes what SFT trains, the shuffled and the
    entropy-matched weak models train through WMSSTrainer, the entropy match holds, sft_total runs phase 1 + the
    budget from M0, and every row carries pass@k."""
    from benchmarks.methods.lab.arms import ARMS, entropy_match_seed, run_arm
    from benchmarks.methods.lab.config import LabConfig

    cfg = LabConfig(n_train=64, n_test=128, phase1_epochs=4, budget_epochs=2, warmup_steps=2, phase1_eval_every=2)
    quiet = dict(log=lambda *_: None)
    ls = next(a for a in ARMS if a.startswith("sft_ls"))
    rows = {a: run_arm(cfg, 2, a, str(tmp_path), **quiet)["row"]
            for a in ("sft_p3", ls, "shuffled", "frozen", "entropy_matched", "sft_total")}
    assert rows[ls]["nll"] != rows["sft_p3"]["nll"] and rows[ls]["label_smoothing"] > 0
    assert rows["shuffled"]["weak"] == "shuffled 0.25" and rows["shuffled"]["nll"] != rows["frozen"]["nll"]
    # the same selection as the frozen arm (same weak entropies per token), another weak content
    assert rows["shuffled"]["entropy/weak"] == pytest.approx(rows["frozen"]["entropy/weak"], rel=1e-5)
    em = rows["entropy_matched"]
    assert em["em_source_seed"] == entropy_match_seed(2) == 3
    assert em["em_entropy_matched"] == pytest.approx(em["em_entropy_target"], abs=2e-4)
    assert em["em_kl_ref_matched"] > 0
    assert (tmp_path / "seed3" / "phase1" / "phase1.json").is_file()
    assert rows["sft_total"]["train_steps"] == cfg.phase1_steps + cfg.budget_steps
    for r in ("sft_p3", ls, "shuffled", "entropy_matched"):
        assert rows[r]["train_steps"] == cfg.budget_steps
    for r in rows.values():
        assert 0 <= r["pass@1_T1"] <= r["pass@4_T1"] <= r["pass@16_T1"] <= 1


def test_merge_only_the_named_arms(tmp_path):
    """``merge --arms``: rows of other arms in the source folder stay out (the controls fold in the claim test's
    rows of chosen arms)."""
    import csv
    import json
    import shutil
    import subprocess

    claim = ROOT / "benchmarks" / "methods" / "lab" / "results" / "claim"
    rows = list(csv.DictReader(open(claim / "rows.csv")))
    curves = list(csv.DictReader(open(claim / "curves.csv")))
    correct = [json.loads(line) for line in open(claim / "correct.jsonl")]
    from benchmarks.methods.lab.report import write_csv

    def folder(name, arms, seeds):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(claim / "lab_config.json", d / "lab_config.json")
        keep = lambda r: r["arm"] in arms and int(r["seed"]) in seeds  # noqa: E731
        write_csv(d / "rows.csv", [r for r in rows if keep(r)])
        write_csv(d / "curves.csv", [c for c in curves if keep(c)])
        (d / "correct.jsonl").write_text("".join(json.dumps(c) + "\n" for c in correct if keep(c)))
        return d

    out = folder("out", {"sft_p3"}, {0, 1})
    src = folder("src", {"wmss", "frozen", "sft_p3"}, {0, 1, 2})
    subprocess.run([sys.executable, "-m", "benchmarks.methods.lab", "merge", "--out", str(out), str(src), "--arms",
                    "wmss"], cwd=ROOT, check=True, capture_output=True, env={**__import__("os").environ,
                                                                             "MPLBACKEND": "Agg"})
    merged = {(r["arm"], int(r["seed"])) for r in csv.DictReader(open(out / "rows.csv"))}
    assert merged == {("sft_p3", 0), ("sft_p3", 1), ("wmss", 0), ("wmss", 1), ("wmss", 2)}
    assert {(c["arm"], c["seed"]) for c in map(json.loads, open(out / "correct.jsonl"))} == \
        {(a, s) for a, s in merged}
    assert "wmss − sft_p3" in (out / "report.md").read_text()
