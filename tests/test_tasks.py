import random
import re
from collections import Counter

import pytest

from weakstrong.tasks import ArithmeticTask, MeetingRoomsTask, get_task, peak_concurrency, schedulable


def brute_force_schedulable(meetings, rooms):
    """Independent check: count meetings in progress at every integer time point (intervals [s, e))."""
    lo, hi = min(s for s, _ in meetings), max(e for _, e in meetings)
    return all(sum(s <= t < e for s, e in meetings) <= rooms for t in range(lo, hi))


def test_ground_truth_matches_brute_force_on_thousands_of_problems():
    rng = random.Random(7)
    for _ in range(5000):
        k = rng.randint(1, 8)
        meetings = []
        for _ in range(k):
            s = rng.randint(0, 12)
            meetings.append((s, s + rng.randint(1, 5)))
        rooms = rng.randint(1, 5)
        assert schedulable(meetings, rooms) == brute_force_schedulable(meetings, rooms), (meetings, rooms)


def test_back_to_back_meetings_do_not_conflict():
    assert peak_concurrency([(9, 10), (10, 11), (11, 12)])[0] == 1
    assert schedulable([(9, 10), (10, 11)], rooms=1)
    assert not schedulable([(9, 11), (10, 11)], rooms=1)


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_balanced_labels_per_difficulty_including_easy(difficulty):
    ds = MeetingRoomsTask().generate(600, seed=3, difficulty=difficulty)
    share_yes = sum(r["answer"] == "YES" for r in ds) / len(ds)
    assert abs(share_yes - 0.5) <= 0.02


def test_default_generation_is_balanced_across_all_tiers():
    ds = MeetingRoomsTask().generate(300, seed=11)
    counts = Counter((r["difficulty"], r["answer"]) for r in ds)
    assert counts == {(d, a): 50 for d in ("easy", "medium", "hard") for a in ("YES", "NO")}


def test_faithful_generator_reproduces_the_always_yes_easy_tier():
    ds = MeetingRoomsTask().generate(300, seed=123, faithful=True)
    easy = [r["answer"] for r in ds if r["difficulty"] == "easy"]
    assert easy and set(easy) == {"YES"}
    assert sum(r["answer"] == "YES" for r in ds) / len(ds) > 0.75  # the majority-class trap
    for r in ds:
        assert 9 <= min(s for s, _ in r["meetings"]) and max(e - s for s, e in r["meetings"]) <= 3


def test_rows_carry_structure_and_the_answer_is_the_ground_truth():
    task = MeetingRoomsTask()
    for r in task.generate(60, seed=5):
        assert r["answer"] == ("YES" if schedulable(r["meetings"], r["rooms"]) else "NO")
        assert r["difficulty"] in task.difficulties
        assert task.parse_answer(r["rationale"]) == r["answer"]
        assert r["rationale"].strip().endswith(f"Answer: {r['answer']}")


@pytest.mark.parametrize("task_cls", [MeetingRoomsTask, ArithmeticTask])
def test_generation_is_reproducible_by_seed(task_cls):
    a = task_cls().generate(30, seed=9).to_list()
    b = task_cls().generate(30, seed=9).to_list()
    c = task_cls().generate(30, seed=10).to_list()
    assert a == b
    assert a != c


@pytest.mark.parametrize("fmt,columns", [("chat", {"prompt", "completion"}), ("text", {"prompt", "completion"}),
                                         ("messages", {"messages"})])
def test_dataset_formats_are_the_ones_trl_recognizes(fmt, columns):
    from trl.data_utils import is_conversational

    ds = MeetingRoomsTask().generate(4, seed=0, format=fmt)
    assert columns <= set(ds.column_names)
    assert not ({"prompt", "completion", "messages"} - columns) & set(ds.column_names)
    assert is_conversational(ds[0]) == (fmt != "text")


def test_bad_arguments_name_the_problem():
    task = MeetingRoomsTask()
    with pytest.raises(ValueError, match="difficulty must be one of"):
        task.generate(4, difficulty="extreme")
    with pytest.raises(ValueError, match="format must be one of"):
        task.generate(4, format="jsonl")
    with pytest.raises(ValueError, match="end > start"):
        task.make_row([[10, 9]], 1)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("chess")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Answer: YES", "YES"),
        ("answer: no.", "NO"),
        ("Answer: **NO**", "NO"),
        ("At first I thought NO. Re-checking: peak 2 <= 2.\nAnswer: YES", "YES"),
        ("Answer: NO\n...wait.\nAnswer: YES", "YES"),  # the FINAL answer line wins
        ("NO\nThe peak is 3 and there are 2 rooms.", "NO"),  # a line that is only the answer
        ("The peak is 2.\n**YES**.", "YES"),
        ("Answer:\nYES", "YES"),
        ("So the answer is NO.", "NO"),
        ("Final answer: **YES** (peak 2 <= 2 rooms)", "YES"),
        ("Answer: YES, no meeting overlaps.", "YES"),
        # prose that states no answer is unparseable, never the last yes/no word (issue 15, defect 1)
        ("They all fit, so yes", None),
        ("there is no conflict", None),
        ("Yes, they fit. No meeting overlaps", None),
        ("I cannot say yes or no", None),
        ("I cannot say whether the answer is yes or no", None),
        ("Answer: YES or NO", None),
        ("Answer: maybe. I think not... NO", None),  # the LAST statement decides, and it states no answer
        ("Answer: YES\nHmm, checking again.\nAnswer: unsure", None),
        ("I cannot tell.", None),
        ("", None),
        ("YESTERDAY was busy", None),
    ],
)
def test_meeting_rooms_parses_the_final_answer(text, expected):
    assert MeetingRoomsTask().parse_answer(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("12 + 3 = 15\nAnswer: 15", "15"), ("Answer: 1,234", "1234"), ("Answer: 7\nAnswer: 8", "8"),
     ("no idea", None), ("Answer: -3", "-3"), ("The answer is 12 apples.", "12"), ("\\boxed{42}", "42"),
     ("12 + 3 = 15\n15", "15"), ("Answer: Ava has 15 now", "15"),
     # prose and alternatives are not answers
     ("so the total is 42.", None), ("12 + 3 = 15", None), ("Answer: 12 or 13", None),
     ("15\nThen she gives 3 away", None)],
)
def test_arithmetic_parses_the_final_answer(text, expected):
    assert ArithmeticTask().parse_answer(text) == expected


def test_arithmetic_rationales_are_correct_worked_solutions():
    task = ArithmeticTask()
    steps = Counter()
    for r in task.generate(300, seed=1):
        lines = r["rationale"].splitlines()
        steps[(r["difficulty"], len(lines) - 1)] += 1
        for line in lines[:-1]:
            for lhs, rhs in re.findall(r"(\d+ [-+*/] \d+) = (\d+)", line):
                a, op, b = lhs.split()
                assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                        "/": int(a) / int(b)}[op] == int(rhs), line
        assert task.parse_answer(r["rationale"]) == r["answer"]
        assert int(r["answer"]) >= 0
    assert {s for (d, s) in steps if d == "easy"} <= {1, 2}
    assert {s for (d, s) in steps if d == "hard"} <= {4, 5}


def test_score_hand_computed():
    task = MeetingRoomsTask()
    rows = [{"answer": "YES", "difficulty": "easy"}] * 3 + [{"answer": "NO", "difficulty": "hard"}]
    completions = ["Answer: YES", "Answer: NO", "gibberish", "Answer: NO"]
    s = task.score(rows, completions)
    assert s["n"] == 4
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["majority_baseline"] == pytest.approx(0.75)
    assert s["unparseable"] == 1
    assert s["per_class_recall"] == {"YES": pytest.approx(1 / 3), "NO": pytest.approx(1.0)}
    assert s["balanced_accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert s["confusion"] == {"YES": {"YES": 1, "NO": 1, "unparseable": 1}, "NO": {"NO": 1}}
    assert s["per_difficulty"] == {"easy": {"n": 3, "accuracy": pytest.approx(1 / 3)},
                                   "hard": {"n": 1, "accuracy": 1.0}}
    with pytest.raises(ValueError, match="4 rows but 3 completions"):
        task.score(rows, completions[:3])


def test_always_yes_scores_the_majority_baseline_on_the_faithful_set():
    task = MeetingRoomsTask()
    ds = task.generate(150, seed=123, faithful=True)
    s = task.score(ds, ["Answer: YES"] * len(ds))
    assert s["accuracy"] == pytest.approx(s["majority_baseline"])
    assert s["balanced_accuracy"] == pytest.approx(0.5)
    assert s["per_class_recall"]["NO"] == 0.0


def test_open_answer_scores_have_no_classification_keys():
    task = ArithmeticTask()
    ds = task.generate(6, seed=0)
    s = task.score(ds, [r["rationale"] for r in ds])
    assert s["accuracy"] == 1.0 and s["balanced_accuracy"] is None and s["confusion"] is None


STRATEGY = ("1. List the meetings and sort them by start time.\n"
            "2. Find the largest number of meetings in progress at the same moment.\n"
            "3. Answer YES if it is at most the number of rooms, otherwise NO.")


STRATEGY_WITH_ANSWER = STRATEGY + "\n4. If the peak exceeds the rooms, end with the line Answer: NO"


@pytest.mark.parametrize("text, expected", [
    # a pure echo of the strategy (list markers, case and spacing changed) is no answer
    ("List the meetings and sort them by start time\n  answer yes if it is at most the number of rooms,  otherwise no.",
     None),
    # the model's own final answer after an echo is read
    ("Answer YES if it is at most the number of rooms, otherwise NO.\nThe peak is 2 and there are 3 rooms.\nAnswer: YES",
     "YES"),
    # a short genuine final line is never dropped, even though its words occur in the strategy
    ("3. Answer YES if it is at most the number of rooms, otherwise NO.\nAnswer: NO", "NO"),
    # a copied strategy line that holds an answer statement is not the model's answer
    ("4. If the peak exceeds the rooms, end with the line Answer: NO", None),
])
def test_an_echoed_strategy_is_not_an_answer(text, expected):
    task = MeetingRoomsTask()
    assert task.parse_answer(text, echo=STRATEGY_WITH_ANSWER) == expected


def test_score_and_verify_take_the_echo():
    task = MeetingRoomsTask()
    rows = [{"answer": "NO", "difficulty": "easy"}, {"answer": "YES", "difficulty": "easy"}]
    echo_only = "4. If the peak exceeds the rooms, end with the line Answer: NO"
    completions = [echo_only, echo_only + "\nPeak 1, rooms 2.\nAnswer: YES"]
    assert task.score(rows, completions)["accuracy"] == 1.0  # without the echo, the copy reads as NO: "right"
    scored = task.score(rows, completions, echo=STRATEGY_WITH_ANSWER)
    assert scored["unparseable"] == 1 and scored["accuracy"] == 0.5 and scored["confusion"]["NO"] == {"unparseable": 1}
    assert not task.verify(rows[0], echo_only, echo=STRATEGY_WITH_ANSWER) and task.verify(rows[0], echo_only)


def test_a_truncated_copy_of_the_strategy_is_never_an_answer():
    """Issue 15, defect 1: with a 48-token budget the embedded teacher's replies were the strategy cut off at
    "4. Answer YES if it is" (19 characters once cleaned, under the old 20-character copy threshold): read as YES,
    they made a fake 62.5% teacher accuracy. A copy is recognised by its verbatim run of words, however short the
    last line is, and also when it is the whole reply."""
    from weakstrong.lrl.prompts import initial_strategy

    task = MeetingRoomsTask()
    strategy = initial_strategy(task)
    from weakstrong.tasks.base import strip_echo

    cut = strategy[: strategy.index("4. Answer YES if it is") + len("4. Answer YES if it is")]
    for text in (cut, "4. Answer YES if it is", "Answer YES if it is at", "4. Answer YES if it i",
                 "3. Compare that number with the rooms available.\n4. Answer"):
        assert task.parse_answer(text, echo=strategy) is None, text
        assert strip_echo(text, task.instruction, strategy).strip() == "", text
    # the model's own short answer after the copy still counts, and genuine reasoning lines stay
    assert task.parse_answer(cut + "\nPeak 3 > 2 rooms.\nAnswer: NO", echo=strategy) == "NO"
    assert strip_echo(cut + "\nThe peak is 3 at time 10, so it is more than the rooms.", strategy) == \
        "The peak is 3 at time 10, so it is more than the rooms."


def test_a_copied_instruction_is_not_an_answer():
    """What the embedded 135M teacher wrote for 9 of 20 problems: the task's instruction, first word changed and cut
    off after "'Answer: YES' or" — read as YES before copies of the instruction were ignored."""
    task = MeetingRoomsTask()
    copied = ("The meeting ending at time T does not conflict with one starting at T. Reason step by step, then give "
              "the final answer on a last line 'Answer: YES' or '")
    assert task.parse_answer(copied) is None
    assert task.parse_answer(f"{STRATEGY}\n\n{copied}", echo=STRATEGY) is None
    assert task.parse_answer(f"{copied}\nPeak 3 > 2 rooms.\nAnswer: NO") == "NO"
    # a genuine line that shares a few words with the instruction is kept
    assert task.parse_answer("At time 10 the meeting ending frees a room, so the answer is YES") == "YES"


def test_is_copy_needs_most_of_the_line_in_one_run():
    from weakstrong.tasks.base import echo_source, is_copy

    source = echo_source("Find the largest number of meetings in progress at the same moment.")
    assert is_copy("2. find the LARGEST number of meetings in progress", source)
    assert is_copy("meetings in progress at", source)  # short, but a verbatim run of 4 words
    assert is_copy("We find the largest number of meetings in progress at the same time", source)  # ends differ
    assert not is_copy("the largest number is 3 at 10, above the 2 rooms we have", source)
    assert not is_copy("in progress", source)  # fewer than ECHO_RUN_WORDS words alone never count


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 11, 20, 37])
def test_labels_are_balanced_within_one_over_the_whole_set(n):
    """Issue 15, defect 7: an odd count per difficulty always got the extra YES (test_problems: 3 was all YES,
    always-majority 100%). The extra now alternates over the difficulties: the set is within ±1, and so is
    every difficulty."""
    rows = MeetingRoomsTask().generate_rows(n, seed=n)
    labels = Counter(r["answer"] for r in rows)
    assert abs(labels["YES"] - labels["NO"]) <= 1 and sum(labels.values()) == n
    for d in ("easy", "medium", "hard"):
        per = Counter(r["answer"] for r in rows if r["difficulty"] == d)
        assert abs(per["YES"] - per["NO"]) <= 1
    if n == 3:
        assert labels == {"YES": 2, "NO": 1}
