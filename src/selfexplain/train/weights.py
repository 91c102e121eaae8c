"""The weights training changes: a LoRA adapter around the base model, and in-memory copies of
the trainable weights (the adapter, or every weight of a full fine-tune) to keep and restore."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from selfexplain.core.settings import TrainConfig


def lora_model(model, cfg: TrainConfig, modules_to_save: list[str] | None = None):
    """Wrap a causal LM with a LoRA adapter (modules_to_save are trained in full and saved)."""
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, lora)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights training changes: the LoRA adapter (and modules_to_save) of a
    peft model, every weight of a fully fine-tuned one."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(model)
    else:
        weights = model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in weights.items()}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Put a trainable_state copy back into the model."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state)
