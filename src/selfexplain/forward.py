"""Batched forward passes over token-id sequences of different lengths (left padding)."""

from __future__ import annotations

from collections.abc import Sequence

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
    device = next(model.parameters()).device
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_left(seqs[start : start + batch_size], pad_id)
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids(mask).to(device),
            logits_to_keep=1,
        ).logits[:, -1]
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)
