"""The lab's model: a tiny Llama trained from scratch on the character vocabulary."""

from __future__ import annotations

import torch


def lab_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0,
              max_positions: int = 32):
    """A randomly initialised ``LlamaForCausalLM`` sized for ``tokenizer`` (untied head, seeded init).

    ``weakstrong.models.tiny_model`` builds the same architecture but with its own BPE tokenizer; the lab needs one
    token per digit, so it sizes the config to the character tokenizer here.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
