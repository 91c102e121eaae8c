"""Explainer fine-tuning: HF Trainer + peft LoRA, loss on the answer tokens only, resumable.

:func:`train_explainer` runs these steps in order: :func:`build_explainer` (the model, as a
LoRA adapter or in full, with an injector for rows that carry vectors), :func:`training_data`
(the rows encoded, cached and maybe packed; encode.py), :func:`training_arguments`, the run's
fingerprint and the checkpoint it resumes (checkpoints.py), the validation callback
(validation.py), :func:`build_trainer` (loss.py's Trainers), :func:`train_from` (the training
itself), then, on rank 0, :func:`train_summary` and :func:`write_explainer`.

Rows with a vector (feature task; patching asked in the paper format) get it injected at their
question's placeholder (``injection``: {"layer", "scale"}, and for another model's vectors
"map_from": its model directory, "map_exclude": token ids; see selfexplain.features.injection);
a linear map is trained with the adapter when the vector's width differs from the explainer's.

A validation split is scored every cfg.eval_steps steps: change tasks by the teacher-forced
has-changed AUC and balanced accuracy (scoring.py; the best step's validation-calibrated
threshold on the score is kept in ``best["threshold"]``; with their vectors injected, if they
have any), feature descriptions by the answer-token loss. The adapter saved is the best
validation step's; the curve goes into train_summary.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import torch
from transformers import TrainingArguments, set_seed

from selfexplain.core.formats import format_of
from selfexplain.core.settings import TrainConfig
from selfexplain.evaluate.summary import SUMMARY
from selfexplain.features.injection import MAP_NAME, Injector
from selfexplain.models import load
from selfexplain.packing import PackCollator, packed_batches
from selfexplain.precision import resolve_precision, to_bf16
from selfexplain.train.checkpoints import FINGERPRINT, last_complete_checkpoint, run_fingerprint
from selfexplain.train.encode import RightPadCollator, encode_rows
from selfexplain.train.launch import is_main_process, single_process_env, world_size
from selfexplain.train.loss import AnswerTrainer, VectorTrainer
from selfexplain.train.rows import example_vectors, is_change_frame, vectors_asked
from selfexplain.train.validation import Validation, validation_callback
from selfexplain.train.weights import lora_model


@dataclass
class Explainer:
    """The model being trained (peft-wrapped for LoRA), its tokenizer, the injector of the
    rows' vectors (None when they carry none) and the precision as resolved."""

    model: torch.nn.Module
    tokenizer: object
    injector: Injector | None
    precision: str

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


@dataclass
class TrainData:
    """What the Trainer iterates over, and what the summary counts of it."""

    items: list[dict]  # encoded rows, or (packed) one item per batch
    collator: object  # the Trainer's: RightPadCollator, or PackCollator for packed items
    row_collator: RightPadCollator  # pads encoded rows (the validation loss uses it)
    packed: bool
    per_device: int  # questions per process and step
    world: int  # processes of the launch
    n_rows: int
    n_row_tokens: int  # of the rows, unpacked
    n_sequences: int
    n_tokens_computed: int


def train_explainer(
    model_path: str | Path,
    examples: pl.DataFrame,
    out_dir: str | Path,
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    callbacks: list | None = None,
    injection: dict | None = None,
    validation: pl.DataFrame | None = None,
    base_rate: float | None = None,
    question_format: str | None = None,
) -> dict:
    """Fine-tune an explainer on (question, answer) rows, as a LoRA adapter (cfg.method "lora")
    or in full ("full": out_dir is then a whole model directory); resume from the last
    checkpoint. Returns the summary written to out_dir/train_summary.json.

    checkpoint_dir keeps Trainer checkpoints (every cfg.save_steps steps) across runs: a rerun
    with the same settings, data and model (see run_fingerprint) resumes from the newest
    complete one. callbacks are extra transformers TrainerCallbacks (tests use one to interrupt).
    injection: how rows with vectors are injected (module docstring). validation: held-out rows
    of the same kind (grouped apart from the training rows by the caller), scored every
    cfg.eval_steps steps; the best step's adapter is the one saved. base_rate: the share of
    changed answers in the caller's whole train split (the draw is balanced), recorded for
    calibrated_threshold(natural=True). question_format: how the caller wrote the questions
    (examples.with_question_format), recorded so evaluation asks the same way.
    """
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir or out_dir / "checkpoints")
    examples = vectors_asked(examples)
    validation = None if validation is None else vectors_asked(validation)
    explainer = build_explainer(model_path, examples, cfg, injection)
    data = training_data(explainer, examples, cfg, checkpoint_dir)
    injecting = explainer.injector is not None
    args = training_arguments(cfg, checkpoint_dir, data, explainer.bf16, injecting, validation)
    fingerprint = run_fingerprint(model_path, examples, cfg, injection, validation)
    last = last_complete_checkpoint(checkpoint_dir, fingerprint)
    validator = validation_callback(
        explainer.tokenizer,
        validation,
        cfg,
        data.row_collator,
        explainer.injector,
        bf16=explainer.bf16,
        resume=last,
    )
    callbacks = list(callbacks or []) + ([validator] if validator is not None else [])
    trainer = build_trainer(explainer, args, data, callbacks)
    result, seconds = train_from(trainer, last, checkpoint_dir, fingerprint)
    if validator is not None:
        validator.restore_best(explainer.model)
    if not is_main_process():  # a launch's other processes: rank 0 writes
        return {"steps": trainer.state.global_step, "seconds": seconds}
    summary = train_summary(
        trainer, result, seconds, data, explainer.precision, cfg, examples=examples,
        validation=validation, validator=validator, resumed_from=last,
        fingerprint=fingerprint, base_rate=base_rate, question_format=question_format,
    )  # fmt: skip
    write_explainer(out_dir, explainer, cfg, summary)
    return summary


def build_explainer(
    model_path: str | Path, examples: pl.DataFrame, cfg: TrainConfig, injection: dict | None
) -> Explainer:
    """Load the base model for training (seeded), wrapped in a LoRA adapter for cfg.method
    "lora", the frozen base in bfloat16 for precision bf16, and an injector bound to it when
    the rows carry vectors."""
    if cfg.deepspeed:
        single_process_env()
    set_seed(cfg.seed)
    model, tokenizer = load(model_path)
    model.train()
    precision = resolve_precision(cfg.precision, cfg.method, cfg.deepspeed)
    bf16 = precision == "bf16"
    if bf16 and cfg.method == "full":
        raise ValueError(
            "train.precision bf16 keeps the frozen base in bfloat16, but method 'full' trains "
            "every weight: use precision fp32 with method full"
        )
    vectors = example_vectors(examples)
    injector = None
    if vectors is not None:
        injector = Injector.from_settings(model, tokenizer, len(vectors[0]), injection, cfg.seed)
    if bf16:  # after the injector measured its reference norm in float32
        to_bf16(model, keep=[injector.map] if injector is not None and injector.map else [])
    to_save = [MAP_NAME] if injector is not None and injector.spec.has_map else None
    if cfg.method not in ("lora", "full"):
        raise ValueError(f"train.method must be 'lora' or 'full', got {cfg.method!r}")
    if cfg.method == "lora":
        model = lora_model(model, cfg, modules_to_save=to_save)
    if bf16:
        for param in model.parameters():  # what the optimizer updates stays in float32
            if param.requires_grad:
                param.data = param.data.float()
    if injector is not None:
        injector.bind(model)
        if injector.map is not None and injector.spec.map_init != "random":
            # a map fitted on the embeddings stays as it is: the nearest analogue of the
            # identity through which a model reads its own vectors (trained, it memorises the
            # training vectors; injection.py); it is still saved with the adapter
            injector.map.requires_grad_(False)
    return Explainer(model, tokenizer, injector, precision)


def training_data(
    explainer: Explainer, examples: pl.DataFrame, cfg: TrainConfig, checkpoint_dir: Path
) -> TrainData:
    """The rows encoded (tokenized once, cached in checkpoint_dir by rank 0) and, for cfg.pack
    > 1 without vectors, packed into batches of up to cfg.pack questions per sequence; checks
    that cfg.pack and cfg.batch_size fit the launch."""
    # rank 0 alone keeps the tokenized rows (a launch's other processes tokenize in memory)
    cache = checkpoint_dir if is_main_process() else None
    tokenizer, injector = explainer.tokenizer, explainer.injector
    data = encode_rows(tokenizer, examples, cfg, injector, cache) if len(examples) else []
    if not data:
        raise ValueError("no training examples: check the task's labels and n_train in config")
    if not 1 <= cfg.pack <= cfg.batch_size:
        raise ValueError(
            f"train.pack must be between 1 and train.batch_size ({cfg.batch_size}), "
            f"got {cfg.pack}: e.g. pack 4 with batch_size 8"
        )
    world = world_size()  # processes of a torchrun launch
    if cfg.batch_size % world:
        raise ValueError(
            f"train.batch_size ({cfg.batch_size}) must split evenly across the {world} "
            f"processes of the launch (train.processes): e.g. batch_size {world * 4}"
        )
    per_device = cfg.batch_size // world  # a step still takes batch_size questions in all
    packed = cfg.pack > 1 and injector is None
    n_rows, n_row_tokens = len(data), sum(len(d["input_ids"]) for d in data)
    collator = RightPadCollator(tokenizer.pad_token_id)
    if packed:
        items, n_tokens_computed = packed_batches(
            data, min(cfg.pack, per_device), per_device, cfg.seed
        )
        n_sequences = sum(len(item["packs"]) for item in items)  # one item per batch
        train_collator = PackCollator(tokenizer.pad_token_id)
        print(f"packed {n_rows} rows into {n_sequences} sequences of up to {cfg.pack} questions")
    else:
        items, train_collator = data, collator
        n_sequences, n_tokens_computed = n_rows, n_row_tokens
    return TrainData(
        items,
        train_collator,
        collator,
        packed,
        per_device,
        world,
        n_rows,
        n_row_tokens,
        n_sequences,
        n_tokens_computed,
    )


def training_arguments(
    cfg: TrainConfig,
    checkpoint_dir: Path,
    data: TrainData,
    bf16: bool,
    injecting: bool,
    validation: pl.DataFrame | None,
) -> TrainingArguments:
    """The HF TrainingArguments of a run: cfg's optimisation settings, checkpoints in
    checkpoint_dir (every cfg.eval_steps steps with a validation split, else cfg.save_steps),
    one packed batch per item, the columns the Trainers need kept (injecting: "vectors")."""
    use_cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=1 if data.packed else data.per_device,  # packed: batch items
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps if validation is not None else cfg.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not use_cuda,
        bf16=bf16 or (use_cuda and torch.cuda.is_bf16_supported()),
        deepspeed=cfg.deepspeed,
        ddp_backend=None if use_cuda or data.world == 1 else "gloo",  # CPU process groups
        ddp_find_unused_parameters=False if data.world > 1 else None,
        dataloader_num_workers=0,
        disable_tqdm=False,
        train_sampling_strategy=(
            "group_by_length" if cfg.group_by_length and not data.packed else "random"
        ),
        # keep "vectors" for VectorTrainer, the segments of packs for PackCollator
        remove_unused_columns=not injecting and not data.packed,
        **cfg.extra,
    )


def build_trainer(
    explainer: Explainer, args: TrainingArguments, data: TrainData, callbacks: list
) -> AnswerTrainer:
    """The Trainer of the answer loss: a VectorTrainer when the rows' vectors are injected."""
    extra = {"injector": explainer.injector} if explainer.injector is not None else {}
    return (VectorTrainer if explainer.injector is not None else AnswerTrainer)(
        model=explainer.model,
        args=args,
        train_dataset=data.items,
        data_collator=data.collator,
        callbacks=callbacks,
        **extra,
    )


def train_from(
    trainer: AnswerTrainer, checkpoint: str | None, checkpoint_dir: Path, fingerprint: str
) -> tuple[object, float]:
    """Mark checkpoint_dir as the run with this fingerprint (rank 0), then train, resuming
    from checkpoint (None: from the start): (the Trainer's TrainOutput, seconds)."""
    if is_main_process():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        marker = json.dumps({"fingerprint": fingerprint}) + "\n"
        (checkpoint_dir / FINGERPRINT).write_text(marker)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return result, time.perf_counter() - start


def train_summary(
    trainer: AnswerTrainer,
    result,
    seconds: float,
    data: TrainData,
    precision: str,
    cfg: TrainConfig,
    *,
    examples: pl.DataFrame,
    validation: pl.DataFrame | None,
    validator: Validation | None,
    resumed_from: str | None,
    fingerprint: str,
    base_rate: float | None,
    question_format: str | None,
) -> dict:
    """The run's train_summary.json (evaluate.summary reads it)."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "n_examples": data.n_rows,
        "n_tokens": data.n_row_tokens,  # of the rows, unpacked
        "n_sequences": data.n_sequences,
        "n_tokens_computed": data.n_tokens_computed,
        "processes": data.world,
        "precision": precision,  # as resolved (cfg.precision may say auto)
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "final_logged_loss": losses[-1] if losses else None,
        "seconds": seconds,
        "n_validation": 0 if validation is None else len(validation),
        "base_rate": base_rate,
        # the change answers' metrics.AnswerFormat, which evaluation scores and generates in
        "answer_format": (
            format_of(examples["answer"]).name if is_change_frame(examples) else None
        ),
        # how the rows' questions were written (examples.with_question_format; None: ours)
        "question_format": question_format,
        "validation": validator.curve if validator else [],
        "best": validator.best if validator else None,
        "stopped_early": bool(validator and trainer.state.global_step < trainer.state.max_steps),
        "resumed_from": resumed_from,
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "log_history": trainer.state.log_history,
    }


def write_explainer(out_dir: Path, explainer: Explainer, cfg: TrainConfig, summary: dict) -> None:
    """Write the trained explainer into out_dir: the adapter (LoRA) or the whole model and its
    tokenizer (full), the injector's spec, and train_summary.json, each renamed into place."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    # LoRA: the adapter; full: the whole model (with any vector_map)
    explainer.model.save_pretrained(tmp)
    if cfg.method == "full":
        explainer.tokenizer.save_pretrained(tmp)
    if explainer.injector is not None:  # the vector_map itself is saved inside the adapter / model
        explainer.injector.spec.save(tmp)
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    # Each file is renamed into place (atomic on one filesystem), the summary last: a
    # train_summary.json newer than the adapter marks a complete directory. Snakemake also
    # marks the job's outputs incomplete until it succeeds (rerun-incomplete reruns it).
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == SUMMARY):
        os.replace(f, out_dir / f.name)
    tmp.rmdir()
