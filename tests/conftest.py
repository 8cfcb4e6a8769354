"""Test environment: offline hub, quiet tokenizers, DeepSpeed on CPU, Triton kernels through the interpreter.

These must be set before transformers / deepspeed / weakstrong.kernels are first imported, which is why they
live at the top of the root conftest.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A tiny random Llama and its tokenizer saved to a folder (what `--model PATH` options take)."""
    from weakstrong.models import tiny_model

    model, tok = tiny_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
