"""Explainer fine-tuning: HF Trainer + peft LoRA, loss on the answer tokens only, resumable."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from selfexplain.core.formats import PLACEHOLDER, format_of, format_prompt, parse_change
from selfexplain.core.schema import has_vectors, without_vectors
from selfexplain.core.settings import TrainConfig
from selfexplain.evaluate.scoring import change_scores
from selfexplain.evaluate.summary import SUMMARY
from selfexplain.features.injection import MAP_FIT, MAP_NAME, Injector
from selfexplain.forward import logits_at, unwrap
from selfexplain.metrics import auc, balanced_accuracy, best_threshold
from selfexplain.models import MANIFEST, load
from selfexplain.packing import PackCollator, model_inputs, packed_batches
from selfexplain.precision import autocast_bf16, resolve_precision, to_bf16
from selfexplain.tasks import CHANGE_TASKS

IGNORE = -100


def encode_example(tokenizer, question: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels only on the answer and EOS."""
    prompt_ids = tokenizer(format_prompt(question))["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)) :]
    ids = prompt_ids + answer_ids
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE] * len(prompt_ids) + answer_ids,
    }


class RightPadCollator:
    """Pad a batch of encoded examples on the right (labels padded with -100); examples that
    carry a "vector" (feature task) give a float "vectors" tensor (batch, d)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        out = {}
        for key, fill in (("input_ids", self.pad_id), ("attention_mask", 0), ("labels", IGNORE)):
            out[key] = torch.tensor([b[key] + [fill] * (width - len(b[key])) for b in batch])
        if "vector" in batch[0]:
            out["vectors"] = torch.tensor([b["vector"] for b in batch], dtype=torch.float32)
        return out


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


def is_change_frame(examples: pl.DataFrame) -> bool:
    """Whether the rows are change-task questions (their answers say "unchanged" or "changes
    to"), as opposed to feature descriptions; by the frame's task column."""

    tasks = examples["task"] if "task" in examples.columns else ()
    return bool(len(tasks)) and tasks[0] in CHANGE_TASKS


def vectors_asked(examples: pl.DataFrame) -> pl.DataFrame:
    """The rows, without the vectors of change-task rows whose questions have no placeholder
    for them: patching labels keep each patch's vector, but a compact question names the
    patch in words (only the paper question injects it; examples.with_question_format)."""

    if not has_vectors(examples) or not is_change_frame(examples):
        return examples
    if examples["question"].str.contains(PLACEHOLDER, literal=True).any():
        return examples
    return without_vectors(examples)


def example_vectors(examples: pl.DataFrame) -> list[list[float]] | None:
    """The examples' vectors, or None when they carry none (all rows must agree)."""
    if not has_vectors(examples):
        return None
    if examples["vector"].null_count():
        raise ValueError("some examples have a vector and some do not: cannot mix them")
    return examples["vector"].to_list()


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


def single_process_env() -> None:
    """Set the torch.distributed variables DeepSpeed needs when not started by a launcher."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as sock:  # a free local port for the one-process process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    os.environ.update(defaults | {"MASTER_PORT": str(port)})


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


FINGERPRINT = "selfexplain_fingerprint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_fingerprint(
    model_path: str | Path,
    examples: pl.DataFrame,
    cfg: TrainConfig,
    injection: dict | None = None,
    validation: pl.DataFrame | None = None,
) -> str:
    """sha256 of what a training run depends on: its settings, its data and its base model.

    Checkpoints are only resumed by a run with the same fingerprint, so a rerun after the
    labels, the config or the model changed starts afresh instead of silently continuing (or
    returning) the old run. The model enters through its manifest (spec, seed, GGUF sha256)
    or, for a plain directory, its config and the names and sizes of its weight files.
    """
    model_path = Path(model_path)
    manifest = model_path / MANIFEST
    if manifest.is_file():
        model_id = json.loads(manifest.read_text())
        model_id.pop("convert_seconds", None)
    else:
        config = model_path / "config.json"
        model_id = {
            "config": config.read_text() if config.is_file() else None,
            "weights": sorted(
                (f.name, f.stat().st_size)
                for f in model_path.iterdir()
                if f.suffix in (".safetensors", ".bin")
            ),
        }
    h = hashlib.sha256()
    h.update(json.dumps({"cfg": asdict(cfg), "model": model_id}, sort_keys=True).encode())
    for question, answer in zip(examples["question"], examples["answer"], strict=True):
        h.update(json.dumps([question, answer]).encode())
        h.update(b"\n")
    if validation is not None:  # the validation ids select the adapter that is returned
        h.update(json.dumps(sorted(validation["id"].to_list())).encode())
    vectors = example_vectors(examples)
    if vectors is not None:  # only for tasks with vectors: other fingerprints stay as they were
        if injection and injection.get("map_from"):  # read through a fitted map: how it is fitted
            injection = injection | {"map_fit": MAP_FIT}
        h.update(json.dumps({"injection": injection}, sort_keys=True).encode())
        h.update(torch.tensor(vectors, dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()


def _complete(checkpoint: Path) -> bool:
    """A checkpoint is complete once trainer_state.json, written last by the Trainer, parses
    and names the checkpoint's own step (a kill during saving leaves it missing)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return f"checkpoint-{state.get('global_step')}" == checkpoint.name


def last_complete_checkpoint(checkpoint_dir: str | Path, fingerprint: str) -> str | None:
    """The newest complete checkpoint of the run with this fingerprint, or None.

    Checkpoints of another run (other fingerprint) and incomplete ones (interrupted while
    saving) are deleted so the Trainer neither resumes nor rotates them.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    marker = checkpoint_dir / FINGERPRINT
    try:
        previous = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError):
        previous = None
    found = sorted(
        (int(m.group(1)), p)
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    main = os.environ.get("RANK", "0") == "0"  # under a launcher only rank 0 deletes
    if previous != fingerprint:
        for _, path in found:
            print(f"removing {path}: it belongs to a run with other settings, data or model")
            if main:
                shutil.rmtree(path, ignore_errors=True)
        return None
    for _, path in reversed(found):
        if _complete(path):
            return str(path)
        print(f"removing incomplete checkpoint {path} (interrupted while saving)")
        if main:
            shutil.rmtree(path, ignore_errors=True)
    return None


def tokenization_key(tokenizer, questions: list[str], answers: list[str], max_length: int) -> str:
    """sha256 of what encode_example's output depends on: the rows, max_length, the tokenizer
    (its serialised vocabulary and special tokens) and the code that formats and encodes."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    code = inspect.getsource(encode_example) + inspect.getsource(format_prompt)
    for part in (vocab, json.dumps(special), code, str(max_length)):
        h.update(part.encode())
        h.update(b"\x00")
    for q, a in zip(questions, answers, strict=True):
        h.update(q.encode() + b"\x01" + a.encode() + b"\x02")
    return h.hexdigest()


def tokenize_rows(
    tokenizer,
    questions: list[str],
    answers: list[str],
    max_length: int,
    cache_dir: str | Path | None = None,
) -> list[dict]:
    """encode_example over the rows as a Hugging Face ``datasets`` map. With cache_dir the
    result is kept there as an Arrow file named by tokenization_key, so a rerun or a resumed
    run on the same rows, tokenizer and max_length loads it instead of tokenizing again (at the
    paper's 100k+ rows and 8B tokenizers that is minutes)."""
    import datasets

    def encode(batch: dict) -> dict:
        rows = [
            encode_example(tokenizer, q, a, max_length)
            for q, a in zip(batch["question"], batch["answer"], strict=True)
        ]
        return {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")}

    table = datasets.Dataset.from_dict({"question": questions, "answer": answers})
    cache = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        key = tokenization_key(tokenizer, questions, answers, max_length)[:20]
        cache = str(Path(cache_dir) / f"tokenized-{key}.arrow")
        for stale in Path(cache_dir).glob("tokenized-*.arrow"):  # other rows or settings
            if str(stale) != cache:
                stale.unlink(missing_ok=True)
    with _quiet_datasets():
        encoded = table.map(
            encode,
            batched=True,
            remove_columns=["question", "answer"],
            cache_file_name=cache,
            load_from_cache_file=cache is not None,
            keep_in_memory=cache is None,
            new_fingerprint=None if cache is None else Path(cache).stem,
            desc="tokenize",
        )
    return encoded.to_list()


@contextmanager
def _quiet_datasets():
    """No progress bar for a map over a few hundred rows (the Trainer's bar follows)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def _encode_rows(
    tokenizer, examples: pl.DataFrame, cfg: TrainConfig, injector, cache_dir=None
) -> list[dict]:
    """Encoded (question, answer) rows (tokenize_rows; cached in cache_dir when given); with an
    injector, questions carry its placeholder and each row its vector."""
    questions = examples["question"].to_list()
    if injector is not None:
        questions = injector.render(questions)
    data = tokenize_rows(
        tokenizer, questions, examples["answer"].to_list(), cfg.max_length, cache_dir
    )
    for d, v in zip(data, example_vectors(examples) or [], strict=False):
        d["vector"] = v
    return data


def validation_scorer(tokenizer, validation: pl.DataFrame, cfg: TrainConfig, collator, injector):
    """(score(model) -> metrics, the metric that selects the best step) for a validation split.

    Feature rows (vectors, descriptions): the answer-token loss (negated as ``neg_loss``,
    higher is better). Change-task rows (with or without vectors): the teacher-forced
    has-changed AUC (selects; ties: balanced accuracy), the threshold on the score that
    maximises the validation balanced accuracy, that balanced accuracy, and the one at
    threshold 0."""
    if injector is not None and not is_change_frame(validation):
        data = _encode_rows(tokenizer, validation, cfg, injector)

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

        return loss_score, "neg_loss"

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

    return change_score, "auc+balanced_accuracy"


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
    checkpoint.

    checkpoint_dir keeps Trainer checkpoints (every cfg.save_steps steps) across runs: a rerun
    with the same settings, data and model (see run_fingerprint) resumes from the newest
    complete one. callbacks are extra transformers TrainerCallbacks (tests use one to interrupt).
    Rows with a vector (feature task; patching asked in the paper format) get it injected at
    their question's placeholder
    (``injection``: {"layer", "scale"}, and for another model's vectors "map_from": its model
    directory, "map_exclude": token ids; see selfexplain.features.injection); a linear map is
    trained with the adapter when the vector's width differs from the explainer's.

    validation: held-out rows of the same kind (grouped apart from the training rows by the
    caller). Scored every cfg.eval_steps steps: change tasks by the teacher-forced has-changed
    AUC and balanced accuracy (scoring.py; the best step's validation-calibrated threshold on
    the score is kept in ``best["threshold"]``; with their vectors injected, if they have any),
    feature descriptions by the answer-token loss.
    The adapter saved is the best validation step's; the curve goes into train_summary.json.
    base_rate: the share of changed answers in the caller's whole train split (the draw is
    balanced), recorded for calibrated_threshold(natural=True). question_format: how the
    caller wrote the questions (examples.with_question_format), recorded so evaluation asks
    the same way.
    """
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir or out_dir / "checkpoints")
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
    examples = vectors_asked(examples)
    validation = None if validation is None else vectors_asked(validation)
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
    # rank 0 alone keeps the tokenized rows (a launch's other processes tokenize in memory)
    cache = checkpoint_dir if os.environ.get("RANK", "0") == "0" else None
    data = _encode_rows(tokenizer, examples, cfg, injector, cache) if len(examples) else []
    if not data:
        raise ValueError("no training examples: check the task's labels and n_train in config")
    if not 1 <= cfg.pack <= cfg.batch_size:
        raise ValueError(
            f"train.pack must be between 1 and train.batch_size ({cfg.batch_size}), "
            f"got {cfg.pack}: e.g. pack 4 with batch_size 8"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes of a torchrun launch
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
        data, packed_tokens = packed_batches(data, min(cfg.pack, per_device), per_device, cfg.seed)
        n_packs = sum(len(item["packs"]) for item in data)  # one item per batch
        train_collator = PackCollator(tokenizer.pad_token_id)
        print(f"packed {n_rows} rows into {n_packs} sequences of up to {cfg.pack} questions")
    else:
        train_collator = collator
    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=1 if packed else per_device,  # packed: batch items
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
        ddp_backend=None if use_cuda or world == 1 else "gloo",  # CPU process groups
        ddp_find_unused_parameters=False if world > 1 else None,
        dataloader_num_workers=0,
        disable_tqdm=False,
        train_sampling_strategy=(
            "group_by_length" if cfg.group_by_length and not packed else "random"
        ),
        # keep "vectors" for VectorTrainer, the segments of packs for PackCollator
        remove_unused_columns=injector is None and not packed,
        **cfg.extra,
    )
    extra = {"injector": injector} if injector is not None else {}
    fingerprint = run_fingerprint(model_path, examples, cfg, injection, validation)
    last = last_complete_checkpoint(checkpoint_dir, fingerprint)
    callbacks = list(callbacks or [])
    validator = None
    if validation is not None and len(validation):
        score, metric = validation_scorer(tokenizer, validation, cfg, collator, injector)
        if bf16:
            score = autocast_bf16(score)
        validator = Validation(score, metric, cfg.eval_steps, cfg.patience, last)
        callbacks.append(validator)
    trainer = (VectorTrainer if injector is not None else AnswerTrainer)(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=train_collator,
        callbacks=callbacks,
        **extra,
    )
    if os.environ.get("RANK", "0") == "0":
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        marker = json.dumps({"fingerprint": fingerprint}) + "\n"
        (checkpoint_dir / FINGERPRINT).write_text(marker)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start
    if validator is not None:
        validator.restore_best(model)
    if os.environ.get("RANK", "0") != "0":  # a launch's other processes: rank 0 writes
        return {"steps": trainer.state.global_step, "seconds": seconds}
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)  # LoRA: the adapter; full: the whole model (with any vector_map)
    if cfg.method == "full":
        tokenizer.save_pretrained(tmp)
    if injector is not None:  # the vector_map itself is saved inside the adapter / model
        injector.spec.save(tmp)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {
        "n_examples": n_rows,
        "n_tokens": n_row_tokens,  # of the rows, unpacked
        "n_sequences": n_packs if packed else n_rows,
        "n_tokens_computed": packed_tokens if packed else n_row_tokens,
        "processes": world,
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
        "resumed_from": last,
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "log_history": trainer.state.log_history,
    }
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    # Each file is renamed into place (atomic on one filesystem), the summary last: a
    # train_summary.json newer than the adapter marks a complete directory. Snakemake also
    # marks the job's outputs incomplete until it succeeds (rerun-incomplete reruns it).
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == SUMMARY):
        os.replace(f, out_dir / f.name)
    tmp.rmdir()
    return summary
