"""Teacher-forced scoring of change-task explainers, and the metrics built on it.

A change-task answer starts either with "unchanged" or with "changes to ...". Instead of
generating, the explainer's belief is read off one forward: after the question (and the tokens
the two answer forms share, if any), the log-probability of the first token of the
"changes to" form minus that of the "unchanged" form. This score is > 0 exactly when greedy
decoding, restricted to the two forms, starts with "changes to" (so it agrees with generation
whenever generation writes either form: tested). It ranks questions, giving a has-changed AUC,
and thresholded at 0 a balanced accuracy: both see a real effect on a few hundred questions,
where exact match over generated strings is dominated by formatting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from selfexplain.core.formats import COMPACT, AnswerFormat, format_prompt
from selfexplain.forward import next_token_logprobs, pad_left, padded_logprobs
from selfexplain.packing import last_logprobs


def answer_forms(tokenizer, fmt: AnswerFormat = COMPACT) -> tuple[list[int], int, int]:
    """The tokens both answer forms of fmt start with, and the first token where the "changed"
    and the "unchanged" form differ (as encoded for training: the answer without special
    tokens)."""
    unchanged = tokenizer(fmt.answer(False, None, "x"), add_special_tokens=False)["input_ids"]
    changed = tokenizer(fmt.answer(True, "x"), add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(unchanged), len(changed)) and unchanged[k] == changed[k]:
        k += 1
    if k == min(len(unchanged), len(changed)):
        raise ValueError("the tokenizer encodes one answer form as a prefix of the other")
    return unchanged[:k], changed[k], unchanged[k]


@torch.no_grad()
def change_scores(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    batch_size: int = 16,
    progress: bool = False,
    pack: int = 1,
    fmt: AnswerFormat = COMPACT,
    vectors: Sequence[Sequence[float]] | None = None,
    injector=None,
) -> np.ndarray:
    """log p("changes to" form) - log p("unchanged" form) at the first token where they differ,
    per question (batched, left-padded forwards with the last position's logits only); the
    forms of the answer format fmt.

    pack > 1: questions that share a prompt are packed, up to ``pack`` per sequence
    (selfexplain.packing), so the shared prompt is computed once per pack; batch_size then
    counts packs. Same scores (to float rounding), fewer tokens computed.

    vectors (with an injector: features.injection.Injector, or the interface it shares with
    released_eval.ReservedTokenInjector): each question's placeholder is rendered and vector i
    injected there, as in training (a patching question in the paper format carries the
    patched vector); such questions are scored unpacked."""
    common, changed_id, unchanged_id = answer_forms(tokenizer, fmt)
    if vectors is not None:
        questions = injector.render(questions)
    seqs = [tokenizer(format_prompt(q))["input_ids"] + common for q in questions]
    if vectors is not None:
        pair, pad = (changed_id, unchanged_id), tokenizer.pad_token_id
        return _injected_scores(model, seqs, pad, pair, vectors, injector, batch_size, progress)
    if pack > 1 and seqs:
        logp = last_logprobs(
            model, seqs, tokenizer.pad_token_id, pack, batch_size, progress=progress
        )
        return (logp[:, changed_id] - logp[:, unchanged_id]).numpy()
    out = []
    starts = range(0, len(seqs), batch_size)
    for start in tqdm(starts, desc="teacher-forced", unit="batch", disable=not progress):
        logp = next_token_logprobs(
            model, seqs[start : start + batch_size], tokenizer.pad_token_id, batch_size
        )
        out.append((logp[:, changed_id] - logp[:, unchanged_id]).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _injected_scores(
    model, seqs, pad_id: int, pair: tuple[int, int], vectors, injector, batch_size: int, progress
) -> np.ndarray:
    """log p(pair[0]) - log p(pair[1]) for the next token after each sequence, vector i
    injected at sequence i's placeholder (left-padded batches; the padding is never taken for a
    placeholder)."""

    if len(vectors) != len(seqs):
        raise ValueError(f"{len(vectors)} vectors for {len(seqs)} questions")
    out = []
    starts = range(0, len(seqs), batch_size)
    for start in tqdm(starts, desc="teacher-forced", unit="batch", disable=not progress):
        ids, mask = pad_left(seqs[start : start + batch_size], pad_id)
        vecs = torch.tensor(vectors[start : start + batch_size], dtype=torch.float32)
        with injector.inject(model, ids, vecs, allowed=mask):
            logp = padded_logprobs(model, ids, mask)
        out.append((logp[:, pair[0]] - logp[:, pair[1]]).numpy())
    return np.concatenate(out) if out else np.zeros(0)
