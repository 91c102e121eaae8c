"""Shared fixtures: tiny random models built in code (seconds)."""

from __future__ import annotations

import pytest
import torch

from selfexplain.models import decoder_layers, tiny_random


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny random Llama and its in-code tokenizer."""
    return tiny_random("tiny-random-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gemma():
    """A tiny random Gemma-3 (different width from the Llama) and its tokenizer."""
    return tiny_random("tiny-random-gemma", seed=0)


@pytest.fixture()
def last_token_llama():
    """A tiny Llama whose attention outputs are zeroed: each position sees only its own token,
    so the next-token prediction depends on the last input token alone."""
    model, tok = tiny_random("tiny-random-llama", seed=1)
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.self_attn.o_proj.weight.zero_()
    return model, tok
