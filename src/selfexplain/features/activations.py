"""Residual-stream activations of the target on the corpus, for the SAE and the feature records.

:func:`token_windows` cuts the corpus into equal-length token windows; :func:`collect_activations`
runs the target on them (batched, stopping after the read layer) and keeps the residual stream
at one layer (:func:`default_layer` when ``features.layer`` is null); :func:`token_mask` picks
the positions the SAE and the top contexts use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from selfexplain.features.corpus import Document
from selfexplain.hooks import capture_residual
from selfexplain.models import decoder_layers


def token_windows(
    tokenizer, docs: Sequence[Document], context_len: int, n_windows: int
) -> torch.Tensor:
    """(n, context_len) token ids: documents tokenised in order, joined by newlines and cut into
    consecutive windows; at most n_windows."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    need = context_len * n_windows
    for doc in docs:
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + newline
        if len(stream) >= need:
            break
    n = min(n_windows, len(stream) // context_len)
    if n == 0:
        raise ValueError(f"the corpus has fewer than context_len={context_len} tokens")
    return torch.tensor(stream[: n * context_len]).view(n, context_len)


class _Stop(Exception):
    """Raised by a hook after the read layer: the rest of the forward is not needed."""


@torch.no_grad()
def collect_activations(
    model, windows: torch.Tensor, layer: int, batch_size: int = 16
) -> torch.Tensor:
    """Residual stream (output of block ``layer``) on every window: (n, context_len, d)."""
    blocks = decoder_layers(model)

    def stop(module, args, output):
        raise _Stop

    out = []
    device = next(model.parameters()).device
    with capture_residual(model, [layer]) as store:
        handle = blocks[layer].register_forward_hook(stop)  # runs after the capture hook
        try:
            for start in tqdm(range(0, len(windows), batch_size), desc="activations", unit="batch"):
                ids = windows[start : start + batch_size].to(device)
                try:
                    model(input_ids=ids, attention_mask=torch.ones_like(ids))
                except _Stop:
                    pass
                out.append(store[layer].float().cpu())
        finally:
            handle.remove()
    return torch.cat(out)


OUTLIER_FACTOR = 10.0


def token_mask(
    windows: torch.Tensor, acts: torch.Tensor | None = None, skip_first: int = 1
) -> torch.Tensor:
    """Positions used for the SAE and for top contexts: all but the first ``skip_first`` of each
    window (the first position's residual is an outlier in most LMs: an attention sink) and,
    given the activations, all but those whose norm exceeds OUTLIER_FACTOR x the median (a few
    later tokens get sink-sized norms too; left in, they dominate the variance and the FVU)."""
    mask = torch.ones_like(windows, dtype=torch.bool)
    mask[:, :skip_first] = False
    if acts is not None:
        norms = acts.norm(dim=-1)
        mask &= norms <= OUTLIER_FACTOR * norms[mask].median()
    return mask


def default_layer(n_layers: int) -> int:
    """The middle layer (the read layer when features.layer is null)."""
    return max(0, math.ceil(n_layers / 2) - 1)
