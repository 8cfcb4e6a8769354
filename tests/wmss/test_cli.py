"""`weakstrong wmss` / recipes/wmss: the YAML recipe parses, and the chain runs from flags and writes its summary."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from weakstrong.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_parses():
    from weakstrong.wmss.cli import build_parser

    script, config, model = build_parser().parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "wmss" / "config.yaml"), "--bf16", "false", "--use_cpu", "true"])
    assert (script.rounds, script.sft_epochs, config.mix_lambda, config.num_train_epochs) == (1, 1, 0.5, 1)
    assert model.model_name_or_path == "default"


def test_cli_runs_the_chain(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    rc = cli_main(["wmss", "--model_name_or_path", str(tiny_llama_dir), "--task", "arithmetic", "--train_size", "8",
                   "--sft_max_steps", "2", "--max_steps", "2", "--rounds", "2", "--output_dir", str(out),
                   "--per_device_train_batch_size", "4", "--report_to", "none", "--bf16", "false", "--use_cpu",
                   "true", "--activation_checkpointing", "false", "--save_strategy", "no", "--logging_steps", "1",
                   "--final_dir", str(tmp_path / "final")])
    assert rc == 0
    summary = json.loads((out / "wmss_log_history.json").read_text())
    assert set(summary["stages"]) == {"m0", "sft", "round-1", "round-2"} and set(summary["selections"]) == {"1", "2"}
    assert len(summary["h_strong"]["1"]) == 8 and summary["layout"] == "two_models"
    assert summary["weak_trainable_params"] > 0
    kinds = ["wmss" if "mixed_ce" in h else "sft" for h in summary["log_history"] if "loss" in h]
    assert kinds == ["sft", "sft", "wmss", "wmss", "wmss", "wmss"]  # SFT, round 1, round 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "final")


# ------------------------------------------------------------------ issue 20: a rerun never retrains over a run
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def weakstrong(*argv, timeout=300) -> subprocess.CompletedProcess:
    """`weakstrong ARGV` in a new process, as a user runs it."""
    env = {k: v for k, v in ENV.items() if k not in ("WEAKSTRONG_DEBUG", "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-m", "weakstrong.cli", *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def small_run(model, out, *extra):
    return ["wmss", "--model_name_or_path", model, "--task", "arithmetic", "--train_size", "8", "--sft_max_steps",
            "1", "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm",
            "true", "--save_strategy", "steps", "--save_steps", "1", "--save_entropy_plots", "false", "--output_dir",
            out, *extra]


def test_a_rerun_resumes_or_refuses_and_never_retrains(tiny_llama_dir, tmp_path, capsys):
    """Issue 20, item 2: `weakstrong wmss` into an output_dir holding a run retrained over it (exit 0, a finished
    model replaced, old checkpoints left beside the new one). Now: the same command says "already finished" and
    trains nothing; other settings are refused (exit 2, each flag saved vs now); an interrupted run continues from
    its checkpoint; --resume false refuses; --restart true moves the old run aside and leaves no old checkpoint."""
    out = tmp_path / "run"
    first = weakstrong(*small_run(tiny_llama_dir, out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pin_memory" not in first.stderr and "FutureWarning" not in first.stderr  # item 6: no warnings
    model = out / "round-1" / "model.safetensors"
    weights, summary = model.read_bytes(), (out / "wmss_log_history.json").read_text()
    assert sorted(p.name for p in (out / "round-1").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    again = weakstrong(*small_run(tiny_llama_dir, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished (sft, round-1)" in again.stdout and "--restart true" in again.stdout
    assert "'loss'" not in again.stdout + again.stderr  # nothing trained
    assert model.read_bytes() == weights and (out / "wmss_log_history.json").read_text() == summary

    changed = weakstrong(*small_run(tiny_llama_dir, out, "--mix_lambda", "0.42", "--learning_rate", "1e-3"))
    assert changed.returncode == 2
    err = changed.stderr
    assert err.startswith("weakstrong wmss: error: ") and "Traceback" not in err, err[-3000:]
    assert "--mix_lambda: saved 0.5, now 0.42" in err and "--learning_rate: saved 2e-05, now 0.001" in err
    assert "--restart true" in err and model.read_bytes() == weights

    # an interrupted round 1 (killed after its first checkpoint): the same command continues it from there
    journal = json.loads((out / "wmss_run.json").read_text())
    del journal["stages"]["round-1"], journal["selections"]["round-1"]
    (out / "wmss_run.json").write_text(json.dumps(journal))
    import shutil

    shutil.rmtree(out / "round-1" / "checkpoint-2")
    assert cli_main(small_run(str(tiny_llama_dir), str(out))) == 0
    said = capsys.readouterr().out
    assert f"resuming the WMSS run in {out}: finished sft; round-1 continues from checkpoint-1" in said, said
    assert "round-1" in json.loads((out / "wmss_run.json").read_text())["stages"]

    assert cli_main(small_run(str(tiny_llama_dir), str(out), "--resume", "false")) == 2
    assert re.search(r"already holds a WMSS run and --resume false refuses", capsys.readouterr().err)

    weights = model.read_bytes()
    assert cli_main(small_run(str(tiny_llama_dir), str(out), "--restart", "true", "--max_steps", "1")) == 0
    said = capsys.readouterr().out
    aside = Path(re.search(r"was moved to (\S+);", said).group(1))
    assert (aside / "round-1" / "model.safetensors").read_bytes() == weights  # the old model is kept, aside
    assert (aside / "wmss_run.json").is_file() and (aside / "wmss_log_history.json").is_file()
    assert sorted(p.name for p in (out / "round-1").glob("checkpoint-*")) == ["checkpoint-1"]  # none of the old run
    assert json.loads((out / "wmss_run.json").read_text())["identity"]["training"]["max_steps"] == 1


def test_sft_epochs_0_means_m1_given_and_keeps_the_weak_model(tiny_llama_dir, tmp_path, capsys):
    """Issue 20, item 3: `--sft_epochs 0 --weak_model_name_or_path X --sft_max_steps 2` ran the SFT stage and
    dropped X ("weak_model": null). --sft_epochs 0 skips SFT (the model is M1, X is M0); a flag the chosen path
    would ignore is refused."""
    from weakstrong.models import tiny_model

    m0, tok = tiny_model("llama", seed=1)
    m0.save_pretrained(tmp_path / "m0")
    tok.save_pretrained(tmp_path / "m0")
    out = tmp_path / "run"
    base = ["wmss", "--model_name_or_path", str(tiny_llama_dir), "--task", "arithmetic", "--train_size", "8",
            "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
            "--output_dir", str(out)]
    assert cli_main([*base, "--sft_epochs", "0", "--weak_model_name_or_path", str(tmp_path / "m0"),
                     "--sft_max_steps", "2"]) == 2
    assert "--sft_epochs 0 skips the SFT stage, so --sft_max_steps would be ignored" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main([*base, "--sft_epochs", "0", "--weak_model_name_or_path", str(tmp_path / "m0")]) == 0
    identity = json.loads((out / "wmss_run.json").read_text())["identity"]
    assert (identity["sft"], identity["weak_model"], identity["sft_training"]) == (False, str(tmp_path / "m0"), None)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["round-1"]  # no SFT stage ran


@pytest.mark.parametrize("argv, message", [
    (["--sft_epochs", "0"], r"--sft_epochs 0 skips the SFT stage: then --model_name_or_path is M1 .* add "
                            r"--weak_model_name_or_path M0"),
    (["--sft_epochs", "0", "--weak_model_name_or_path", "MODEL", "--sft_learning_rate", "1e-4"],
     r"so --sft_learning_rate would be ignored"),
    (["--weak_model_name_or_path", "MODEL"], r"is only used with --sft_epochs 0"),
    (["--sft_epochs", "0", "--weak_model_name_or_path", "MODEL", "--use_peft", "true"], r"full fine-tuning only"),
    (["--sft_epochs", "-1"], r"--sft_epochs must be >= 0"),
    (["--rounds", "0"], r"--rounds must be an integer >= 1"),
    (["--lora_r", "8"], r"LoRA settings \(--lora_r\) given, but --use_peft is false"),
    (["--dataset_path", "DATA", "--train_size", "16"], r"so --train_size 16 .* would be ignored"),
    (["--dataset_split", "test"], r"--dataset_split test picks a split .* would be ignored"),
    (["--resume", "yes"], r"--resume must be 'true' or 'false', got 'yes'"),
    (["--resume", "false", "--restart", "true"], r"contradict each other"),
    (["--resume_from_checkpoint", "true"], r"--resume_from_checkpoint true is not used .*\(see --resume\)"),
    (["--eval_strategy", "steps"], r"--eval_strategy steps: weakstrong wmss takes no evaluation set"),
    (["--load_in_4bit", "true"], r"--load_in_4bit: quantized training is not supported"),
    (["--model_revision", "v2"], r"--model_revision v2 is not supported"),
])
def test_ignored_or_contradictory_flags_are_refused(argv, message, tiny_llama_dir, tmp_path, capsys):
    """Issue 20, item 3: no flag of `weakstrong wmss` is accepted and then ignored."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    argv = [str(tiny_llama_dir) if a == "MODEL" else str(data) if a == "DATA" else a for a in argv]
    out = tmp_path / "run"
    assert cli_main(["wmss", "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weakstrong wmss: error: ") and re.search(message, err), err
    assert not out.exists()


def _data_cases(tmp_path):
    (tmp_path / "no_completion.jsonl").write_text(json.dumps({"prompt": "1+1="}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "not_json.jsonl").write_text("1+1=2\n2+2=4\n")
    (tmp_path / "other.jsonl").write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")


@pytest.mark.parametrize("argv, message", [
    (["--dataset_path", "TMP/no_completion.jsonl"], r"has a prompt column but no completion column"),
    (["--dataset_path", "TMP/empty.jsonl"], r"empty.jsonl is empty: it holds no training example"),
    (["--dataset_path", "TMP/not_json.jsonl"], r"line 1 is not JSON .* one JSON object per line"),
    (["--dataset_path", "TMP/other.jsonl"], r"has columns \['question', 'answer'\], none of the SFT formats"),
    (["--dataset_path", "TMP/missing.jsonl"], r"missing.jsonl: no such file or folder"),
    (["--model_name_or_path", "TMP/no-such-model"], r"--model_name_or_path .*no-such-model: no such folder\. Give "
                                                    r"'default'"),
    (["--task", "meetingrooms"], r"unknown task 'meetingrooms' \(did you mean 'meeting_rooms'\?\); the built-in "
                                 r"tasks are \['arithmetic', 'meeting_rooms'\]"),
    (["--sft_epochs", "0", "--weak_model_name_or_path", "SMALL_VOCAB"], r"vocabulary of \d+ tokens .* one of \d+"),
])
def test_user_errors_are_one_message_and_exit_2(argv, message, tiny_llama_dir, tmp_path, capsys):
    """Issue 20, item 4: each of these printed a traceback (KeyError, StopIteration, 78 lines of datasets, OSError
    'Repo id must be...', ValueError): now one paragraph naming the problem and what to do, exit 2."""
    _data_cases(tmp_path)
    if "SMALL_VOCAB" in argv:
        from weakstrong.models import tiny_model

        model, tok = tiny_model("llama", vocab_size=384)
        model.save_pretrained(tmp_path / "small")
        tok.save_pretrained(tmp_path / "small")
    argv = [a.replace("TMP", str(tmp_path)).replace("SMALL_VOCAB", str(tmp_path / "small")) for a in argv]
    model = [] if "--model_name_or_path" in argv else ["--model_name_or_path", str(tiny_llama_dir)]
    capsys.readouterr()
    assert cli_main(["wmss", *model, "--output_dir", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("weakstrong wmss: error: ")]
    assert len(lines) == 1 and re.search(message, lines[0]), err  # one paragraph (progress bars may precede it)
    assert "Traceback" not in err and err.rstrip().endswith("(run with --debug or WEAKSTRONG_DEBUG=1 for the traceback)")


def test_a_user_error_in_a_new_process_is_the_message_alone(tmp_path):
    """The same, as a user meets it: a new process, exit status 2, no traceback on stderr."""
    _data_cases(tmp_path)
    proc = weakstrong("wmss", "--dataset_path", tmp_path / "not_json.jsonl", "--output_dir", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stderr.startswith("weakstrong wmss: error: --dataset_path") and "Traceback" not in proc.stderr
