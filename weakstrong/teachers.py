"""Teachers for Linguistic RL (and anything else that needs a stronger model to talk to).

A teacher is a :class:`~weakstrong.backends.ChatBackend` with a ``name``: ``generate(conversations, **sampling)``
returns one reply per conversation. The two concrete teachers are thin names over the shared backends:

* :class:`TransformersTeacher` — ``TransformersTeacher("default")``, ``TransformersTeacher("path/or/id")`` or
  ``TransformersTeacher(model, tokenizer)``.
* :class:`OpenAICompatibleTeacher` — ``OpenAICompatibleTeacher(base_url="http://localhost:8000/v1",
  model="Qwen/Qwen2.5-72B-Instruct")``; the API key comes from ``$OPENAI_API_KEY`` (or ``api_key_env``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .backends import Messages, OpenAICompatibleChat, TransformersChat


@runtime_checkable
class Teacher(Protocol):
    """A named chat backend."""

    name: str

    def generate(self, conversations: list[Messages], **sampling: Any) -> list[str]: ...


class TransformersTeacher(TransformersChat):
    """A local transformers model as teacher (see :class:`~weakstrong.backends.TransformersChat`)."""


class OpenAICompatibleTeacher(OpenAICompatibleChat):
    """An OpenAI-compatible endpoint as teacher (see :class:`~weakstrong.backends.OpenAICompatibleChat`)."""


__all__ = ["Teacher", "TransformersTeacher", "OpenAICompatibleTeacher"]
