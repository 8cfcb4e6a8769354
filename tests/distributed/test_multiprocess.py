"""Multi-process proof on CPU (gloo): the recipes under ``accelerate launch`` with 2 processes (DDP, ZeRO-2, ZeRO-3)
give the same losses and final weights as one process with the same global batch (4 = 1 × 4 = 2 × 2).

Each launch runs a recipe (``recipes/wmss/train.py``: SFT 2 steps + one WMSS round of 2 steps;
``recipes/lrl/train_student.py``) on a tiny random Llama and writes its log history to JSON; the single-process references run in this process once per
worker (session fixtures). ``--cpu`` is never used: it silently runs one process.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CFG = ROOT / "recipes" / "accelerate"
WMSS = ROOT / "recipes" / "wmss" / "train.py"
STUDENT = ROOT / "recipes" / "lrl" / "train_student.py"
LAUNCH_TIMEOUT = 420
# Tolerances, derived rather than tuned, so that they hold on any CPU (AMD or Intel), thread count and BLAS.
# The tiny model is float64 and loaded as such (`--dtype auto`), so under DDP everything this project computes
# (selection entropies, the mixed loss and its gradients) is float64. Float32 remains in three places whatever the
# model's dtype: TRL's fused LM head in the SFT stages (`trl.kernels.chunked_logprob` casts to float32), DeepSpeed's
# ZeRO-2/3 engines (they train in float32 when neither fp16 nor bf16 is enabled) and the Trainer's loss
# accumulator (`tr_loss`, what gets logged). So the bounds are those of a float32 computation: a sum of k terms
# computed in two orders differs by at most gamma_k * sum|terms|, gamma_k ~ k * 2**-24; the longest reduction here
# has k <= 2**11 terms (<= 1,300 tokens a step, vocabulary 512, hidden 64), so EPS = 2**-13 relative.
# * Losses: |Δloss| <= EPS * |loss| (log-softmax terms are positive: sum|terms| = the sum).
# * Weights: SGD with momentum, not Adam. Adam divides by sqrt(v), so rounding noise in a gradient that is ~0
#   becomes an update of up to lr: Adam's weights differ by whatever the CPU's summation order made of
#   near-zero gradients (1e-5 at lr 1e-3 on some CPUs, not on others), which no bound separates from a defect.
#   SGD is linear in the gradients: w_T = w_0 - lr * sum_t sum_{s<=t} mu^(t-s) g_s, so per stage
#   |Δw| <= lr * T / (1 - mu) * max_s |Δg_s|, with |Δg_s| <= G * EPS, G = 4 >= any gradient entry (grad_norm <= 2
#   on this model and data). Summed over the stages (a fresh optimizer each): at most T = 4 optimizer steps in all
#   (WMSS: 2 SFT + 2 in the round; student: 3). The drift of later gradients through the changed weights is second
#   order (lr * H * Δw) and left out. A real difference (another batch split, another drawn set, a lost optimizer
#   state) moves weights by ~lr * T / (1 - mu) * |g| ~ 1, three orders of magnitude above the bound.
# The rate is high enough for SFT to move M1 visibly away from M0 (else the entropy differences the WMSS draw is
# weighted by are rounding noise, and the drawn set would be too).
LR, MOMENTUM, TOTAL_STEPS, G, EPS = 0.1, 0.9, 4, 4.0, 2.0**-13
LOSS_REL_TOL = EPS
WEIGHT_TOL = LR * TOTAL_STEPS / (1 - MOMENTUM) * G * EPS
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
        "--lora_target_modules", "q_proj", "v_proj"]
COMMON = ["--learning_rate", str(LR), "--optim", "sgd", "--optim_args", f"momentum={MOMENTUM}",
          "--lr_scheduler_type", "constant", "--logging_steps", "1", "--report_to", "none",
          "--seed", "0", "--disable_tqdm", "true", "--bf16", "false", "--activation_checkpointing", "false",
          "--dataloader_pin_memory", "false", "--dtype", "auto"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "ACCELERATE_USE_CPU",
              "ACCELERATE_USE_DEEPSPEED", "PYTEST_XDIST_WORKER"):
        env.pop(k, None)
    return env


def launch(launcher: str, script: Path, args: list[str], timeout: int = LAUNCH_TIMEOUT) -> float:
    """``accelerate launch --config_file recipes/accelerate/<launcher>.yaml --num_processes 2 --mixed_precision no``;
    fails with the tail of the output on a non-zero exit or a timeout. Returns the wall time."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch", "--config_file", str(ACCELERATE_CFG / f"{launcher}.yaml"), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(_free_port()), str(script), *args]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{launcher} launch timed out after {timeout} s: {' '.join(cmd)}\n{(out + err)[-8000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{launcher} launch failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                    f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
    return time.time() - start


def losses(summary: dict) -> list[float]:
    return [h["loss"] for h in summary["log_history"] if "loss" in h]


def weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        out.update(load_file(f))
    assert out, f"no safetensors in {folder}"
    return out


def assert_same_run(ref: dict, got: dict, label: str):
    assert got["num_processes"] == 2, f"{label}: ran {got['num_processes']} process(es), not 2"
    lr, lg = losses(ref), losses(got)
    assert len(lr) == len(lg) > 0, f"{label}: {len(lg)} logged losses vs {len(lr)}"
    dl = max(abs(a - b) for a, b in zip(lr, lg))
    wr, wg = weights(ref["final"]), weights(got["final"])
    assert wr.keys() == wg.keys(), f"{label}: saved tensors differ: {sorted(wr.keys() ^ wg.keys())[:5]}"
    dw = max((wr[k].double() - wg[k].double()).abs().max().item() for k in wr)
    print(f"{label}: max |Δloss| = {dl:.2e} over {len(lr)} steps, max |Δweight| = {dw:.2e}")
    assert all(abs(a - b) <= LOSS_REL_TOL * max(abs(a), abs(b)) for a, b in zip(lr, lg)), \
        f"{label}: losses differ by {dl} (ref {lr}, got {lg})"
    assert dw <= WEIGHT_TOL, f"{label}: final weights differ by {dw}"
    return dl, dw


def read(folder, name) -> dict:
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from weakstrong.models import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    model, tok = tiny_model("llama", seed=0, dtype=torch.float64)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def curriculum(tmp_path_factory) -> str:
    from weakstrong.tasks import MeetingRoomsTask

    path = tmp_path_factory.mktemp("curriculum") / "curriculum.jsonl"
    MeetingRoomsTask().generate(16, seed=1, format="chat").select_columns(["prompt", "completion"]).to_json(
        str(path), lines=True)
    return str(path)


def wmss_args(tiny_dir: str, out: Path, per_device: int, lora: bool, extra=()) -> list[str]:
    return ["--model_name_or_path", tiny_dir, "--task", "meeting_rooms", "--train_size", "16",
            "--sft_max_steps", "2", "--max_steps", "2", "--entropy_batch_size", "3",
            "--save_entropy_plots", "false", "--save_strategy", "no", "--output_dir", str(out),
            "--per_device_train_batch_size", str(per_device), *COMMON, *(LORA if lora else []), *extra]


def student_args(tiny_dir: str, curriculum: str, out: Path, per_device: int) -> list[str]:
    return ["--model_name_or_path", tiny_dir, "--curriculum", curriculum, "--max_steps", "3", "--save_strategy", "no",
            "--output_dir", str(out), "--per_device_train_batch_size", str(per_device), *COMMON, *LORA]


def _single(kind: str, tiny_dir: str, curriculum: str, out: Path) -> dict:
    """One process, in this interpreter, with the global batch (4) on it."""
    if kind == "student":
        from weakstrong.lrl.student_cli import HISTORY_NAME, main_from_argv

        main_from_argv(student_args(tiny_dir, curriculum, out, 4))
    else:
        from weakstrong.wmss.cli import HISTORY_NAME, main_from_argv

        main_from_argv(wmss_args(tiny_dir, out, 4, lora=kind == "wmss_lora"))
    return read(out, HISTORY_NAME)


@pytest.fixture(scope="session")
def reference(tiny_dir, curriculum, tmp_path_factory):
    cache = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            cache[kind] = _single(kind, tiny_dir, curriculum, tmp_path_factory.mktemp(f"ref-{kind}"))
        return cache[kind]

    return get


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("launcher", ["ddp", "zero2", "zero3"])
@pytest.mark.parametrize("kind", ["wmss_full", "wmss_lora", "student"])
def test_two_processes_equal_one(launcher, kind, reference, tiny_dir, curriculum, tmp_path):
    """Same losses, same drawn set (WMSS), same final weights as one process; the saved model loads."""
    from transformers import AutoModelForCausalLM

    ref = reference(kind)
    out = tmp_path / "run"
    if kind == "student":
        from weakstrong.lrl.student_cli import HISTORY_NAME

        launch(launcher, STUDENT, student_args(tiny_dir, curriculum, out, 2))
    else:
        from weakstrong.wmss.cli import HISTORY_NAME

        # ZeRO-2 full run also writes checkpoints: the resume check below restarts round 1 from its first one
        extra = ["--save_strategy", "steps", "--save_steps", "1"] if (launcher, kind) == ("zero2", "wmss_full") else []
        if (launcher, kind) == ("zero3", "wmss_full"):
            extra = ["--final_dir", str(tmp_path / "final")]  # the copy of the ZeRO-3 model (it came out empty once)
        launch(launcher, WMSS, wmss_args(tiny_dir, out, 2, lora=kind == "wmss_lora", extra=extra))
    got = read(out, HISTORY_NAME)
    assert_same_run(ref, got, f"{launcher} × {kind}")
    if kind != "student":
        # phase 2 split over the processes and gathered back in order: same entropies, same drawn set
        assert got["selections"] == ref["selections"]
        for key in ("h_strong", "h_weak"):
            diff = max(abs(a - b) for a, b in zip(got[key]["1"], ref[key]["1"]))
            print(f"{key}: max |Δ| = {diff:.2e}")
            assert diff < 1e-5, f"{key} differs by {diff}"
        if launcher == "zero3":
            assert got["strong_partitioned"] and got["weak_partitioned"], "ZeRO-3 did not partition both branches"
        # full: a second model; LoRA: the zero-initialised weak adapter, trainable from round 1
        assert got["weak_trainable_params"] > 0, "freeze_weak=False but the weak branch was not trainable"
    if kind == "wmss_lora" or kind == "student":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        PeftModel.from_pretrained(base, got["final"])
    else:
        AutoModelForCausalLM.from_pretrained(got["final"])
    if (launcher, kind) == ("zero2", "wmss_full"):
        # a crash in round 1 after its first checkpoint: the run folder as it was then (SFT finished, round 1 at
        # checkpoint-1), resumed with --resume true, must end with the uninterrupted run's model
        round1 = out / "round-1"
        assert (round1 / "checkpoint-1" / "wmss_state.json").is_file(), sorted(os.listdir(round1))
        resumed = tmp_path / "resumed"
        shutil.copytree(out, resumed)
        shutil.rmtree(resumed / "round-1")
        shutil.copytree(round1 / "checkpoint-1", resumed / "round-1" / "checkpoint-1")
        shutil.copytree(round1 / "selection", resumed / "round-1" / "selection")  # written before step 1
        journal = json.loads((resumed / "wmss_run.json").read_text())
        del journal["stages"]["round-1"], journal["selections"]["round-1"]
        (resumed / "wmss_run.json").write_text(json.dumps(journal))
        launch(launcher, WMSS, wmss_args(tiny_dir, resumed, 2, lora=False,
                                         extra=["--save_strategy", "steps", "--save_steps", "1", "--resume", "true"]))
        again = read(resumed, HISTORY_NAME)
        assert [h for h in again["log_history"] if "loss" in h and "mixed_ce" not in h] == []  # SFT not run again
        wf, wr = weights(got["final"]), weights(again["final"])
        dw = max((wf[k].double() - wr[k].double()).abs().max().item() for k in wf)
        last_full = losses(got)[-1]
        last_resumed = losses(again)[-1]
        print(f"zero2 resume: |Δweight| = {dw:.2e}, last loss {last_full} vs {last_resumed}")
        assert dw <= WEIGHT_TOL
        assert abs(last_full - last_resumed) <= LOSS_REL_TOL * abs(last_full)


def test_fsdp2_config_parses():
    """recipes/accelerate/fsdp2.yaml loads into Accelerate's FSDP2 plugin (FSDP2 itself cannot run on CPU here)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin

    cfg = load_config_from_file(str(ACCELERATE_CFG / "fsdp2.yaml"))
    assert str(cfg.distributed_type).endswith("FSDP")
    assert cfg.mixed_precision == "bf16"
    fc = cfg.fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fc["fsdp_version"], auto_wrap_policy=fc["fsdp_auto_wrap_policy"].lower(),
        reshard_after_forward=fc["fsdp_reshard_after_forward"], state_dict_type=fc["fsdp_state_dict_type"],
        cpu_ram_efficient_loading=fc["fsdp_cpu_ram_efficient_loading"])
    assert plugin.fsdp_version == 2
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp2"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACCELERATE_CFG / f"{name}.yaml"))
    assert cfg.mixed_precision == "bf16"
    if name.startswith("zero"):
        ds = cfg.deepspeed_config
        assert ds["zero_stage"] == int(name[-1])
        if name == "zero3":
            assert ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True


def test_fsdp_refused_on_cpu(monkeypatch):
    """On CPU Accelerate would silently run an FSDP config as plain DDP: the recipes' setup refuses it."""
    from weakstrong import distributed

    if torch.cuda.is_available():
        pytest.skip("CUDA present: FSDP is allowed")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RuntimeError, match="FSDP"):
        distributed.setup()


def test_trainer_defaults_without_cuda(monkeypatch):
    """Without CUDA the recipes default to bf16=False (TRL's bf16 default is refused there) and, with several
    processes, to the gloo backend; with CUDA they add nothing."""
    from weakstrong import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.trainer_defaults() == {"bf16": False}
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.trainer_defaults() == {"bf16": False, "ddp_backend": "gloo"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.trainer_defaults() == {}
