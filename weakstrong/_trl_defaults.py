"""Machine-dependent defaults our ``SFTConfig`` subclasses (``WMSSConfig``, ``LinguisticRLConfig``) resolve before
``TrainingArguments.__post_init__`` runs, so that a run on any machine starts without warnings about settings the
user never gave:

* ``bf16`` left unset: bf16 only where the accelerator supports it (TRL turns it on and then fails on a CPU);
* ``dataloader_pin_memory`` left unset: pinned memory only where an accelerator exists (``TrainingArguments``
  pins by default, and torch warns ``'pin_memory' argument is set as true but no accelerator is found`` on every
  data loader of a CPU run);
* ``activation_checkpointing`` left unset: ``True`` (TRL's default, which TRL still declares under the deprecated
  name ``gradient_checkpointing=True``; transformers >= 5 then warns ``FutureWarning: `gradient_checkpointing` is
  deprecated`` on every config although the user wrote neither name). A ``gradient_checkpointing`` the user gives
  still wins, with transformers' deprecation warning, which is then right.

The three fields are re-declared in those subclasses with ``None`` defaults (the ``*_field()`` helpers below).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import field


def bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def accelerator_available() -> bool:
    import torch

    acc = getattr(torch, "accelerator", None)  # torch >= 2.6; the same test torch's DataLoader warns on
    return bool(acc.is_available()) if acc is not None else bool(torch.cuda.is_available())


def pin_memory_field():
    return field(default=None, metadata={"help": "Pin data loader memory (default: only where an accelerator "
                                                 "exists; on a CPU it does nothing)."})


def activation_checkpointing_field():
    return field(default=None, metadata={"help": "Enable activation checkpointing to trade compute for memory "
                                                 "(default: True, TRL's default)."})


def gradient_checkpointing_field():
    return field(default=None, metadata={"help": "Deprecated alias of activation_checkpointing."})


def resolve(config) -> None:
    """Fill the unset machine-dependent fields of ``config`` (call first in ``__post_init__``)."""
    if config.bf16 is None and not config.fp16 and not bf16_supported():
        config.bf16 = False
    if config.dataloader_pin_memory is None:
        config.dataloader_pin_memory = accelerator_available()
    if config.activation_checkpointing is None and config.gradient_checkpointing is None:
        config.activation_checkpointing = True


@contextlib.contextmanager
def peft_wrapping():
    """Around the code that wraps a model with PEFT (``get_peft_model`` in TRL's trainers, ``PeftModel.
    from_pretrained``): peft (0.21.2, the newest release) reads ``model.is_gradient_checkpointing`` in
    ``PeftModel.__init__``, a property transformers 5 deprecated, so every LoRA run printed ``FutureWarning:
    `is_gradient_checkpointing` is deprecated``. Nothing the user or this library does can avoid it (it is peft's
    read, not a setting), so exactly that message is hidden here, and only for the wrapping."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
