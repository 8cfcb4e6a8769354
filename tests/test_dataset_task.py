"""DatasetTask: a local file or datasets folder as a Task (columns named by the user, a grader)."""

import json

import pytest

from weakstrong.cli import UserError
from weakstrong.grading import gsm8k_gold
from weakstrong.tasks import DatasetTask

ROWS = [{"q": f"What is {i}/2?", "a": f"\\frac{{{i}}}{{2}}", "level": "easy" if i % 2 else "hard"} for i in range(1, 11)]


@pytest.fixture(params=["jsonl", "parquet", "csv", "disk"])
def source(request, tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list(ROWS)
    kind = request.param
    path = tmp_path / ("data" if kind == "disk" else f"data.{kind}")
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "csv":
        ds.to_csv(str(path), index=False)
    else:
        ds.save_to_disk(str(path))
    return str(path)


def test_every_local_format_loads_the_same_problems(source):
    task = DatasetTask(source, problem_column="q", answer_column="a", difficulty_column="level")
    assert [r["problem"] for r in task.rows] == [r["q"] for r in ROWS]
    assert task.difficulties == ("easy", "hard")
    ds = task.generate(4, seed=1)
    assert len(ds) == 4 and len({r["problem"] for r in ds}) == 4
    assert ds[0]["prompt"][0]["content"].endswith("within \\boxed{}.")


def test_grading_counts_equivalent_forms_and_unparseable():
    task = DatasetTask(ROWS, problem_column="q", answer_column="a", grader="math")
    rows = task.rows[:3]  # 1/2, 2/2, 3/2
    completions = ["\\boxed{0.5}", "It is \\boxed{1}", "no idea"]
    score = task.score(rows, completions)
    assert score["correct"] == [True, True, False] and score["unparseable"] == 1
    assert score["grades"][2]["status"] == "unparseable"
    assert task.verify(rows[0], "The answer is $\\frac{2}{4}$") and not task.verify(rows[0], "\\boxed{0.3}")


def test_numeric_and_exact_graders_and_gold_function(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 1,004"}) + "\n"
                    + json.dumps({"question": "And now?", "answer": "#### 7"}) + "\n")
    task = DatasetTask(str(path), problem_column="question", grader="numeric", gold=gsm8k_gold)
    assert [r["answer"] for r in task.rows] == ["1004", "7"]
    assert task.score(task.rows, ["Answer: 1004", "Answer: 8"])["correct"] == [True, False]
    exact = DatasetTask([{"problem": "Capital of France?", "answer": "Paris"}], grader="exact")
    assert exact.verify(exact.rows[0], "Answer: paris")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no column 'question'.*--problem-column"):
        DatasetTask(ROWS, problem_column="question", answer_column="a")
    with pytest.raises(UserError, match="no such file"):
        DatasetTask(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported file type"):
        DatasetTask(str(tmp_path / "x.txt"))
    with pytest.raises(UserError, match="unknown grader"):
        DatasetTask(ROWS, problem_column="q", answer_column="a", grader="fuzzy")
    task = DatasetTask(ROWS, problem_column="q", answer_column="a")
    with pytest.raises(UserError, match="11 problems asked for, the dataset has 10"):
        task.generate(11)


def test_train_test_split_is_disjoint_and_seeded():
    task = DatasetTask(ROWS, problem_column="q", answer_column="a")
    train, test = task.train_test_split(3, seed=5)
    assert len(train) == 7 and len(test) == 3
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}
    assert list(task.train_test_split(3, seed=5)[1]["problem"]) == list(test["problem"])
