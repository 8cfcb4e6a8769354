"""Chat-generation clients shared by every method that talks to a model through conversations.

* :class:`ChatBackend` — the protocol: ``generate(list_of_conversations, **sampling) -> list[str]``.
* :class:`TransformersChat` — a local causal LM (chat template, left padding, batched, greedy or sampled).
* :class:`OpenAICompatibleChat` — ``/chat/completions`` over HTTP with retries, backoff, a total deadline, an
  on-disk cache, and round-robin over several replicas (``base_url=[...]``).

``seed`` may be one int or one int per conversation (:func:`request_seeds`).

Both also implement ``choice_probs(conversations, choices) -> ChoiceProbs``: the next-token probabilities of a
closed set of one-token answers (e.g. the digits "1".."5"), for judges too small to write JSON.
"""

from .base import (SAMPLING_KEYS, ChatBackend, ChatBackendError, ChoiceProbs, ChoiceScorer, ConfigurationError,
                   EndpointUnavailableError, Messages, UnusableReplyError, cut_at_stop, normalize_sampling, parse_endpoint,
                   request_seeds)
from .openai_compat import OpenAICompatibleChat
from .transformers_chat import TransformersChat

__all__ = ["ChatBackend", "ChatBackendError", "ChoiceProbs", "ChoiceScorer", "ConfigurationError", "EndpointUnavailableError", "Messages", "UnusableReplyError",
           "OpenAICompatibleChat", "SAMPLING_KEYS", "TransformersChat", "cut_at_stop", "normalize_sampling", "parse_endpoint",
           "request_seeds"]
