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


def test_empty_distillation_keeps_the_strategy_and_its_version(scripted_teacher, tmp_path):
    """Issue 15, defect 8: a rejected distillation keeps the strategy AND its version (the report said v2 for the
    text of v0); the attempt is logged in distillations.jsonl, and a rerun does not ask it again."""
    result = _loop(scripted_teacher(empty_distill=True), tmp_path).run(_problems(8))
    assert result.strategy == result.strategies[0]["text"] and result.strategy_version == 0
    assert [s["version"] for s in result.strategies] == [0] and not (tmp_path / "strategies" / "v001.txt").exists()
    attempts = [json.loads(x) for x in (tmp_path / "distillations.jsonl").read_text().splitlines()]
    assert [(a["after_batch"], a["accepted"], a["source"]) for a in attempts] == [
        (2, False, "kept (no usable distillation)")]
    assert result.metrics[-1]["teacher/distillations"] == 1 and result.metrics[-1]["teacher/strategies_accepted"] == 0
    again = scripted_teacher(empty_distill=True)
    _loop(again, tmp_path).run(_problems(8))
    assert again.calls == []


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


class _Renamed:
    """The scripted teacher under another name (another model behind the same code)."""

    def __init__(self, teacher, name):
        self.teacher, self.name = teacher, name

    def generate(self, conversations, **sampling):
        return self.teacher.generate(conversations, **sampling)


@pytest.mark.parametrize("change, named", [
    ({"teacher": "other-model"}, "teacher: saved 'scripted', now 'other-model'"),
    ({"temperature": 0.7, "seed": 1}, "temperature: saved 0.0, now 0.7"),
    ({"solve_max_new_tokens": 64}, "solve_max_new_tokens: saved 512, now 64"),
    ({"reflect_max_new_tokens": 64}, "reflect_max_new_tokens: saved 512, now 64"),
    ({"distill_max_new_tokens": 64}, "distill_max_new_tokens: saved 384, now 64"),
    ({"journal_examples": 1}, "journal_examples: saved 3, now 1"),
    ({"problems": 8}, "problems: saved"),
])
def test_resume_refuses_another_identity_naming_the_differences(scripted_teacher, tmp_path, change, named):
    """Issue 15, defect 2: a rerun with another teacher, temperature or token budget silently continued the old
    loop. Now it is refused with the differences and the flag to start afresh named; nothing is asked or written."""
    from weakstrong.lrl.loop import LoopIdentityError

    _loop(scripted_teacher(), tmp_path).run(_problems(4))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    change = dict(change)
    teacher = scripted_teacher()
    if "teacher" in change:
        teacher = _Renamed(teacher, change.pop("teacher"))
    problems = TASK.generate(4, seed=change.pop("problems")) if "problems" in change else _problems(4)
    with pytest.raises(LoopIdentityError, match="made with other settings") as err:
        _loop(teacher, tmp_path, **change).run(problems)
    assert named in str(err.value) and "--restart_teacher_loop" in str(err.value)
    assert getattr(teacher, "teacher", teacher).calls == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    with pytest.raises(FileExistsError, match="resume=True"):
        _loop(scripted_teacher(), tmp_path, resume=False).run(_problems(4))


def test_restart_moves_the_old_loop_aside(scripted_teacher, tmp_path):
    run = tmp_path / "teacher"
    _loop(scripted_teacher(), run).run(_problems(4))
    old_journal = (run / "journal.md").read_text()
    fresh = scripted_teacher()
    _loop(_Renamed(fresh, "other-model"), run, restart=True).run(_problems(4))
    assert len(fresh.calls) == 4 + 1 + 1  # everything asked again
    assert json.loads((run / "meta.json").read_text())["teacher"] == "other-model"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("teacher.replaced-")]
    assert len(aside) == 1 and (aside[0] / "journal.md").read_text() == old_journal


def test_an_endpoint_teacher_is_identified_by_its_model_not_its_address(openai_servers, tmp_path):
    from weakstrong.lrl.loop import LoopIdentityError

    a, b = openai_servers
    _loop(OpenAICompatibleChat(a.base_url, "m", cache_dir=None), tmp_path).run(_problems(4))
    # the same model behind another address (or more replicas) resumes: nothing is asked again
    _loop(OpenAICompatibleChat([b.base_url, a.base_url], "m", cache_dir=None), tmp_path).run(_problems(4))
    assert len(b.requests) == 0
    with pytest.raises(LoopIdentityError, match="teacher: saved 'openai:m', now 'openai:other'"):
        _loop(OpenAICompatibleChat(a.base_url, "other", cache_dir=None), tmp_path).run(_problems(4))


@pytest.mark.parametrize("damage, match", [
    (("meta.json", b'{"format": 1, "task"'), r"meta\.json is not valid JSON"),
    (("results.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage\n"), r"results\.jsonl: line 1 is not UTF-8 text"),
    (("results.jsonl", b'{"index": 0, "problem": "x"}\n{"batch": 1}\n'), r"results\.jsonl: line 1 lacks \['batch'"),
    (("journal.jsonl", b'{"batch": 1, "n"\n{"batch": 2}\n'), r"journal\.jsonl: line 1 is not valid JSON"),
])
def test_damaged_loop_files_are_named_with_their_line(scripted_teacher, tmp_path, damage, match):
    """Issue 15, defect 8: a broken meta.json gave a bare JSONDecodeError, a binary results.jsonl a
    UnicodeDecodeError, a row without 'batch' a KeyError — none naming the file."""
    from weakstrong.lrl.store import LoopFileError

    _loop(scripted_teacher(), tmp_path).run(_problems(4))
    name, content = damage
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LoopFileError, match=match) as err:
        _loop(scripted_teacher(), tmp_path).run(_problems(4))
    assert str(tmp_path / name) in str(err.value) and "--restart_teacher_loop" in str(err.value)


def test_progress_is_shown_per_batch(scripted_teacher, tmp_path, capsys):
    """Issue 15, defect 3: with tqdm on, one line per batch (problems solved, accuracy so far, journal,
    distillations), also when the batch is read back from disk."""
    result = _loop(scripted_teacher(), tmp_path, progress=True).run(_problems())
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("LRL teacher batch")]
    assert [x.split(":")[0] for x in lines] == ["LRL teacher batch 1/3", "LRL teacher batch 2/3", "LRL teacher batch 3/3"]
    assert "12 problems solved" in lines[-1] and "journal 3 entries" in lines[-1] and "2 distillations" in lines[-1]
    acc = sum(r["correct"] for r in result.results) / 12
    assert f"accuracy so far {100 * acc:.1f}%" in lines[-1]
    m = result.metrics[-1]
    assert (m["teacher/problems_solved"], m["teacher/journal_entries"], m["teacher/distillations"]) == (12, 3, 2)
    _loop(scripted_teacher(), tmp_path, progress=True).run(_problems())
    assert "LRL teacher batch 2/3 (resumed from disk)" in capsys.readouterr().err


def test_sampled_teacher_requests_carry_their_own_seeds(openai_server, tmp_path):
    teacher = OpenAICompatibleChat(openai_server.base_url, "m", cache_dir=None)
    _loop(teacher, tmp_path, temperature=0.7, seed=3).run(_problems(8))
    seeds = [r["body"]["seed"] for r in openai_server.requests]
    assert len(seeds) == 8 + 2 + 1 and len(set(seeds)) == len(seeds)
    openai_server.requests.clear()
    _loop(teacher, tmp_path / "again", temperature=0.7, seed=3).run(_problems(8))
    assert sorted(r["body"]["seed"] for r in openai_server.requests) == sorted(seeds)  # reproducible


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
