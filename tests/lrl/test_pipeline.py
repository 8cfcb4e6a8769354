"""Stages 2-4 and the whole pipeline: curriculum, student masking and learning, evaluation, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from weakstrong.lrl import (LinguisticRLConfig, LinguisticRLStudentTrainer, LinguisticRLTrainer, ReflectionLoop,
                            build_curriculum, evaluate, majority_baseline)
from weakstrong.models import tiny_model
from weakstrong.tasks import MeetingRoomsTask

TASK = MeetingRoomsTask()


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", logging_steps=1,
                disable_tqdm=True, per_device_train_batch_size=4, max_steps=2, batch_size=4, distill_every=2,
                train_problems=8, test_problems=6, evaluation_max_new_tokens=8, evaluation_batch_size=8,
                dataloader_num_workers=0, gradient_checkpointing=False)
    return LinguisticRLConfig(**{**base, **kw})


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("bad, match", [
    ({"batch_size": 0}, "batch_size"), ({"distill_every": 0}, "distill_every"),
    ({"journal_examples": -1}, "journal_examples"), ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"curriculum_completion": "cot"}, "curriculum_completion"), ({"faithful": True}, "balanced=False"),
    ({"curriculum_size": 0}, "curriculum_size"), ({"journal_tail_chars": 10}, "journal_tail_chars"),
])
def test_config_validates_with_the_fix_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **bad)


def test_config_defaults(tmp_path):
    cfg = LinguisticRLConfig(output_dir=str(tmp_path), report_to="none")
    assert (cfg.batch_size, cfg.distill_every, cfg.journal_examples, cfg.train_problems) == (10, 5, 5, 100)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])
    assert cfg.completion_only_loss is True and cfg.learning_rate == 2e-4 and cfg.bf16 is False
    assert "Parameters:" in LinguisticRLConfig.__doc__ and "distill_every" in LinguisticRLConfig.__doc__


# ------------------------------------------------------------------ curriculum
def _loop_results(scripted_teacher, tmp_path, n=24):
    return ReflectionLoop(scripted_teacher(), TASK, tmp_path / "t", batch_size=8, distill_every=2).run(
        TASK.generate(n, seed=3))


def test_curriculum_is_balanced_flagged_and_carries_the_strategy(scripted_teacher, tmp_path):
    loop = _loop_results(scripted_teacher, tmp_path)
    test = TASK.generate(30, seed=123)
    cur = build_curriculum(TASK, loop.results, loop.strategy, size=36, seed=1, strategy_version=loop.strategy_version,
                           exclude=[r["problem"] for r in test])
    rows = list(cur)
    assert len(rows) == 36
    cells = {}
    for r in rows:
        cells[(r["difficulty"], r["answer"])] = cells.get((r["difficulty"], r["answer"]), 0) + 1
    assert set(cells.values()) == {6} and len(cells) == 6
    assert not {r["problem"] for r in rows} & {r["problem"] for r in test}
    by_problem = {r["problem"]: r for r in loop.results}
    for r in rows:
        user = r["prompt"][0]["content"]
        assert user == TASK.user_prompt(r["problem"], loop.strategy) and loop.strategy in user
        target = r["completion"][0]["content"]
        assert TASK.parse_answer(target) == r["answer"] and target.rstrip().endswith(f"Answer: {r['answer']}")
        source = by_problem.get(r["problem"])
        if r["rationale_source"] == "teacher":
            assert source["correct"] and target.startswith(source["completion"].strip()[:20])
        else:
            assert target == r["rationale"] and (source is None or not source["correct"])
    assert {r["rationale_source"] for r in rows} == {"teacher", "task"}
    only_task = build_curriculum(TASK, loop.results, loop.strategy, size=12, use_teacher_rationale=False)
    assert {r["rationale_source"] for r in only_task} == {"task"}
    answers = build_curriculum(TASK, [], loop.strategy, size=6, completion="answer")
    assert all(r["completion"][0]["content"] == f"Answer: {r['answer']}" for r in answers)


def test_student_loss_masks_prompt_and_strategy(scripted_teacher, tmp_path):
    model, tok = tiny_model()
    loop = _loop_results(scripted_teacher, tmp_path, n=8)
    cur = build_curriculum(TASK, loop.results, loop.strategy, size=6)
    trainer = LinguisticRLStudentTrainer(model, args=_cfg(tmp_path), train_dataset=cur, processing_class=tok)
    assert trainer.model.peft_config["default"].r == 8
    assert sorted(trainer.model.peft_config["default"].target_modules) == ["q_proj", "v_proj"]
    ex = trainer.train_dataset[0]
    labels, ids = ex["labels"], ex["input_ids"]
    first = next(i for i, lab in enumerate(labels) if lab != -100)
    assert all(lab == -100 for lab in labels[:first]) and all(lab != -100 for lab in labels[first:])
    prompt_text = tok.decode(ids[:first])
    assert loop.strategy.splitlines()[0] in prompt_text and "Rooms available" in prompt_text
    assert "Answer:" in tok.decode(ids[first:])
    # the pitfall switch: whole-sequence loss
    whole = LinguisticRLStudentTrainer(tiny_model()[0], args=_cfg(tmp_path, completion_only_loss=False),
                                       train_dataset=cur, processing_class=tok)
    assert all(lab != -100 for lab in whole.train_dataset[0]["labels"])


def _completion_nll(model, tok, rows) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
            logits = model(ids).logits[0, :-1]
            target = ids[0, 1:]
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")[len(p_ids) - 1:]
            total, count = total + nll.sum().item(), count + nll.numel()
    return total / count


def test_student_learns_the_curriculum(tmp_path):
    """Full fine-tuning of a tiny model on 8 worked rationales: completion NLL must fall by more than half, and
    greedy generations must start like a line of the worked rationales ("Sorted by start", "Most meetings",
    "Rooms:", "Answer:"), which a random model never does. Fails if masking or
    training is broken (e.g. every label masked, or the loss on the prompt instead of the completion)."""
    model, tok = tiny_model(seed=1)
    cur = build_curriculum(TASK, [], "1. Count the peak overlap.\n2. Compare with the rooms.", size=8, seed=5)
    before = _completion_nll(model, tok, list(cur))
    args = _cfg(tmp_path, use_peft=False, learning_rate=5e-3, max_steps=25, per_device_train_batch_size=8,
                warmup_steps=0, lr_scheduler_type="constant")
    trainer = LinguisticRLStudentTrainer(model, args=args, train_dataset=cur, processing_class=tok)
    trainer.train()
    after = _completion_nll(trainer.model, tok, list(cur))
    assert math.isfinite(after) and after < 0.5 * before, (before, after)
    entropy = [h["entropy"] for h in trainer.state.log_history if "entropy" in h]
    assert entropy and entropy[-1] < entropy[0]  # nats, over completion tokens only
    res = evaluate(trainer.model, TASK, list(cur), strategy="1. Count the peak overlap.\n2. Compare with the rooms.",
                   tokenizer=tok, max_new_tokens=3)
    lines = ("Sort", "Most", "Rooms", "Answer")
    assert sum(c.strip().startswith(lines) for c in res["completions"]) >= 6, res["completions"]


# ------------------------------------------------------------------ evaluation
def test_evaluate_teacher_path_and_majority(scripted_teacher):
    test = TASK.generate(12, seed=123)
    res = evaluate(scripted_teacher(), TASK, test, strategy="be careful")
    expected = [("YES" if r["rooms"] >= 2 else "NO") == r["answer"] for r in test]
    assert res["accuracy"] == pytest.approx(sum(expected) / 12) and res["unparseable"] == 0
    assert set(res) >= {"balanced_accuracy", "per_class_recall", "confusion", "per_difficulty", "majority_baseline"}
    maj = majority_baseline(TASK, test)
    assert maj["accuracy"] == maj["majority_baseline"] and maj["balanced_accuracy"] == 0.5


# ------------------------------------------------------------------ end to end
class _Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_pipeline_end_to_end_tiny(scripted_teacher, tmp_path):
    model, tok = tiny_model()
    teacher = scripted_teacher()
    recorder = _Recorder()
    trainer = LinguisticRLTrainer(model, teacher=teacher, task=TASK, args=_cfg(tmp_path), processing_class=tok,
                                  callbacks=[recorder])
    out = trainer.train()
    results = out["results"]
    assert list(results) == ["student before", "student after", "teacher, no strategy", "teacher + final strategy",
                             "always-majority"]
    for r in results.values():
        assert r["n"] == 6 and set(r["confusion"]) == {"YES", "NO"}
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["seeds"] == {"seed": 42, "data_seed": None, "train_seed": 42, "test_seed": 123,
                                "curriculum_seed": 999}
    assert summary["curriculum"]["labels"] == {"YES": 4, "NO": 4} or sum(summary["curriculum"]["labels"].values()) == 8
    assert "completions" not in summary["results"]["student after"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "always-majority" in md and "balanced acc." in md and summary["strategy"].splitlines()[0] in md
    assert (tmp_path / "out" / "teacher" / "journal.md").is_file()
    assert (tmp_path / "out" / "student" / "adapter_config.json").is_file()
    keys = {k for log in recorder.logs for k in log}
    assert {"teacher/accuracy", "teacher/train_accuracy", "eval/student_after/balanced_accuracy", "loss"} <= keys
    # a rerun resumes the teacher loop: the teacher is asked nothing for stage 1
    teacher2 = scripted_teacher()
    again = LinguisticRLTrainer(tiny_model()[0], teacher=teacher2, task=TASK, args=_cfg(tmp_path, evaluate_teacher=False),
                                processing_class=tok)
    again.train()
    assert teacher2.calls == []


@pytest.mark.embedded
def test_pipeline_end_to_end_embedded(tmp_path):
    from weakstrong.teachers import TransformersTeacher

    teacher = TransformersTeacher("default", batch_size=2)
    args = _cfg(tmp_path, batch_size=2, distill_every=1, train_problems=2, test_problems=2, curriculum_size=2,
                max_steps=1, per_device_train_batch_size=2, teacher_max_new_tokens=8, reflection_max_new_tokens=8,
                distill_max_new_tokens=8, evaluation_max_new_tokens=8, max_length=320)
    out = LinguisticRLTrainer("default", teacher=teacher, task=TASK, args=args).train()
    assert set(out["results"]) >= {"student before", "student after", "always-majority"}
    assert out["summary"]["teacher"] == "transformers:default"
    assert (tmp_path / "out" / "report.md").is_file()


def test_curriculum_drops_copied_strategy_lines_from_teacher_rationales():
    strategy = "1. Sort the meetings by start time.\n2. Count the most meetings in progress at once.\n3. Answer NO if it exceeds the rooms."
    old = "1. Sort the meetings by their start time please.\n2. Compare the peak with the number of rooms available."
    rows = TASK.generate(3, seed=11, difficulty="easy")
    results = []
    for r, completion in zip(rows, [
        f"{strategy}\nAnswer: {{a}}",                                   # only an echo + answer: not a rationale
        f"{old}\n[9-10] and [10-11] touch but do not overlap, peak 1.\nAnswer: {{a}}",   # echo of an older version
        "The two meetings overlap between 10 and 11, so the peak is 2.\nAnswer: {a}",    # genuine
    ]):
        results.append({**r, "completion": completion.replace("{a}", r["answer"]), "correct": True})
    cur = {row["problem"]: row for row in build_curriculum(TASK, results, strategy, balanced=False,
                                                           strategies=[old, strategy])}
    first, second, third = (cur[r["problem"]] for r in rows)
    assert first["rationale_source"] == "task" and first["completion"][0]["content"] == rows[0]["rationale"]
    assert second["rationale_source"] == "teacher"
    text = second["completion"][0]["content"]
    assert old.splitlines()[0] not in text and text.startswith("[9-10] and [10-11]")
    assert third["completion"][0]["content"] == results[2]["completion"]
    # by default only the final strategy counts as an echo
    default = {row["problem"]: row for row in build_curriculum(TASK, results, strategy, balanced=False)}
    assert default[rows[1]["problem"]]["completion"][0]["content"].startswith(old.splitlines()[0])
