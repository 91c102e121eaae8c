"""Batched forward passes over token-id sequences of different lengths (left padding)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager

import torch


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id sequences into (input_ids, attention_mask) tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count from 0 at each row's first real token, so padding changes nothing."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def next_token_logprobs(
    model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """Log-probabilities of the next token after each sequence, shape (n_seqs, vocab)."""
    out = []
    for start in range(0, len(seqs), batch_size):
        out.append(padded_logprobs(model, *pad_left(seqs[start : start + batch_size], pad_id)))
    return torch.cat(out)


def padded_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (batch, vocab) of the next token after each row of a left-padded batch
    (pad_left's ids and mask), on the CPU."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids(mask).to(device),
        logits_to_keep=1,
    ).logits[:, -1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


class PrefixCache:
    """The per-layer keys and values of one prompt, reused by forwards of perturbed copies of it.

    Attention is causal, so a copy that first differs from the prompt at position c (a token
    removed at c, a hidden state patched at c) has the same keys and values at positions < c in
    every layer: only its suffix needs computing, on top of a cropped copy of this cache.
    """

    def __init__(self, model: torch.nn.Module, ids: Sequence[int]):
        self.model = model
        self.ids = list(ids)
        self.device = next(model.parameters()).device
        from transformers import DynamicCache

        # Sliding-window layers (Gemma) keep their whole past only when recording is on, so
        # the cache can be cropped back to any prefix.
        self.cache = DynamicCache(config=model.config)
        self.cache.activate_past_recording()
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([self.ids], device=self.device),
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()

    def expand(self, length: int, batch: int):
        """A fresh cache of the prompt's first `length` tokens for `batch` rows (None if 0)."""
        if not 0 <= length <= len(self.ids):
            raise ValueError(f"prefix length {length} outside 0..{len(self.ids)}")
        if length == 0:
            return None
        cache = copy.deepcopy(self.cache)
        cache.crop(length - len(self.ids))  # a negative count removes that many trailing tokens
        cache.batch_repeat_interleave(batch)
        return cache

    def logits(self, suffixes: Sequence[Sequence[int]], start: int) -> torch.Tensor:
        """Next-token logits (B, vocab) of the sequences ids[:start] + suffixes[b] (suffixes of
        equal, non-zero length); forward hooks on the model see only the suffix positions."""
        batch = torch.tensor([list(s) for s in suffixes], device=self.device)
        return self.model(
            input_ids=batch,
            past_key_values=self.expand(start, len(suffixes)),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]


def prefix_chunks(
    first: Sequence[int], *, max_rows: int, waste_tokens: int = 32
) -> list[list[int]]:
    """Group rows into forwards over a shared cached prefix.

    first[r] is the first position at which row r differs from the clean prompt; a forward of
    rows R computes every row from min(first[R]) on, so row r recomputes first[r] - min(...)
    tokens it did not need to. Rows are taken from the latest first position down; a forward is
    closed when it is full or when its rows would recompute more than waste_tokens such tokens
    in all (about what the fixed cost of one more forward is worth on a CPU).
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    waste = 0
    for row in sorted(range(len(first)), key=lambda r: (-first[r], r)):
        extra = len(current) * (first[current[-1]] - first[row]) if current else 0
        if current and (len(current) >= max_rows or waste + extra > waste_tokens):
            chunks.append(current)
            current, waste, extra = [], 0, 0
        current.append(row)
        waste += extra
    if current:
        chunks.append(current)
    return chunks


def unwrap(model):
    """The model inside a DDP or DeepSpeed wrapper (the model itself when it is not wrapped)."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
        type(model).__name__ == "DeepSpeedEngine"
    ):
        model = model.module
    return model


@contextmanager
def logits_at(model, mask: torch.Tensor):
    """Inside the block, the model's output layer sees only the hidden states where ``mask``
    (batch, seq) is true: it returns logits (n_true, vocab) in row-major order. Whatever the
    model does after the output layer (e.g. Gemma's logit soft-capping) still applies."""

    def keep(_module, args):
        return (args[0][mask], *args[1:])

    handle = unwrap(model).get_output_embeddings().register_forward_pre_hook(keep)
    try:
        yield
    finally:
        handle.remove()
