"""run_wmss: M0 → SFTTrainer → WMSSTrainer × K as a resumable chain (weak of round r = the input of round r-1),
and the one-stage idiom of an existing SFT script (SFTTrainer, then WMSSTrainer on its model)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

from weakstrong import WMSSTrainer
from weakstrong.models import tiny_model
from weakstrong.wmss import run_wmss
from weakstrong.wmss import trainer as trainer_module

peft = pytest.importorskip("peft")


@pytest.fixture
def record(monkeypatch):
    """The (model, weak_model) each WMSSTrainer of the chain was built with."""
    calls = []
    init = trainer_module.WMSSTrainer.__init__

    def spy(self, model, *a, weak_model=None, **k):
        calls.append((model if isinstance(model, str) else type(model).__name__, weak_model))
        init(self, model, *a, weak_model=weak_model, **k)

    monkeypatch.setattr(trainer_module.WMSSTrainer, "__init__", spy)
    return calls


def chain_args(make_args, out, **kw):
    return make_args(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=3e-3, **kw)


def test_two_rounds_full(make_args, rooms_chat, tmp_path, record):
    m0, tok = tiny_model("llama", seed=0)
    start = {k: v.clone() for k, v in m0.state_dict().items()}
    out = tmp_path / "run"
    res = run_wmss(m0, rooms_chat.select(range(8)), chain_args(make_args, out), rounds=2, processing_class=tok,
                   sft_args={"max_steps": 3})
    root = str(out)
    assert record == [(f"{root}/sft", f"{root}/m0"), (f"{root}/round-1", f"{root}/sft")]
    assert res.final_dir == f"{root}/round-2" and set(res.selections) == {1, 2}
    # a loaded M0 is written once to m0/ and every stage loads from disk: no copy of it is kept in memory
    saved = AutoModelForCausalLM.from_pretrained(out / "m0").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.items() if k in saved)
    assert [h["step"] for h in res.log_history["sft"] if "loss" in h] == [1, 2, 3]
    assert "wmss/selection/size" in res.log_history["round-2"][0]
    journal = json.loads((out / "wmss_run.json").read_text())
    assert set(journal["stages"]) == {"m0", "sft", "round-1", "round-2"}
    AutoModelForCausalLM.from_pretrained(res.final_dir)


class CrashInRound(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith("round-1") and state.global_step == 2:
            raise KeyboardInterrupt("simulated crash in round 1")


def test_resume_equals_uninterrupted(make_args, rooms_chat, tmp_path):
    """Compared in float64 (model stored and loaded as float64): the resumed run repeats the uninterrupted run's
    operations, so any difference is rounding, and float64 rounding stays far below the bound on any CPU (Adam
    turns a gradient perturbation δg into at most ~lr * δg / eps per step: 3e-3 * 1e-15 / 1e-8 over 4 steps)."""
    data = rooms_chat.select(range(8))
    m0, tok = tiny_model("llama", seed=0, dtype=torch.float64)
    m0.save_pretrained(tmp_path / "m0")
    tok.save_pretrained(tmp_path / "m0")

    def go(out, callbacks=(), resume=False, **kw):
        args = chain_args(make_args, out, save_strategy="steps", save_steps=2, dedup=False,
                          model_init_kwargs={"dtype": "auto"}, **kw)
        args.max_steps = 4
        return run_wmss(str(tmp_path / "m0"), data, args, sft_args={"max_steps": 2}, callbacks=list(callbacks),
                        resume=resume, on_stage_end=lambda name, path, tr: ran.append(name))

    ran = []
    full = go(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "b", callbacks=[CrashInRound()])
    ran.clear()
    resumed = go(tmp_path / "b", resume=True)
    assert ran == ["round-1"]  # SFT was done: not run again; round 1 continued from checkpoint-2
    a = AutoModelForCausalLM.from_pretrained(full.final_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed.final_dir).state_dict()
    assert all(v.dtype == torch.float64 for v in a.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-9, msg=k)
    assert resumed.selections[1]["indices"] == full.selections[1]["indices"]
    with pytest.raises(ValueError, match="other settings.*mix_lambda: saved 0.5, now 0.3"):
        go(tmp_path / "b", resume=True, mix_lambda=0.3)


def lora():
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                           task_type="CAUSAL_LM")


def test_two_rounds_lora(make_args, rooms_chat, tmp_path, tiny_llama_dir, record):
    out = tmp_path / "run"
    res = run_wmss(str(tiny_llama_dir), rooms_chat.select(range(8)), chain_args(make_args, out), rounds=2,
                   peft_config=lora(), sft_args={"max_steps": 2})
    # round 1: the SFT adapter + a zero-initialised weak adapter (= M0); round 2: weak = the SFT adapter
    assert record == [("PeftModelForCausalLM", None), ("PeftModelForCausalLM", f"{out}/sft")]
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), res.final_dir)
    assert set(model.peft_config) == {"default"}


def test_sft_script_plus_one_stage(make_args, rooms_chat, tmp_path, tiny_llama_dir):
    """The README idiom: an SFTTrainer run, then WMSSTrainer on its model (LoRA: weak = the base, as an adapter)."""
    data = rooms_chat.select(range(8))
    sft = SFTTrainer(str(tiny_llama_dir), args=SFTConfig(str(tmp_path / "sft"), max_steps=2, report_to="none",
                                                         use_cpu=True, bf16=False, activation_checkpointing=False),
                     train_dataset=data, peft_config=lora())
    sft.train()
    wmss = WMSSTrainer(sft.model, args=make_args(output_dir=str(tmp_path / "wmss"), max_steps=2), train_dataset=data,
                       processing_class=sft.processing_class)
    out = wmss.train()
    assert out.global_step == 2
    wmss.save_model()
    assert (tmp_path / "wmss" / "adapter_model.safetensors").is_file()


def test_plan_reads_a_journal_of_an_older_version(make_args, rooms_chat, tmp_path, tiny_llama_dir, caplog):
    """A wmss_run.json written before the training settings were recorded still resumes (the new entries are
    reported as unchecked and recorded); a finished one is 'finished'; a changed WMSS knob is still refused."""
    from weakstrong.wmss.pipeline import JOURNAL, WMSSRunError, plan_wmss

    data = rooms_chat.select(range(8))
    args = chain_args(make_args, tmp_path / "run")
    fresh = plan_wmss(str(tiny_llama_dir), data, args, sft_args={"max_steps": 2})
    assert fresh.status == "new" and fresh.stages == ["sft", "round-1"]
    assert fresh.identity["sft_training"]["max_steps"] == 2 and fresh.identity["training"]["max_steps"] == 2
    old = {k: v for k, v in fresh.identity.items() if k not in ("training", "sft_training", "peft")}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / JOURNAL).write_text(json.dumps({"identity": old, "stages": {"sft": "x", "round-1": "y"},
                                                        "selections": {}}))
    plan = plan_wmss(str(tiny_llama_dir), data, args, sft_args={"max_steps": 2})
    assert (plan.status, plan.unchecked) == ("finished", ["peft", "sft_training", "training"])
    assert plan.describe().endswith(f"is already finished (sft, round-1); final model: {tmp_path}/run/round-1")
    with pytest.raises(WMSSRunError, match=r"other settings \(mix_lambda: saved 0.5, now 0.3\)"):
        plan_wmss(str(tiny_llama_dir), data, chain_args(make_args, tmp_path / "run", mix_lambda=0.3),
                  sft_args={"max_steps": 2})


def test_starting_over_leaves_no_old_checkpoint(make_args, rooms_chat, tmp_path, tiny_llama_dir):
    """resume=False starts over: the previous run's stage folders go first, so none of its checkpoints (nor a round
    the new run does not have) is left beside the new model."""
    data = rooms_chat.select(range(8))
    out = tmp_path / "run"

    def go(max_steps, rounds):
        args = chain_args(make_args, out, save_strategy="steps", save_steps=1)
        args.max_steps = max_steps
        return run_wmss(str(tiny_llama_dir), data, args, rounds=rounds, sft_args={"max_steps": max_steps})

    go(2, rounds=2)
    assert (out / "round-2").is_dir() and (out / "sft" / "checkpoint-2").is_dir()
    go(1, rounds=1)
    assert sorted(p.name for p in out.iterdir()) == ["round-1", "sft", "wmss_run.json"]
    assert sorted(p.name for p in (out / "sft").glob("checkpoint-*")) == ["checkpoint-1"]
    assert sorted(p.name for p in (out / "round-1").glob("checkpoint-*")) == ["checkpoint-1"]
