"""Chat-generation clients shared by every method that talks to a model through conversations.

* :class:`ChatBackend` — the protocol: ``generate(list_of_conversations, **sampling) -> list[str]``.
* :class:`TransformersChat` — a local causal LM (chat template, left padding, batched, greedy or sampled).
* :class:`OpenAICompatibleChat` — ``/chat/completions`` over HTTP with retries, backoff, and an on-disk cache.

Both also implement ``choice_probs(conversations, choices) -> ChoiceProbs``: the next-token probabilities of a
closed set of one-token answers (e.g. the digits "1".."5"), for judges too small to write JSON.
"""

from .base import (SAMPLING_KEYS, ChatBackend, ChatBackendError, ChoiceProbs, ChoiceScorer, ConfigurationError,
                   EndpointUnavailableError, Messages, normalize_sampling)
from .openai_compat import OpenAICompatibleChat
from .transformers_chat import TransformersChat

__all__ = ["ChatBackend", "ChatBackendError", "ChoiceProbs", "ChoiceScorer", "ConfigurationError", "EndpointUnavailableError", "Messages",
           "OpenAICompatibleChat", "SAMPLING_KEYS", "TransformersChat", "normalize_sampling"]
