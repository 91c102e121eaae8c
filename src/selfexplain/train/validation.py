"""Learning diagnostics during training: a held-out validation split scored every
``eval_steps`` steps, the best step's weights kept (and carried through checkpoints), and early
stopping after ``patience`` scores without improvement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import torch
from transformers import TrainerCallback

from selfexplain.core.formats import format_of, parse_change
from selfexplain.core.settings import TrainConfig
from selfexplain.evaluate.scoring import change_scores
from selfexplain.metrics import auc, balanced_accuracy, best_threshold
from selfexplain.precision import autocast_bf16
from selfexplain.train.encode import IGNORE, encode_rows
from selfexplain.train.loss import answer_loss
from selfexplain.train.rows import example_vectors, is_change_frame
from selfexplain.train.weights import load_trainable_state, trainable_state


class Validation(TrainerCallback):
    """Learning diagnostics: score a held-out validation split every ``eval_steps`` optimizer
    steps (and before the first), keep the best adapter in memory, stop after ``patience``
    scores without improvement. The score before the first step starts the curve but is never
    the kept one: an explainer left at its initial weights is the `untrained` variant, and a
    noisy first score must not stop training before it has begun.

    ``score(model) -> dict`` returns metrics, ``metric`` names the one that selects (higher is
    better; "a+b": a, ties broken by b).
    The curve, the best step and the best adapter's weights travel inside each Trainer
    checkpoint (written in on_save, after the Trainer's own files), so a resumed run continues
    the same curve and still returns the best adapter seen before the interruption.
    """

    STATE = "selfexplain_validation.json"
    BEST = "selfexplain_best.safetensors"

    def __init__(self, score, metric: str, eval_steps: int, patience: int, resume: str | None):
        self.score, self.metric = score, metric
        self.eval_steps, self.patience = eval_steps, patience
        self.curve: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.model = None
        if resume and (Path(resume) / self.STATE).is_file():
            from safetensors.torch import load_file

            state = json.loads((Path(resume) / self.STATE).read_text())
            self.curve, self.best = state["curve"], state["best"]
            if (Path(resume) / self.BEST).is_file():
                self.best_state = load_file(str(Path(resume) / self.BEST))

    def _evaluate(self, state, control) -> None:
        if self.curve and self.curve[-1]["step"] == state.global_step:
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics = self.score(self.model)
        self.model.train(was_training)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = [metrics]  # every process of a launch takes rank 0's scores: same stops
            torch.distributed.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        losses = [e["loss"] for e in state.log_history if "loss" in e]
        point = {"step": state.global_step, "epoch": state.epoch or 0.0} | metrics
        point["train_loss"] = losses[-1] if losses else None
        self.curve.append(point)
        if state.global_step == 0:  # the starting point: never kept (that is `untrained`)
            print(f"validation step 0 (before training): {metrics}")
            return
        value = [metrics[m] for m in self.metric.split("+")]  # ties go to the second metric
        if any(v != v for v in value):  # nan: one class in the validation split
            value = [float("-inf")] * len(value)
        if self.best is None or value >= self.best["value"]:  # ties: the later, longer-trained
            self.best = {"step": state.global_step, "value": value, "metric": self.metric}
            self.best |= {k: v for k, v in metrics.items() if k == "threshold"}
            self.best_state = trainable_state(self.model)
        since = sum(1 for p in self.curve if p["step"] > self.best["step"])
        print(f"validation step {state.global_step}: {metrics} (best step {self.best['step']})")
        if self.patience and since >= self.patience:
            print(f"early stop: no improvement of {self.metric} in {since} validation scores")
            control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        if not self.curve:  # fresh run: the starting point of the curve
            self._evaluate(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps == 0 or state.global_step >= state.max_steps:
            self._evaluate(state, control)
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if os.environ.get("RANK", "0") != "0":
            return
        from safetensors.torch import save_file

        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        if self.best_state is not None:
            save_file(self.best_state, str(ckpt / f".{self.BEST}.tmp"))
            os.replace(ckpt / f".{self.BEST}.tmp", ckpt / self.BEST)
        (ckpt / f".{self.STATE}.tmp").write_text(
            json.dumps({"curve": self.curve, "best": self.best}, default=float)
        )
        os.replace(ckpt / f".{self.STATE}.tmp", ckpt / self.STATE)

    def restore_best(self, model) -> None:
        """Load the best validation step's trained weights into the model."""
        if self.best_state is not None:
            load_trainable_state(model, self.best_state)


def validation_scorer(tokenizer, validation: pl.DataFrame, cfg: TrainConfig, collator, injector):
    """(score(model) -> metrics, the metric that selects the best step) for a validation split.

    Feature rows (vectors, descriptions): the answer-token loss (negated as ``neg_loss``,
    higher is better). Change-task rows (with or without vectors): the teacher-forced
    has-changed AUC (selects; ties: balanced accuracy), the threshold on the score that
    maximises the validation balanced accuracy, that balanced accuracy, and the one at
    threshold 0."""
    if injector is not None and not is_change_frame(validation):
        return answer_loss_scorer(tokenizer, validation, cfg, collator, injector), "neg_loss"
    return change_scorer(tokenizer, validation, cfg, injector), "auc+balanced_accuracy"


def answer_loss_scorer(tokenizer, validation: pl.DataFrame, cfg: TrainConfig, collator, injector):
    """score(model) -> {"loss", "neg_loss"}: the answer-token loss of the validation rows, each
    with its vector injected at its question's placeholder."""
    data = encode_rows(tokenizer, validation, cfg, injector)

    def loss_score(model) -> dict:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, len(data), cfg.batch_size):
            batch = {k: v.to(device) for k, v in collator(data[i : i + cfg.batch_size]).items()}
            vectors = batch.pop("vectors")
            prompt = (batch["labels"] == IGNORE) & batch["attention_mask"].bool()
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            with injector.inject(model, batch["input_ids"], vectors, allowed=prompt):
                loss, _ = answer_loss(model, batch, num_items_in_batch=n)
            total, count = total + float(loss) * n, count + n
        return {"loss": total / count, "neg_loss": -total / count}

    return loss_score


def change_scorer(tokenizer, validation: pl.DataFrame, cfg: TrainConfig, injector):
    """score(model) -> {"auc", "balanced_accuracy", "threshold", "balanced_accuracy_at_0"}:
    the teacher-forced has-changed scores of the validation questions (their vectors injected
    when an injector is given) against their answers."""
    questions = validation["question"].to_list()
    gold = [bool(parse_change(a).changed) for a in validation["answer"]]
    fmt = format_of(validation["answer"].to_list())  # the forms the explainer is taught

    vectors = example_vectors(validation) if injector is not None else None

    def change_score(model) -> dict:
        score = change_scores(
            model,
            tokenizer,
            questions,
            batch_size=cfg.batch_size * 2,
            pack=cfg.pack,
            fmt=fmt,
            vectors=vectors,
            injector=injector,
        )
        cut = best_threshold(gold, score)
        return {
            "auc": auc(gold, score),
            "balanced_accuracy": balanced_accuracy(gold, score > cut),
            "threshold": cut,
            "balanced_accuracy_at_0": balanced_accuracy(gold, score > 0),
        }

    return change_score


def validation_callback(
    tokenizer,
    validation: pl.DataFrame | None,
    cfg: TrainConfig,
    collator,
    injector,
    *,
    bf16: bool,
    resume: str | None,
) -> Validation | None:
    """The Validation callback for a run's validation split (None without one), resuming its
    curve and best weights from the checkpoint ``resume``; bf16: score under bfloat16
    autocast, as the run trains."""
    if validation is None or not len(validation):
        return None
    score, metric = validation_scorer(tokenizer, validation, cfg, collator, injector)
    if bf16:
        score = autocast_bf16(score)
    return Validation(score, metric, cfg.eval_steps, cfg.patience, resume)
