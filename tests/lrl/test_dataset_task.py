"""A user's own verifiable problems (a local file, no Task subclass) through Linguistic RL end to end."""

from __future__ import annotations

import json
import re

from weakstrong.lrl import LinguisticRLConfig, LinguisticRLTrainer
from weakstrong.models import tiny_model
from weakstrong.tasks import DatasetTask


class HalfTeacher:
    """Answers "what is a/b + c/b" problems: right (as an unreduced fraction, which only an equivalence grader
    accepts) when a is even, wrong otherwise; fixed journal and strategy texts."""

    def __init__(self):
        self.calls = 0

    def generate(self, conversations, **sampling):
        out = []
        for conv in conversations:
            self.calls += 1
            content = conv[-1]["content"]
            if "journal entry" in content:
                out.append("1. Worked: adding numerators.\n2. Wrong: odd ones.\n3. Improve: add the numerators.")
            elif "improved strategy" in content:
                out.append("New strategy:\n1. Add the numerators over the common denominator.\n2. Box it.")
            else:
                a, c, b = map(int, re.search(r"\\frac\{(\d+)\}\{(\d+)\} \+ \\frac\{(\d+)\}", content).group(1, 3, 2))
                num = a + c if a % 2 == 0 else a + c + 1
                out.append(f"Adding the numerators over {b}.\nThe answer is $\\boxed{{\\frac{{{num}}}{{{b}}}}}$.")
        return out


def _write_problems(path, n=24):
    from fractions import Fraction

    with open(path, "w") as f:
        for i in range(n):
            a, c, b = i + 1, 2 * i + 3, 7 + i % 5
            gold = Fraction(a + c, b)
            final = str(gold.numerator) if gold.denominator == 1 else f"\\frac{{{gold.numerator}}}{{{gold.denominator}}}"
            f.write(json.dumps({"question": f"What is $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{b}}}$?",
                                "final": final}) + "\n")


def test_lrl_distils_a_strategy_on_the_users_own_problems(tmp_path):
    data = tmp_path / "mine.jsonl"
    _write_problems(data)
    task = DatasetTask(str(data), problem_column="question", answer_column="final", grader="math")
    train, test = task.train_test_split(test_size=6, seed=0)
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}
    teacher = HalfTeacher()
    model, tok = tiny_model()
    args = LinguisticRLConfig(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no",
                              logging_steps=1, disable_tqdm=True, per_device_train_batch_size=4, max_steps=2,
                              batch_size=6, distill_every=2, train_problems=len(train), test_problems=6,
                              evaluation_max_new_tokens=8, evaluation_batch_size=8, dataloader_num_workers=0,
                              gradient_checkpointing=False, balanced=False)
    out = LinguisticRLTrainer(model, teacher=teacher, task=task, args=args, processing_class=tok,
                              train_dataset=train, eval_dataset=test).train()
    loop = [json.loads(line) for line in (tmp_path / "out" / "teacher" / "results.jsonl").read_text().splitlines()]
    # graded by math-verify: unreduced fractions (e.g. 4/8 for 1/2) count when a is even, and only then
    for r in loop:
        a = int(re.search(r"\\frac\{(\d+)\}", r["problem"]).group(1))
        assert r["correct"] is (a % 2 == 0), r
    assert out["results"]["teacher + final strategy"]["n"] == 6
    assert "Add the numerators" in out["summary"]["strategy"]
    curriculum = [json.loads(line) for line in
                  (tmp_path / "out" / "curriculum" / "curriculum.jsonl").read_text().splitlines()]
    test_problems = {r["problem"] for r in test}
    assert curriculum and not {r["problem"] for r in curriculum} & test_problems
    assert all(r["prompt"][0]["content"].startswith("Strategy:\n") for r in curriculum)
    assert (tmp_path / "out" / "student" / "adapter_config.json").is_file()
