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


# ------------------------------------------------------------------ a real OpenAI-compatible server (issue 15)
def _serving_module():
    """tests/serving.py (the repo root is not on sys.path in importlib mode, so load it by path)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "weakstrong_tests_serving"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("serving.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def real_server(tmp_path_factory):
    """``transformers serve`` on a free 127.0.0.1 port serving the embedded SmolLM2-135M-Instruct, one per test
    session (per xdist worker), stopped by its process group at the end. ``real_server.model`` is the exact name
    requests must send; ``real_server.restart()`` / ``kill()`` are for fault tests (a test that kills it must
    leave it running: use ``real_server_alive`` after it)."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"transformers serve needs {missing}: pip install -c constraints/cpu.txt -e '.[serve]'")
    from weakstrong.models import default_model_path

    server = _serving_module().TransformersServer(default_model_path(),
                                                  tmp_path_factory.mktemp("serve") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def real_server_alive(real_server):
    """The session's server, restarted after the test if the test left it dead."""
    yield real_server
    if not real_server.alive():
        real_server.restart()
