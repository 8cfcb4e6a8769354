"""Stage 1: the teacher loop — journal, strategies, bad input, durable files, resume after a crash."""

from __future__ import annotations

import json

import pytest

from weakstrong.backends import EndpointUnavailableError, OpenAICompatibleChat
from weakstrong.lrl import ReflectionLoop
from weakstrong.tasks import MeetingRoomsTask

TASK = MeetingRoomsTask()


def _problems(n=12):
    return TASK.generate(n, seed=7)


def _loop(teacher, path, **kw):
    return ReflectionLoop(teacher, TASK, path, **{"batch_size": 4, "distill_every": 2, "journal_examples": 3, **kw})


def test_loop_writes_journal_strategies_and_results(scripted_teacher, tmp_path):
    teacher = scripted_teacher()
    logged = []
    result = _loop(teacher, tmp_path, log=logged.append).run(_problems())
    # 3 batches: journal entries 1..3, strategies v0 (initial), v1 after batch 2, v2 after the last batch
    assert [e["batch"] for e in result.entries] == [1, 2, 3]
    assert [(s["version"], s["after_batch"]) for s in result.strategies] == [(0, 0), (1, 2), (2, 3)]
    assert result.strategy.startswith("1. Sort meetings") and result.strategy_version == 2
    assert len(result.results) == 12 and 0 < result.accuracy < 1
    assert [m["teacher/batch"] for m in logged] == [1, 2, 3]
    # the strategy, never the journal, enters the solve prompt; batch 3 was solved with v1
    solves = [c for c in teacher.calls if "journal entry" not in c and "improved strategy" not in c]
    assert len(solves) == 12 and all("=== BATCH" not in c for c in solves)
    assert "Count the peak overlap" in solves[-1] and "Count the peak overlap" not in solves[0]
    assert [r["strategy_version"] for r in result.results] == [0] * 8 + [1] * 4
    # files on disk
    md = (tmp_path / "journal.md").read_text()
    assert md.count("=== BATCH") == 3 and "Accuracy:" in md
    assert (tmp_path / "strategies" / "v002.txt").read_text().strip() == result.strategy
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 12


def test_reflection_prompt_shows_errors_first(scripted_teacher, tmp_path):
    teacher = scripted_teacher()
    result = _loop(teacher, tmp_path, journal_examples=2).run(_problems(4))
    reflection = next(c for c in teacher.calls if "journal entry" in c)
    n_wrong = sum(not r["correct"] for r in result.results)
    assert reflection.count("Example ") == 2
    shown = reflection.split("Results (errors first):")[1]
    assert shown.count("WRONG") == min(2, n_wrong)
    for question in ("What worked", "What went wrong", "edge cases", "improve the strategy"):
        assert question in reflection
    assert "true peak concurrency" in reflection


def test_unparseable_batch_is_recorded_and_loop_goes_on(scripted_teacher, tmp_path, caplog):
    result = _loop(scripted_teacher(garbage=True), tmp_path).run(_problems(8))
    assert len(result.entries) == 2 and result.accuracy == 0.0
    assert all("all_unparseable" in e["flags"] for e in result.entries)
    assert "none of the 4 answers had a parseable final answer" in result.journal
    assert "no parseable answer" in caplog.text


def test_empty_distillation_keeps_the_strategy(scripted_teacher, tmp_path):
    result = _loop(scripted_teacher(empty_distill=True), tmp_path).run(_problems(8))
    assert result.strategies[-1]["source"].startswith("kept")
    assert result.strategy == result.strategies[0]["text"]


@pytest.mark.parametrize("crash_after", [3, 5, 9, 14])
def test_resume_after_crash_gives_the_same_journal(scripted_teacher, tmp_path, crash_after):
    full = _loop(scripted_teacher(), tmp_path / "full").run(_problems())
    crashing = scripted_teacher(fail_after=crash_after)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _loop(crashing, tmp_path / "resumed").run(_problems())
    rerun = scripted_teacher()
    resumed = _loop(rerun, tmp_path / "resumed").run(_problems())
    assert resumed.journal == full.journal
    assert (tmp_path / "resumed" / "journal.md").read_text() == (tmp_path / "full" / "journal.md").read_text()
    assert [s["text"] for s in resumed.strategies] == [s["text"] for s in full.strategies]
    assert [r["completion"] for r in resumed.results] == [r["completion"] for r in full.results]
    # what was answered before the crash (whole steps) is not asked again: the rerun asks at most the
    # unfinished step again (a solve batch of 4 at most) on top of what the crash left to do
    assert len(rerun.calls) <= len(teacher_calls_total(full)) - crash_after + 4
    completed_solves = [c for c in crashing.calls[: crash_after - crash_after % 5]]
    assert not set(rerun.calls) & set(completed_solves)
    # a second rerun asks nothing
    again = scripted_teacher()
    _loop(again, tmp_path / "resumed").run(_problems())
    assert again.calls == []


def teacher_calls_total(result):
    # 3 batches of 4 solves + 1 reflection each, and 2 distillations
    return [None] * (3 * 5 + 2)


def test_torn_last_line_is_repaired(scripted_teacher, tmp_path):
    full = _loop(scripted_teacher(), tmp_path / "a").run(_problems(8))
    with pytest.raises(RuntimeError):
        _loop(scripted_teacher(fail_after=6), tmp_path / "b").run(_problems(8))
    with open(tmp_path / "b" / "results.jsonl", "a") as f:
        f.write('{"batch": 2, "index": 0, "probl')  # a crash in the middle of an append
    resumed = _loop(scripted_teacher(), tmp_path / "b").run(_problems(8))
    assert resumed.journal == full.journal
    lines = (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(x) for x in lines)


def test_resume_refuses_different_problems(scripted_teacher, tmp_path):
    _loop(scripted_teacher(), tmp_path).run(_problems(4))
    with pytest.raises(ValueError, match="different.*problems.*new output_dir"):
        _loop(scripted_teacher(), tmp_path).run(TASK.generate(4, seed=8))
    with pytest.raises(FileExistsError, match="resume=True"):
        _loop(scripted_teacher(), tmp_path, resume=False).run(_problems(4))


def test_endpoint_down_is_a_clear_error_and_resume_point_is_kept(openai_server, tmp_path):
    sleeps = []
    teacher = OpenAICompatibleChat(openai_server.base_url, "m", cache_dir=tmp_path / "cache", max_retries=2,
                                   sleep=sleeps.append, concurrency=2)
    loop = _loop(teacher, tmp_path / "run")
    # batch 1 (4 solves + 1 reflection) succeeds, then the server keeps failing
    openai_server.faults = [None] * 5 + [503] * 30
    with pytest.raises(EndpointUnavailableError, match="failed 3 times.*rerun"):
        loop.run(_problems(8))
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "run" / "journal.jsonl").read_text())["batch"] == 1
    openai_server.faults = []
    before = len(openai_server.requests)
    result = _loop(teacher, tmp_path / "run").run(_problems(8))
    assert len(result.entries) == 2
    # only batch 2 (4 solves + reflection) and the distillation were asked
    assert len(openai_server.requests) - before == 6


def test_clean_strategy_drops_copied_instruction_and_loops():
    from weakstrong.lrl.prompts import clean_strategy

    parrot = ("The strategy is a short numbered list of concrete steps that fixes the mistakes in the journal and "
              "keeps what worked.")
    # what the embedded 135M teacher really replied (a paraphrase of the request, four times)
    assert clean_strategy("\n\n".join([parrot] * 4), 2000) is None
    assert clean_strategy("Strategy:\n\n", 2000) is None
    real = ("1. Sort the meetings by start time.\n2. Count the meetings in progress at each start.\n"
            "3. Count the meetings in progress at each start.\n4. Answer NO if the peak exceeds the rooms.")
    cleaned = clean_strategy(f"New strategy:\n{real}\n{parrot}", 2000)
    assert cleaned == ("1. Sort the meetings by start time.\n2. Count the meetings in progress at each start.\n"
                       "4. Answer NO if the peak exceeds the rooms.")
    # a short genuine line that shares words with the instruction stays
    assert clean_strategy("1. Keep what worked: sort by start.\n2. Fix the ties: ends free rooms.", 2000).count("\n") == 1


def test_copies_of_the_strategy_are_not_answers_and_never_enter_the_curriculum(scripted_teacher, tmp_path):
    """Issue 15, defect 1: every solve reply is the strategy cut off at "4. Answer YES if it is" (what the embedded
    teacher wrote with a 48-token budget). Read as YES, that made a fake 62.5% teacher accuracy and put copies in
    the curriculum as teacher-verified YES rationales. Now: all unparseable, accuracy 0, only task rationales."""
    from weakstrong.lrl import build_curriculum

    result = _loop(scripted_teacher(copy_strategy=True), tmp_path).run(_problems(8))
    assert all(r["completion"].endswith("4. Answer YES if it is") for r in result.results)
    assert all(r["parsed"] is None and not r["correct"] for r in result.results)
    assert result.accuracy == 0.0 and [e["unparseable"] for e in result.entries] == [4, 4]
    assert all("all_unparseable" in e["flags"] for e in result.entries)
    cur = build_curriculum(TASK, result.results, result.strategy, size=8, balanced=False,
                           strategies=[s["text"] for s in result.strategies])
    assert {r["rationale_source"] for r in cur} == {"task"}
    assert not any("4. Answer YES if it is" in r["completion"][0]["content"] for r in cur)
