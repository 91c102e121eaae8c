"""The training loss: the causal-LM loss on the answer tokens only, and the Trainers that
compute it (with each example's vector injected at its question's placeholder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from selfexplain.forward import logits_at, unwrap
from selfexplain.packing import model_inputs
from selfexplain.train.encode import IGNORE


def answer_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, object]:
    """The causal-LM loss on the labelled (answer) tokens, computing logits only where a
    next-token label exists: the output layer is the largest matmul of a step for models with
    large vocabularies (Gemma-3: 262k) and the answer is a few tokens of a long question.
    Equal to the model's own loss (mean over labelled tokens, or sum / num_items_in_batch)."""

    inputs = model_inputs(dict(inputs), unwrap(model))  # a packed batch's 4-D mask, additive
    labels = inputs.pop("labels")
    target = labels[:, 1:]
    labelled = target != IGNORE
    with logits_at(model, F.pad(labelled, (0, 1), value=False)):
        outputs = model(**inputs)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    loss = F.cross_entropy(logits, target[labelled].to(logits.device), reduction="sum")
    return loss / (labelled.sum() if num_items_in_batch is None else num_items_in_batch), outputs


class AnswerTrainer(Trainer):
    """A Trainer whose loss is answer_loss (identical value, less compute)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = answer_loss(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # num_items counts every process
        return (loss, outputs) if return_outputs else loss


class VectorTrainer(AnswerTrainer):
    """A Trainer whose forwards carry each example's vector at its question's placeholder."""

    def __init__(self, *args, injector, **kwargs):
        super().__init__(*args, **kwargs)
        self.injector = injector

    def compute_loss(self, model, inputs, *args, **kwargs):
        vectors = inputs.pop("vectors")
        prompt = (inputs["labels"] == IGNORE) & inputs["attention_mask"].bool()
        with self.injector.inject(model, inputs["input_ids"], vectors, allowed=prompt):
            return super().compute_loss(model, inputs, *args, **kwargs)
