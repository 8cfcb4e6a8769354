"""Shared fixtures of the WMSS tests: tiny random models, small task datasets, lean CPU settings."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WEAKSTRONG_CACHE", "/tmp/wscache")

import pytest  # noqa: E402
import torch  # noqa: E402

# one thread: on a shared 2-core machine a second OpenMP thread spinning against other processes is many times slower
torch.set_num_threads(1)


@pytest.fixture
def tiny():
    from weakstrong.models import tiny_model

    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def rooms_chat():
    from weakstrong.tasks import MeetingRoomsTask

    return MeetingRoomsTask().generate(16, seed=0)


@pytest.fixture
def make_args(tmp_path):
    """Factory of WMSSConfig for tests: CPU, no logging integrations, no checkpoints unless asked."""
    from weakstrong import WMSSConfig

    def make(**overrides):
        base = dict(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4,
                    activation_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True,
                    learning_rate=1e-3, use_cpu=True, seed=0, dataloader_pin_memory=False)
        base.update(overrides)
        return WMSSConfig(**base)

    return make


@pytest.fixture
def pair():
    """(strong, weak, tokenizer): two tiny Llamas with the same vocabulary and different weights."""
    from weakstrong.models import tiny_model

    strong, tok = tiny_model("llama", seed=0)
    weak, _ = tiny_model("llama", seed=1)
    return strong, weak, tok


@pytest.fixture
def prepared():
    """``prepared(trainer)``: the trainer's prepared training rows as dicts of input_ids / labels (what SFT trains),
    in the prepared dataset's order."""

    def rows(trainer):
        return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in trainer._full_train_dataset]

    return rows
