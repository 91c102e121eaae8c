"""Numeric precision of a run: whether the hardware computes bfloat16 natively, train.precision
as a run uses it, a bf16 base model with float32 embeddings and output layer, and autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16() -> bool:
    """Whether this machine computes bfloat16 matmuls natively: a CUDA GPU that supports
    bf16, or a CPU with AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo; elsewhere: no)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, method: str, deepspeed: str | None = None) -> str:
    """train.precision as a run uses it: fp32 or bf16 (auto: bf16 for a LoRA run on hardware
    with native bf16 without DeepSpeed, else fp32; DeepSpeed and a GPU's fp32 runs autocast
    to bf16 on their own where the GPU has it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if method == "lora" and not deepspeed and native_bf16() else "fp32"
    return precision


def to_bf16(model, keep: Sequence[torch.nn.Module] = ()) -> None:
    """A bf16 run's base model: its weights in bfloat16, except the input and output
    embeddings (and the modules in ``keep``, e.g. a width map, whose float32 weights are
    saved), which stay float32; the output layer computes in float32 outside autocast.
    So the residual stream stays float32 (each block's bfloat16 output is added to it), and
    logits (only computed at answer tokens, logits_at) keep float32 resolution: scores and
    their differences keep more than bfloat16's three significant digits."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    kept = {id(p) for m in (head, embed, *keep) for p in m.parameters()}
    for param in model.parameters():
        if id(param) not in kept:
            param.data = param.data.to(torch.bfloat16)

    def float_forward(hidden):
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return F.linear(hidden.float(), head.weight.float(), bias)

    head.forward = float_forward


def bf16_autocast(model):
    """The model's matmuls in bfloat16 (autocast on its device), as the Trainer runs the
    training forwards of a bf16 run."""
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def autocast_bf16(score):
    """score(model) under bf16_autocast."""

    def scored(model):
        with bf16_autocast(model):
            return score(model)

    return scored
