"""Generate explainer answers for the test split and score them per example."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import torch
from tqdm.auto import tqdm

from selfexplain.core.formats import COMPACT, UNCHANGED, format_prompt
from selfexplain.core.formats import answer_format as get_format
from selfexplain.core.registry import variant as variant_record
from selfexplain.core.schema import select, subsample
from selfexplain.core.settings import EvaluateSettings, FeatureSettings
from selfexplain.data.controls import derangement, seeded_rng
from selfexplain.data.variants import apply_control
from selfexplain.evaluate.scoring import answer_forms, change_scores
from selfexplain.evaluate.summary import run_summary
from selfexplain.features.describe import make_generator
from selfexplain.features.injection import (
    INJECTION_FILE,
    MAP_NAME,
    InjectionSpec,
    Injector,
    attach_map,
    with_target_map,
)
from selfexplain.features.metrics import nearest_neighbour_answers, score_feature_rows
from selfexplain.forward import pad_left
from selfexplain.metrics import rank_threshold, score_change_rows
from selfexplain.models import load
from selfexplain.packing import common_prefix, plan_packs, window_of
from selfexplain.precision import bf16_autocast, to_bf16

# Questions per shared-prefix generation batch. A prompt's questions continue from its cached
# keys and values, so a batch adds only their short tails: 64 answered a patching heatmap's 168
# questions 3.5x faster than plain batches of 16, and 32 3.1x (docs/performance.md).
SHARE_GROUP = 64


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    vectors: Sequence[Sequence[float]] | None = None,
    injector=None,
    raw: bool = False,
    prefix: Sequence[int] = (),
    share_prefix: bool = True,
    share_group: int = SHARE_GROUP,
) -> list[str]:
    """Greedy answers to each question (batched, left-padded), cut at the first newline.

    With vectors (and an injection.Injector), each question's placeholder is rendered as the
    explainer's placeholder token and vector i is injected there, as in training. raw: the
    questions are whole prompts, used as they are (not wrapped in train.format_prompt).
    prefix: answer tokens forced before greedy decoding; they are part of the returned answer
    and count towards max_new_tokens. share_prefix: questions that share their start (the
    questions of one prompt) reuse its keys and values (generate_shared); without vectors only.
    share_group: at most this many questions continue from one cached prefix as one batch (the
    shared path's batch size; batch_size applies to the plain path).
    """
    eos = tokenizer.eos_token_id
    if vectors is not None:
        questions = injector.render(questions)
    prefix = list(prefix)
    seqs = [tokenizer(q if raw else format_prompt(q))["input_ids"] + prefix for q in questions]
    new_tokens = max(1, max_new_tokens - len(prefix))
    if vectors is None and share_prefix:
        rows = generate_shared(model, seqs, tokenizer.pad_token_id, eos, new_tokens, share_group)
    else:
        rows = []
        device = next(model.parameters()).device
        for start in tqdm(range(0, len(seqs), batch_size), desc="generate", unit="batch"):
            ids, mask = pad_left(seqs[start : start + batch_size], tokenizer.pad_token_id)
            injected = contextlib.nullcontext()
            if vectors is not None:
                vecs = torch.tensor(vectors[start : start + batch_size], dtype=torch.float32)
                injected = injector.inject(model, ids, vecs, allowed=mask)
            with injected:
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            rows += out[:, ids.shape[1] :].tolist()
    answers = []
    for row in rows:
        if eos in row:
            row = row[: row.index(eos)]
        text = tokenizer.decode(prefix + row, skip_special_tokens=True)
        answers.append(text.split("\n")[0].strip())
    return answers


@torch.no_grad()
def generate_shared(
    model,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
    batch_size: int = 16,
    min_shared: int = 16,
) -> list[list[int]]:
    """Greedy continuations (new token ids, up to max_new_tokens) of each sequence, reusing the
    keys and values of a prefix that sequences share.

    Sequences are grouped as packing groups them (packing.plan_packs: neighbours in token
    order sharing at least min_shared leading tokens, at most batch_size a group); a group's
    common prefix runs through the model once, its cache is repeated for each member, and
    generate continues all members from it as one batch (each member's own tokens left-padded
    after the prefix: the attention mask skips the padding and position ids count only real
    tokens, so every member is computed as if alone). Same tokens as one left-padded batch
    (tested; float rounding could break an exact tie between two tokens). A model with a
    sliding window shorter than the sequences (which masks by cache index, where the padding
    after the prefix would count) gets plain left-padded batches instead."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    window, _ = window_of(model.config)
    longest = max((len(s) for s in seqs), default=0) + max_new_tokens
    min_shared = min_shared if window is None or window > longest else 10**9
    out: list[list[int]] = [[] for _ in seqs]
    plan = plan_packs([{"input_ids": list(s)} for s in seqs], batch_size, seed=0)
    for idx in tqdm(plan, desc="generate (shared prefix)", unit="batch"):
        members = [list(seqs[i]) for i in idx]
        shared = min(len(m) for m in members) - 1  # every member keeps one token to run
        for m in members[1:]:
            shared = min(shared, common_prefix(members[0], m))
        if len(members) == 1 or shared < min_shared:
            shared = 0
        cache = None
        if shared:
            cache = DynamicCache(config=model.config)
            model(
                input_ids=torch.tensor([members[0][:shared]], device=device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache.batch_repeat_interleave(len(members))
        tails, tail_mask = pad_left([m[shared:] for m in members], pad_id)
        ids = torch.cat([torch.tensor([members[0][:shared]] * len(members)).long(), tails], 1)
        mask = torch.cat([torch.ones(len(members), shared, dtype=torch.long), tail_mask], 1)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            past_key_values=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for i, row in zip(idx, gen[:, ids.shape[1] :].tolist(), strict=True):
            out[i] = row
    return out


def change_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    threshold: float = 0.0,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    progress: bool = True,
    pack: int = 1,
    answer_format: str = "compact",
    rate: float | None = None,
    vectors: Sequence[Sequence[float]] | None = None,
    injector=None,
):
    """Calibrated answers to change-task questions, and their has-changed scores.

    One teacher-forced forward per question gives the score (scoring.change_scores); a score
    at or below ``threshold`` (the trained run's validation-calibrated one) answers
    "unchanged", a higher one is decoded greedily after the tokens that start the
    "changes to" form, so the answer names the new token. With threshold 0 this is greedy
    decoding restricted to the two answer forms; only the "changes to" answers are generated.
    pack: questions per packed scoring sequence (scoring.change_scores). answer_format: the
    explainer's (metrics.AnswerFormat; the run's train_summary.json has it); in the paper
    format an "unchanged" answer names the current output, so both forms are generated.
    rate: when given, the threshold is metrics.rank_threshold of the scores (that share of the
    questions, the highest scored, answer "changes to") instead of ``threshold``.
    vectors, injector: question i carries vector i at its placeholder, in scoring and
    generation alike (a patching question in the paper format: the patched vector).
    """

    fmt = get_format(answer_format)
    scores = change_scores(
        model,
        tokenizer,
        questions,
        batch_size=batch_size,
        progress=progress,
        pack=pack,
        fmt=fmt,
        vectors=vectors,
        injector=injector,
    )
    if rate is not None:
        threshold = rank_threshold(scores, rate)
    common, changed_id, unchanged_id = answer_forms(tokenizer, fmt)
    answers = [UNCHANGED] * len(questions)
    forms = [(True, changed_id)] if fmt is COMPACT else [(True, changed_id), (False, unchanged_id)]
    for is_changed, first in forms:
        rows = [i for i, s in enumerate(scores) if (s > threshold) == is_changed]
        named = generate_answers(
            model,
            tokenizer,
            [questions[i] for i in rows],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            prefix=[*common, first],
            vectors=None if vectors is None else [vectors[i] for i in rows],
            injector=injector,
        )
        for i, text in zip(rows, named, strict=True):
            answers[i] = text
    return answers, scores


def is_full_model(adapter_dir: str | Path | None) -> bool:
    """Whether a trained explainer directory holds a whole fine-tuned model (train.method full)
    rather than a LoRA adapter."""
    if adapter_dir is None:
        return False
    adapter_dir = Path(adapter_dir)
    return (adapter_dir / "config.json").is_file() and not (
        adapter_dir / "adapter_config.json"
    ).is_file()


def load_explainer(model_path: str | Path, adapter_dir: str | Path | None = None):
    """The explainer model (base model, plus a peft adapter when given; or the whole model a
    full fine-tune saved in adapter_dir) and its tokenizer."""

    if is_full_model(adapter_dir):
        model, tokenizer = load(adapter_dir)
        if (Path(adapter_dir) / INJECTION_FILE).is_file():  # the model holds a vector_map
            from safetensors.torch import load_file

            attach_map(model, InjectionSpec.load(adapter_dir))
            weights = {}
            for f in sorted(Path(adapter_dir).glob("model*.safetensors")):
                weights |= {k: v for k, v in load_file(str(f)).items() if k.startswith(MAP_NAME)}
            if weights:
                model.load_state_dict(weights, strict=False)
        return model, tokenizer
    model, tokenizer = load(model_path)
    if adapter_dir is not None:
        from peft import PeftModel

        if (Path(adapter_dir) / INJECTION_FILE).is_file():  # the adapter holds a vector_map
            attach_map(model, InjectionSpec.load(adapter_dir))
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return model, tokenizer


@contextlib.contextmanager
def as_validated(model, adapter_dir: str | Path | None):
    """Inside the block the explainer computes as its training run's validation did, so the
    threshold that validation chose applies to its scores: a ``train.precision`` bf16 run's
    explainer (train_summary.json ``precision``) gets its base in bfloat16 (train.to_bf16)
    and bfloat16 matmuls (autocast); any other explainer is left as it is (float32)."""

    if run_summary(adapter_dir).get("precision") != "bf16":
        yield
        return
    to_bf16(model)
    with bf16_autocast(model):
        yield


def explainer_injector(
    model, tokenizer, adapter_dir: str | Path | None, d_in: int, settings: dict | None = None
):
    """The injector of a trained explainer (its saved injection.json), or for an untrained one a
    fresh injector from settings ({"layer", "scale"}, and "map_from" / "map_exclude" for the
    map when widths differ: fitted on embeddings, else seed-0 random)."""

    if adapter_dir is not None and (Path(adapter_dir) / INJECTION_FILE).is_file():
        return Injector(InjectionSpec.load(adapter_dir), model)
    return Injector.from_settings(model, tokenizer, d_in, settings)


def describe_vectors(
    model_path: str | Path,
    adapter_dir: str | Path | None,
    asked: pl.DataFrame,
    *,
    max_new_tokens: int,
    batch_size: int,
    injection: dict | None = None,
) -> list[str]:
    """The explainer's descriptions of feature rows (their ``question`` with their ``vector``
    injected through explainer_injector; ``injection`` {"layer", "scale"} sets up an untrained
    explainer's)."""
    model, tokenizer = load_explainer(model_path, adapter_dir)
    vectors = asked["vector"].to_list()
    injector = explainer_injector(model, tokenizer, adapter_dir, len(vectors[0]), injection)
    return generate_answers(
        model,
        tokenizer,
        asked["question"].to_list(),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        vectors=vectors,
        injector=injector,
    )


def evaluate_change_task(
    model,
    tokenizer,
    examples: pl.DataFrame,
    *,
    labels: dict[str, str],
    max_new_tokens: int = 16,
    batch_size: int = 16,
    threshold: float = 0.0,
    pack: int = 1,
    answer_format: str = "compact",
    injector=None,
) -> pl.DataFrame:
    """One row per test example: ids, gold answer, the calibrated prediction (change_answers),
    the teacher-forced has-changed score (tf_score, scoring.change_scores), the threshold it is
    read with (the trained run's validation-calibrated one; 0 untrained) and the change-task
    metrics. With an injector, each row's vector goes in at its question's placeholder."""
    preds, tf = change_answers(
        model,
        tokenizer,
        examples["question"].to_list(),
        threshold=threshold,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        pack=pack,
        answer_format=answer_format,
        vectors=None if injector is None else examples["vector"].to_list(),
        injector=injector,
    )
    return change_rows(examples, preds, tf, labels, threshold)


def change_rows(
    examples: pl.DataFrame,
    predictions: Sequence[str],
    tf_scores,
    labels: dict,
    threshold: float = 0.0,
) -> pl.DataFrame:
    """Evaluation rows of a change task from predictions and has-changed scores (> 0: changed)."""
    scored = score_change_rows(examples["answer"].to_list(), list(predictions))
    keep = ["id", "task", "target", "answer", "meta"]
    keep += [c for c in ("in_sample", "heatmap") if c in examples.columns]
    base = examples.select(keep).with_columns(
        pl.Series("prediction", list(predictions), dtype=pl.String),
        pl.Series("tf_score", [float(x) for x in tf_scores], dtype=pl.Float64),
        pl.lit(float(threshold)).alias("tf_threshold"),
        *[pl.lit(v).alias(k) for k, v in labels.items()],
    )
    return pl.concat([base, scored], how="horizontal")


def evaluate_feature_task(
    examples: pl.DataFrame,
    predictions: Sequence[str],
    *,
    labels: dict[str, str],
    pool: pl.DataFrame | None = None,
    embedder=None,
    judge=None,
    n_distractors: int = 4,
) -> pl.DataFrame:
    """One row per test feature: ids, gold description, prediction and the feature metrics
    (similarity, simulation; judge when a judge generator is given). pool: features whose
    top contexts serve as distractors (default: the examples themselves)."""

    scored = score_feature_rows(
        examples,
        list(predictions),
        pool=examples if pool is None else pool,
        embedder=embedder,
        judge=judge,
        n_distractors=n_distractors,
    )
    base = examples.select("id", "task", "target", "answer", "meta").with_columns(
        pl.Series("prediction", list(predictions), dtype=pl.String),
        *[pl.lit(v).alias(k) for k, v in labels.items()],
    )
    return pl.concat([base, scored], how="horizontal")


def floor_answers(test: pl.DataFrame, neighbours, seed: int) -> list[str]:
    """Another test feature's true description (a seeded derangement): where scores start."""
    answers = test["answer"].to_list()
    if len(answers) < 2:
        return answers
    return [answers[j] for j in derangement(len(answers), seeded_rng(seed, "floor"))]


def ceiling_answers(test: pl.DataFrame, neighbours, seed: int) -> list[str]:
    """The true description itself: where scores end."""
    return test["answer"].to_list()


def neighbour_answers(test: pl.DataFrame, neighbours: pl.DataFrame | None, seed: int) -> list[str]:
    """The description of the most cosine-similar training vector (no model)."""
    if neighbours is None:
        raise ValueError("nearest_neighbour needs the training features (neighbours)")
    preds, _ = nearest_neighbour_answers(
        neighbours["vector"].to_list(), neighbours["answer"].to_list(), test["vector"].to_list()
    )
    return preds


# the reference variants of core.registry (answers "reference"): descriptions without a model
REFERENCE_ANSWERS = {
    "floor": floor_answers,
    "ceiling": ceiling_answers,
    "nearest_neighbour": neighbour_answers,
}


def evaluate_features(
    examples: pl.DataFrame,
    model_dir: str | Path | None,
    adapter_dir: str | Path | None,
    *,
    labels: dict,
    settings: EvaluateSettings | dict,
    features: FeatureSettings | dict,
    neighbours: pl.DataFrame | None = None,
    embedder=None,
) -> pl.DataFrame:
    """Evaluate one variant on the feature task's test split (at most settings.n_test; the
    evaluate and features settings, typed or as the config's dicts).

    trained / untrained: the explainer answers with the vector injected (untrained: no
    adapter); no_signal: trained and evaluated on random vectors (variants.withhold_signal);
    floor / ceiling: another test feature's true description (a random derangement) / the
    true description itself, scored as predictions: where the metrics start and end.
    nearest_neighbour: the description of the most cosine-similar vector among ``neighbours``, the
    training features the explainers are trained on (data.draws.training_rows; no model).
    """

    settings, features = EvaluateSettings.of(settings), FeatureSettings.of(features)
    variant = labels["variant"]
    test = subsample(select(examples, "test"), settings.n_test, 0)
    if test.is_empty():
        raise ValueError("no test features: raise features.n_features or test_fraction")
    if variant_record(variant).answers == "reference":
        preds = REFERENCE_ANSWERS[variant](test, neighbours, labels["seed"])
    else:
        asked = apply_control(test, "features", variant, labels["seed"])
        preds = describe_vectors(
            model_dir,
            adapter_dir,
            asked,
            max_new_tokens=features.max_new_tokens,
            batch_size=settings.batch_size,
            injection=with_target_map(
                features.injection, model_dir, labels["target"], labels["explainer"]
            ),
        )
    return evaluate_feature_task(
        test,
        preds,
        labels=labels,
        embedder=embedder,
        judge=make_generator(features.judge),
        n_distractors=features.n_distractors,
    )
