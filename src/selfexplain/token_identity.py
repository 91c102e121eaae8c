"""Token identity: can an explainer read a vector injected as a continuous token at all?

A sanity check of the injection path used by the feature-description task. Each example's
vector is the target's *input embedding* of one ordinary vocabulary word and the answer is
that word, so an explainer that reads the injected vector (through ``features.injection.Injector``,
with the trained ``vector_map`` when the widths differ) can answer perfectly, and one that
ignores it cannot beat chance. Train and test words are disjoint.

:func:`run_token_identity` trains a LoRA explainer on such examples with ``train_explainer``
(the feature task's path), scores its held-out answers by exact match, and scores the
untrained explainer (no adapter) at several injection norms, SelfIE / Patchscopes style: with
a few-shot identity prompt (and, as its ceiling, the same prompt with the word written out) and
with the trained question. With n_val validation words (disjoint from both) the adapter kept is
that of the step with the lowest answer loss on them, as for feature descriptions: trained
longer, the adapter learns the training words and names held-out ones less well.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import torch

from selfexplain.core.formats import ANSWER_CUE, PLACEHOLDER
from selfexplain.core.schema import ExplainerExample, meta, to_frame
from selfexplain.evaluate.generation import explainer_injector, generate_answers, load_explainer
from selfexplain.features.injection import Injector, reference_norm
from selfexplain.metrics import bootstrap_ci
from selfexplain.models import load
from selfexplain.train.trainer import train_explainer

if TYPE_CHECKING:
    from selfexplain.core.settings import TrainConfig

TASK = "token_identity"
# Ends with the answer cue (train.format_prompt then adds nothing), so the answer follows it as
# the token's own text, leading space included: the explainer answers with the injected token.
QUESTION = f"Which word does {PLACEHOLDER} stand for?{ANSWER_CUE}"
# The Patchscopes token-identity prompt (Ghandeharioun et al. 2024), used as is (not through
# train.format_prompt, whose "\nAnswer: " ending makes SmolLM2 answer with numbers or nothing
# even when the word is written out): the untrained model repeats the word at the placeholder.
IDENTITY_PROMPT = f"cat -> cat\nhouse -> house\n1135 -> 1135\nhello -> hello\n {PLACEHOLDER} ->"
_WORD = re.compile(r"^ ?[A-Za-z]{3,}$")


def _normalise(text: str) -> str:
    return text.strip().lower()


def word_tokens(tokenizer, vocab_rows: int | None = None) -> list[tuple[int, str]]:
    """(id, decoded string) of every ordinary word token: not special or added, decodes to one
    word of at least 3 ASCII letters with an optional leading space, id < vocab_rows."""
    n = len(tokenizer) if vocab_rows is None else min(len(tokenizer), vocab_rows)
    skip = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = [i for i in range(n) if i not in skip]
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    return [(i, t) for i, t in zip(ids, texts, strict=True) if _WORD.match(t)]


def token_identity_examples(
    target_model,
    target_tokenizer,
    *,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
    target: str = "target",
) -> pl.DataFrame:
    """n_test + n_train examples in the shared schema: a seeded choice of word tokens of the
    target (see word_tokens; one per stripped lowercase word, so the splits share no word),
    vector = the token's input-embedding row (float32), answer = the token's own text (leading
    space included; QUESTION ends with the answer cue, so the answer is that very token;
    scoring strips it).
    The test words are drawn first, so they do not depend on n_train: runs with different
    numbers of training words are scored, and can be paired, on the same test words."""
    embeddings = target_model.get_input_embeddings().weight.detach().float().cpu()
    candidates = word_tokens(target_tokenizer, embeddings.shape[0])
    random.Random(seed).shuffle(candidates)
    chosen: dict[str, tuple[int, str]] = {}
    for token_id, text in candidates:
        chosen.setdefault(_normalise(text), (token_id, text))
        if len(chosen) == n_train + n_test:
            break
    if len(chosen) < n_train + n_test:
        raise ValueError(
            f"the target's vocabulary has {len(chosen)} distinct word tokens, "
            f"fewer than n_train + n_test = {n_train + n_test}"
        )
    examples = []
    for k, (token_id, text) in enumerate(chosen.values()):
        examples.append(
            ExplainerExample(
                id=f"{TASK}/{target}/t{token_id}",
                task=TASK,
                target=target,
                split="test" if k < n_test else "train",
                question=QUESTION,
                answer=text,
                vector=embeddings[token_id].tolist(),
                meta={"token_id": token_id, "token": text},
            )
        )
    return to_frame(examples)


def score_token_identity(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of exact matches after stripping and lowercasing (0.0 for no rows)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if len(answers) == 0:
        return 0.0
    hits = sum(_normalise(p) == _normalise(a) for p, a in zip(predictions, answers, strict=True))
    return hits / len(answers)


@torch.no_grad()
def generate_raw(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 6,
    batch_size: int = 16,
    vectors: Sequence[Sequence[float]] | None = None,
    injector=None,
) -> list[str]:
    """Greedy continuations of prompts used as they are (evaluate.generate_answers wraps them in
    train.format_prompt), first line, stripped of spaces and quotes; with vectors, vector i is
    injected at prompt i's placeholder by the injector."""

    answers = generate_answers(
        model,
        tokenizer,
        list(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        vectors=vectors,
        injector=injector,
        raw=True,
    )
    return [a.strip('"').strip() for a in answers]


def paired_hits(
    trained: Sequence[str], untrained: Sequence[str], answers: Sequence[str], seed: int = 0
) -> dict[str, float]:
    """Trained minus untrained exact match on the same words, with a 95% percentile CI from a
    bootstrap over the words (each word is its own cluster): diff, ci_lo, ci_hi, n_words."""

    def hits(preds: Sequence[str]) -> list[float]:
        return [float(_normalise(p) == _normalise(a)) for p, a in zip(preds, answers, strict=True)]

    rows = pl.DataFrame({"d": [a - b for a, b in zip(hits(trained), hits(untrained), strict=True)]})
    lo, hi = bootstrap_ci(rows, lambda r: {"d": float(r["d"].mean())}, n_boot=2000, seed=seed)["d"]
    return {"diff": float(rows["d"].mean()), "ci_lo": lo, "ci_hi": hi, "n_words": len(rows)}


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_token_identity(
    target_dir: str | Path,
    explainer_dir: str | Path,
    out_dir: str | Path,
    *,
    n_train: int,
    n_test: int,
    train_cfg: TrainConfig,
    n_val: int = 0,
    injection: dict | None,
    scales: Sequence[float],
    seed: int = 0,
    batch_size: int = 16,
    relation: str | None = None,
    json_path: str | Path | None = None,
    max_new_tokens: int = 6,
    n_samples: int = 10,
    n_errors: int = 50,
) -> dict:
    """Train an explainer to name injected input embeddings of the target, score it on held-out
    words, and score the untrained explainer at each injection norm in ``scales`` (multiples of
    its reference norm at the injection layer). The adapter and checkpoints go under out_dir;
    the result (returned) is written atomically to json_path (default out_dir/result.json).

    train_cfg: a train.TrainConfig; injection: {"layer", "scale"} as for the feature task;
    relation: "self" / "other" (default: by the model directories' names); n_val: validation
    words, scored by the answer-token loss every train_cfg.eval_steps steps (0: none, the
    last step is kept). The test words are the first n_test drawn, then the validation words,
    then the training words, so neither n_val nor n_train changes the test words.
    """

    start = time.perf_counter()
    target_dir, explainer_dir, out_dir = Path(target_dir), Path(explainer_dir), Path(out_dir)
    json_path = Path(json_path) if json_path is not None else out_dir / "result.json"
    if relation is None:
        relation = "self" if target_dir.name == explainer_dir.name else "other"
    injection = dict(injection or {})
    words = _draw_words(target_dir, n_train, n_test, n_val, seed)
    if relation == "other":
        injection |= _map_settings(target_dir, words)
    generation = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    untrained = _score_untrained(explainer_dir, words, injection, scales, generation)
    summary, train_seconds = _train(explainer_dir, out_dir, words, train_cfg, injection)
    trained = _predict_trained(explainer_dir, out_dir / "adapter", words, injection, generation)

    result = {"target": target_dir.name, "explainer": explainer_dir.name, "relation": relation}
    result |= {"n_train": len(words.train), "n_test": len(words.test), "n_val": len(words.val)}
    result |= _scores(words, trained, untrained, seed=seed, n_samples=n_samples, n_errors=n_errors)
    result |= {"injection": trained.injection, "reference_norm": untrained.reference_norm}
    # "best": the kept step (by the validation words' answer loss)
    kept = ("steps", "best", "stopped_early", "validation", "train_loss", "final_logged_loss")
    result |= {k: summary[k] for k in kept}
    result |= {"train_seconds": train_seconds, "seconds": time.perf_counter() - start}
    _write_json(result, json_path)
    return result


@dataclass
class _Words:
    """The drawn words' examples by split, the held-out words as scored, the vectors' width."""

    train: pl.DataFrame
    test: pl.DataFrame
    val: pl.DataFrame
    answers: list[str]  # the test words, stripped
    d_in: int


@dataclass
class _Untrained:
    """The untrained explainer's scores: exact match by scale (identity prompt and trained
    question), the identity prompt's predictions by scale, the written-out word's ceiling."""

    reference_norm: float
    text_ceiling: float
    identity: dict[str, float]
    question: dict[str, float]
    preds: dict[str, list[str]]


@dataclass
class _Trained:
    """The trained explainer's answers on the test words and on as many training words, and
    its injection settings (layer, scale, the injector's norm and map init)."""

    preds: list[str]
    train_preds: list[str]
    injection: dict


def _draw_words(target_dir: Path, n_train: int, n_test: int, n_val: int, seed: int) -> _Words:
    """The target's token-identity examples: n_test test words, then n_val validation words,
    then n_train training words (the target model is freed before returning)."""
    target_model, target_tok = load(target_dir)
    frame = token_identity_examples(
        target_model,
        target_tok,
        n_train=n_train,
        n_test=n_test + n_val,
        seed=seed,
        target=target_dir.name,
    )
    del target_model, target_tok
    gc.collect()
    train = frame.filter(pl.col("split") == "train")
    test = frame.filter(pl.col("split") == "test")
    test, val = test.head(n_test), test.slice(n_test).with_columns(split=pl.lit("val"))
    answers = [a.strip() for a in test["answer"].to_list()]  # the words, as scored
    return _Words(train, test, val, answers, d_in=len(frame["vector"][0]))


def _map_settings(target_dir: Path, words: _Words) -> dict:
    """The injection settings of another model's vectors: the width map starts from the two
    models' shared-token embeddings, fitted without the held-out and validation words."""
    exclude = [m["token_id"] for m in meta(words.test) + meta(words.val)]
    return {"map_from": str(target_dir), "map_exclude": exclude}


def _score_untrained(
    explainer_dir: Path, words: _Words, injection: dict, scales: Sequence[float], generation: dict
) -> _Untrained:
    """The untrained explainer (no adapter) on the test words: the identity prompt (with the
    word written out: the prompt's ceiling) and the trained question, the vector at each
    multiple in ``scales`` of the reference norm at the injection layer."""
    test, answers = words.test, words.answers
    model, tok = load_explainer(explainer_dir)
    ref = reference_norm(model, tok, injection.get("layer", 0))
    written = [IDENTITY_PROMPT.replace(PLACEHOLDER, m["token"].lstrip()) for m in meta(test)]
    text_ceiling = score_token_identity(generate_raw(model, tok, written, **generation), answers)
    untrained = _Untrained(ref, text_ceiling, identity={}, question={}, preds={})
    vectors = test["vector"].to_list()
    for scale in scales:
        injector = Injector.from_settings(
            model, tok, words.d_in, injection | {"scale": scale * ref}
        )
        kwargs = generation | {"vectors": vectors, "injector": injector}
        identity = generate_raw(model, tok, [IDENTITY_PROMPT] * len(test), **kwargs)
        question = generate_answers(model, tok, [QUESTION] * len(test), **kwargs)
        untrained.identity[str(float(scale))] = score_token_identity(identity, answers)
        untrained.preds[str(float(scale))] = identity
        untrained.question[str(float(scale))] = score_token_identity(question, answers)
    del model, tok, injector
    gc.collect()
    return untrained


def _train(
    explainer_dir: Path, out_dir: Path, words: _Words, train_cfg: TrainConfig, injection: dict
) -> tuple[dict, float]:
    """Train the adapter (out_dir/adapter; checkpoints in out_dir/checkpoints) on the training
    words, the validation words (if any) selecting its step: (the train summary, seconds)."""
    start = time.perf_counter()
    summary = train_explainer(
        model_path=explainer_dir,
        examples=words.train,
        out_dir=out_dir / "adapter",
        cfg=train_cfg,
        checkpoint_dir=out_dir / "checkpoints",
        injection=injection,
        validation=words.val if len(words.val) else None,
    )
    return summary, time.perf_counter() - start


def _predict_trained(
    explainer_dir: Path, adapter: Path, words: _Words, injection: dict, generation: dict
) -> _Trained:
    """The trained explainer's answers to the test words' questions and to those of the first
    as many training words."""
    test, train = words.test, words.train
    model, tok = load_explainer(explainer_dir, adapter)
    injector = explainer_injector(model, tok, adapter, words.d_in, injection)
    preds = generate_answers(
        model,
        tok,
        test["question"].to_list(),
        vectors=test["vector"].to_list(),
        injector=injector,
        **generation,
    )
    train_preds = generate_answers(
        model,
        tok,
        train["question"].head(len(test)).to_list(),
        vectors=train["vector"].head(len(test)).to_list(),
        injector=injector,
        **generation,
    )
    settings = {"layer": injection.get("layer", 0), "scale": injection.get("scale")}
    settings |= {"norm": injector.spec.norm, "map_init": injector.spec.map_init}
    trained = _Trained(preds, train_preds, settings)
    del model, tok, injector
    gc.collect()
    return trained


def _scores(
    words: _Words,
    trained: _Trained,
    untrained: _Untrained,
    *,
    seed: int,
    n_samples: int,
    n_errors: int,
) -> dict:
    """The result's scores: trained and untrained exact match, samples and errors, the paired
    trained − untrained difference and every held-out word's predictions."""
    answers, preds, n = words.answers, trained.preds, len(words.test)
    # paired against the untrained explainer at its best norm on these same words (a choice
    # that favours the baseline)
    best_scale = max(untrained.identity, key=untrained.identity.get, default=None)
    return {
        "accuracy": score_token_identity(preds, answers),
        "train_accuracy": score_token_identity(
            trained.train_preds, words.train["answer"].head(n).to_list()
        ),
        "untrained_by_scale": untrained.identity,
        "untrained_text_ceiling": untrained.text_ceiling,
        "untrained_question_by_scale": untrained.question,
        "samples": [
            {"token": a, "prediction": p}
            for a, p in zip(answers[:n_samples], preds[:n_samples], strict=True)
        ],
        "errors": [  # held-out misses, for a look at what goes wrong
            {"token": a, "prediction": p}
            for a, p in zip(answers, preds, strict=True)
            if _normalise(a) != _normalise(p)
        ][:n_errors],
        "trained_minus_untrained": None
        if best_scale is None
        else {"scale": float(best_scale)}
        | paired_hits(preds, untrained.preds[best_scale], answers, seed=seed),
        "per_word": [  # every held-out word: for paired comparisons across runs
            {"token": a, "prediction": p}
            | {f"untrained_{k}": v[i] for k, v in untrained.preds.items()}
            for i, (a, p) in enumerate(zip(answers, preds, strict=True))
        ],
    }
