"""Encoding (question, answer) rows for training: token ids with labels on the answer only,
right-padded batches, and the tokenized rows cached on disk by what they depend on."""

from __future__ import annotations

import hashlib
import inspect
import json
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import torch

from selfexplain.core.formats import format_prompt
from selfexplain.core.settings import TrainConfig
from selfexplain.train.rows import example_vectors

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


def encode_rows(
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
