"""What a user of ``weakstrong lrl`` meets when the teacher is misnamed, hung or answers nonsense, and when a
rerun changes a setting of the saved teacher loop: one message naming the problem and the flag to change, exit 2,
no traceback (each case is a subprocess of the real command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

COMMON = ["--train_problems", "2", "--batch_size", "2", "--test_problems", "2", "--disable_tqdm", "true",
          "--teacher_cache_dir", "none"]


def lrl(tmp_path, *args, timeout=180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "WEAKSTRONG_CACHE": str(tmp_path / "cache")}
    env.pop("WEAKSTRONG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "weakstrong.cli", "lrl", "--output_dir", str(tmp_path / "out"),
                           *COMMON, *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr
    assert "\nweakstrong lrl: error: " in "\n" + proc.stderr, proc.stderr  # (warnings of other libraries may precede)
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def test_endpoint_without_scheme_is_not_loaded_as_a_local_model(tmp_path):
    proc = lrl(tmp_path, "--teacher", "127.0.0.1:18431/v1::M")
    assert_user_error(proc, "'127.0.0.1:18431/v1::M' looks like an endpoint without its scheme: did you mean "
                            "'http://127.0.0.1:18431/v1::M'?")


def test_a_teacher_that_never_answers_is_reported_while_waiting_and_fails_early(tmp_path, silent_server):
    url, _ = silent_server
    start = time.monotonic()
    proc = lrl(tmp_path, "--teacher", f"{url}::m", "--teacher_read_timeout", "1.5",
               "--teacher_first_reply_deadline", "3")
    took = time.monotonic() - start
    assert_user_error(proc, f"{url} (model 'm') never answered", "--teacher_first_reply_deadline (now 3 s",
                      "The teacher loop's completed batches are kept")
    assert re.search(re.escape(f"waiting for {url}/chat/completions (no reply for ") + r"\d\.\d s; nothing has come "
                     r"back from it yet in this run; this attempt gives up after \d\.\d s\)", proc.stderr), proc.stderr
    assert "simulation" not in proc.stderr
    assert took < 120, took  # 3 s of waiting (plus start-up), not the 600 s deadline of a server that answered


def test_null_content_then_a_changed_rerun_name_the_server_and_the_flags(tmp_path, openai_server):
    openai_server.faults = ["null"] * 8
    teacher = f"{openai_server.base_url}::m"
    proc = lrl(tmp_path, "--teacher", teacher)
    assert_user_error(proc, f"{openai_server.base_url}/chat/completions (model 'm') answered with message content "
                            "None instead of text (finish_reason 'tool_calls'", "the request is not retried",
                      "The model answered with a tool call")
    # the saved loop (meta.json) was made greedy with 512 tokens: a rerun that changes them is refused, by flag
    proc = lrl(tmp_path, "--teacher", teacher, "--teacher_max_new_tokens", "64", "--teacher_temperature", "0.7")
    assert_user_error(proc, "--teacher_max_new_tokens: saved 512, now 64", "--teacher_temperature: saved 0.0, now 0.7")
    assert "solve_max_new_tokens" not in proc.stderr and "seed: saved" not in proc.stderr


def test_a_misspelled_recipe_key_is_refused_with_the_closest_setting(tmp_path):
    (tmp_path / "r.yaml").write_text("task: arithmetic\nteacher_temprature: 0.5\n")
    proc = lrl(tmp_path, "--config", str(tmp_path / "r.yaml"))
    assert_user_error(proc, "unknown key 'teacher_temprature' (did you mean 'teacher_temperature'?); valid keys: ")
    assert not (tmp_path / "out").exists()
