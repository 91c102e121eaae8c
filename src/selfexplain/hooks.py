"""Read and overwrite the residual stream of a decoder-only LM with forward hooks.

The residual stream *at layer L* is the output hidden state of transformer block L
(``decoder_layers(model)[L]``), shape ``(batch, seq, d_model)``. A patch can also target the
*input* of block L (``site="input"``), which for L = 0 is the scaled token embedding: this is
where a continuous "vector token" is injected into an explainer's prompt.

Both context managers remove their hooks on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from selfexplain.models import decoder_layers

__all__ = ["ResidualPatch", "capture_residual", "patch_residual", "replay_blocks"]

Site = Literal["output", "input"]


@dataclass(frozen=True)
class ResidualPatch:
    """Overwrite the residual stream of block ``layer`` at ``(rows[i], positions[i])`` with
    ``values[i]``; positions are in the coordinates of the (padded) batch.

    ``site="output"`` (default) overwrites the block's output hidden state; ``site="input"``
    overwrites the hidden state entering the block. Gradients flow into ``values``.
    """

    layer: int
    rows: torch.Tensor  # (k,) batch indices
    positions: torch.Tensor  # (k,) sequence positions
    values: torch.Tensor  # (k, d_model)
    site: Site = "output"

    def __post_init__(self) -> None:
        k = self.rows.shape
        if self.rows.dim() != 1 or self.positions.shape != k or self.values.shape[:1] != k:
            raise ValueError(
                f"ResidualPatch: rows {tuple(self.rows.shape)}, positions "
                f"{tuple(self.positions.shape)} and values {tuple(self.values.shape)} must be "
                "(k,), (k,) and (k, d_model)"
            )
        if self.values.dim() != 2:
            raise ValueError(f"ResidualPatch: values must be 2-D, got {tuple(self.values.shape)}")
        if self.site not in ("output", "input"):
            raise ValueError(f"ResidualPatch: site must be 'output' or 'input', got {self.site!r}")


def _hidden(output: Any) -> torch.Tensor:
    """The hidden state in a block's output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _check_layers(n_layers: int, layers: Sequence[int]) -> None:
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise IndexError(f"layers {bad} out of range: the model has {n_layers} blocks")


def _apply(hidden: torch.Tensor, patches: Sequence[ResidualPatch]) -> torch.Tensor:
    """hidden with every patch written in (out of place, so autograd sees the values)."""
    for p in patches:
        dev = hidden.device
        hidden = hidden.index_put(
            (p.rows.to(dev), p.positions.to(dev)), p.values.to(device=dev, dtype=hidden.dtype)
        )
    return hidden


@contextmanager
def capture_residual(model, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream (block outputs) at the given layers during forwards inside
    the block: the yielded dict maps layer -> detached ``(batch, seq, d_model)`` tensor of the
    most recent forward."""
    blocks = decoder_layers(model)
    _check_layers(len(blocks), layers)
    store: dict[int, torch.Tensor] = {}

    def make_hook(layer: int) -> Callable:
        def hook(module, args, output) -> None:
            store[layer] = _hidden(output).detach()

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in set(layers)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch_residual(model, patches: Sequence[ResidualPatch]) -> Iterator[None]:
    """Overwrite the residual stream during forwards inside the block: for each patch, the
    hidden state of batch row ``rows[i]`` at ``positions[i]`` becomes ``values[i]``. Patches on
    the same layer and site apply in order (a later one wins where they overlap)."""
    blocks = decoder_layers(model)
    _check_layers(len(blocks), [p.layer for p in patches])
    by_site: dict[tuple[int, str], list[ResidualPatch]] = {}
    for p in patches:
        by_site.setdefault((p.layer, p.site), []).append(p)

    def out_hook(group: list[ResidualPatch]) -> Callable:
        def hook(module, args, output):
            return _replace_hidden(output, _apply(_hidden(output), group))

        return hook

    def in_hook(group: list[ResidualPatch]) -> Callable:
        def hook(module, args, kwargs):
            if args:
                return (_apply(args[0], group), *args[1:]), kwargs
            return args, kwargs | {"hidden_states": _apply(kwargs["hidden_states"], group)}

        return hook

    handles = []
    try:
        for (layer, site), group in by_site.items():
            if site == "output":
                handles.append(blocks[layer].register_forward_hook(out_hook(group)))
            else:
                handles.append(
                    blocks[layer].register_forward_pre_hook(in_hook(group), with_kwargs=True)
                )
        yield
    finally:
        for h in handles:
            h.remove()


class _Replay(torch.nn.Module):
    """Stands in for a block: returns a fixed hidden state, the same for every batch row."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if hidden_states.shape[1:] != self.hidden.shape:
            raise ValueError(
                f"replayed block output has shape {tuple(self.hidden.shape)}, the forward has "
                f"hidden states of shape {tuple(hidden_states.shape[1:])}"
            )
        return self.hidden.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)


@contextmanager
def replay_blocks(model, outputs: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Skip blocks during forwards inside the block: block L is not run, its output is
    ``outputs[L]`` (``(seq, d_model)``, broadcast over the batch). Right when every row's
    input to those blocks is known to equal the run the outputs were recorded from, e.g. the
    blocks below a patch. The blocks are put back on exit, also when the body raises."""
    blocks = decoder_layers(model)
    _check_layers(len(blocks), list(outputs))
    saved = {layer: blocks[layer] for layer in outputs}
    try:
        for layer, hidden in outputs.items():
            blocks[layer] = _Replay(hidden)
        yield
    finally:
        for layer, block in saved.items():
            blocks[layer] = block
