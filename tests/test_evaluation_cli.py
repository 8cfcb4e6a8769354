import json

import pytest

from weakstrong.cli import main as cli_main
from weakstrong.evaluation import evaluate, generate_completions
from weakstrong.models import tiny_model
from weakstrong.tasks import ArithmeticTask, MeetingRoomsTask



def test_evaluate_scores_what_the_model_generates(monkeypatch):
    model, tok = tiny_model("llama")
    task = MeetingRoomsTask()
    ds = task.generate(6, seed=2)
    # Make the "model" answer every problem correctly except the first, by scripting generate_completions.
    answers = [f"Reasoning...\nAnswer: {'NO' if r['answer'] == 'YES' else 'YES'}" if i == 0 else f"Answer: {r['answer']}"
               for i, r in enumerate(ds)]
    seen = {}

    def scripted(model_, tok_, prompts, *args, **kwargs):
        seen["prompts"] = prompts
        return answers

    monkeypatch.setattr("weakstrong.evaluation.generate_completions", scripted)
    result = evaluate(model, tok, task, ds, strategy="Count overlaps.")
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["completions"] == answers
    # The model is conditioned through its chat template, with the strategy and the problem.
    assert all(p.startswith("<|im_start|>user\nStrategy:\nCount overlaps.") and p.endswith("<|im_start|>assistant\n")
               for p in seen["prompts"])


def test_generate_completions_is_batched_greedy_and_restores_state():
    model, tok = tiny_model("qwen2")
    model.train()
    tok.padding_side = "right"
    prompts = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "short", "a much longer prompt " * 3]
    one_by_one = [generate_completions(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    batched = generate_completions(model, tok, prompts, max_new_tokens=5, batch_size=3)
    assert batched == one_by_one  # left padding does not change greedy outputs
    assert model.training and tok.padding_side == "right"


def test_eval_cli_on_a_saved_model(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "scores.json"
    rc = cli_main(["eval", "--model", str(tiny_llama_dir), "--task", "arithmetic", "--n", "3",
                   "--max-new-tokens", "4", "--output", str(out)])
    assert rc == 0
    scores = json.loads(out.read_text())
    assert scores["n"] == 3 and len(scores["completions"]) == 3
    assert scores["accuracy"] == ArithmeticTask().score(ArithmeticTask().generate(3, seed=123),
                                                        scores["completions"])["accuracy"]
    assert "majority" in capsys.readouterr().out


def test_cli_without_command_prints_help(capsys):
    assert cli_main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_markdown_table_puts_accuracy_beside_its_baselines():
    from weakstrong.reporting import score_markdown

    task = MeetingRoomsTask()
    ds = task.generate(4, seed=0, difficulty="hard")  # 2 YES, 2 NO
    md = score_markdown({"always YES": task.score(ds, ["Answer: YES"] * 4)})
    header, sep, row = md.splitlines()
    assert header.startswith("| model / stage | n | acc % | bal. acc % | majority % | unparsed |")
    assert row == "| always YES | 4 | 50.0 | 50.0 | 50.0 | 0 | 50.0 |"


def test_evaluate_does_not_read_an_echoed_strategy_as_the_answer(monkeypatch):
    model, tok = tiny_model("llama")
    task = MeetingRoomsTask()
    ds = task.generate(4, seed=3, difficulty="hard")
    strategy = "Find the peak number of overlapping meetings. If it exceeds the rooms, end with the line Answer: NO"
    monkeypatch.setattr("weakstrong.evaluation.generate_completions", lambda *a, **k: [strategy] * len(ds))
    result = evaluate(model, tok, task, ds, strategy=strategy)
    assert result["unparseable"] == len(ds) and result["accuracy"] == 0.0
    assert evaluate(model, tok, task, ds)["unparseable"] == 0  # no strategy in the prompt: nothing is stripped
