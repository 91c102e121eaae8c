"""The paper's released explainers, scored on the reference test split with our metric code
(config ``released:``; rule evaluate_released, target ``snakemake released``).

A released explainer was trained on the reference implementation's prompts and answers, so it
is asked exactly those, not our compact questions. Input ablation (the paper's hint setting,
our task ``hint``, rows imported with ``hint.labels_from``): the explainer's chat has the
row's system prompt and the user turn ``{hint_user_prompt}\\n\\nIf the hint were removed how
would the assistant answer change?``; the gold answer is ``The output would remain unchanged
from <<<Answer: X>>>.`` or ``The most likely output would change to <<<Answer: Y>>>.``
(shared/PAPER_DATA.md). Greedy decoding, up to 50 new tokens.

Scored twice: by our change-task metrics (metrics.score_change_rows; so the rows sit next to
our variants' in the same schema) and by the reference definitions (reference_metrics: exact
match of the lower-cased stripped strings, has-changed macro F1, content match of the
``<<<...>>>`` text over all items).

Activation patching (task ``patching``, rows imported with ``patching.labels_from`` from a
release that has ``patch_position.intervention_vector``): the explainer is asked the reference
question ``If feature <b><v><e> at layer {layers} is added to tokens <{token}> when processing
the text <<<{prompt}>>>, how would the output change?`` (the first of the five reference
templates; the counterfactual text is not shown) as one user turn, and the row's patched vector
replaces the input embedding of the reserved token ``<v>`` as it is, unscaled (PAPER.md: the
vector replaces the input embedding of one reserved token, raw). ``vector_token`` names another
reserved token when the explainer's tokenizer spells it differently; it must be one token of
that tokenizer. Gold answers name the tokens stripped of their leading space (``<<<Paris>>>``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from selfexplain.core.formats import (
    VECTOR_TOKEN,
    hint_answer,
    hint_messages,
    parse_change,
    patching_answer,
    patching_question,
)
from selfexplain.core.schema import meta, write_parquet
from selfexplain.evaluate.generation import change_rows, generate_answers
from selfexplain.features.injection import inject_residual, placeholder_positions
from selfexplain.metrics import macro_f1
from selfexplain.models import hidden_size

MAX_NEW_TOKENS = 50
_CONTENT = re.compile(r"<<<(.*?)>>>", re.DOTALL)
SUPPORTED = ("hint", "patching")


class ReservedTokenInjector:
    """Puts each question's vector, raw, into the hidden state entering block `layer` (0: the
    input embedding) at a released explainer's reserved vector token; the interface
    evaluate.generate_answers expects of an injector (render, inject)."""

    def __init__(self, model, tokenizer, token: str = VECTOR_TOKEN, layer: int = 0):

        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(
                f"the released explainer's tokenizer reads the vector token {token!r} as "
                f"{len(ids)} tokens, not one: set released.<name>.vector_token to the reserved "
                "token the explainer was trained to read the vector at"
            )
        self.token_id, self.layer, self.width = ids[0], layer, hidden_size(model)

    def render(self, questions: Sequence[str]) -> list[str]:
        return list(questions)  # the questions already hold the reserved token

    @contextmanager
    def inject(self, model, input_ids, vectors, allowed=None) -> Iterator[None]:
        import torch

        if vectors.shape[-1] != self.width:
            raise ValueError(
                f"the patched vectors have width {vectors.shape[-1]}, the released explainer "
                f"{self.width}: are the rows the explainer's target's?"
            )
        positions = placeholder_positions(input_ids, self.token_id, allowed)
        rows = torch.arange(len(input_ids))
        with inject_residual(model, self.layer, rows, positions, vectors.float()):
            yield


def chat_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The messages through the tokenizer's chat template (with the assistant turn opened); a
    tokenizer without one gets the turns as plain paragraphs."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        # the template writes BOS and the tokenizer adds one: keep one
        return text[len(bos) :] if adds_bos and text.startswith(bos) else text
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def _norm(text: str | None) -> str | None:
    return None if text is None else text.strip().lower()


def content(text: str) -> str | None:
    """The text inside an answer's <<<...>>> (None when it has none)."""
    m = _CONTENT.search(text)
    return m.group(1) if m else None


def reference_metrics(golds: Sequence[str], predictions: Sequence[str]) -> dict:
    """The reference code's metrics: exact match (lower-cased, stripped strings equal), has-changed
    macro F1 (an unparseable answer is wrong), content match (the <<<...>>> text, lower-cased
    and stripped, equal; over all items); n."""
    if len(golds) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    exact = [_norm(p) == _norm(g) for g, p in zip(golds, predictions, strict=True)]
    same = [
        content(p) is not None and _norm(content(p)) == _norm(content(g))
        for g, p in zip(golds, predictions, strict=True)
    ]
    gold_changed = [bool(parse_change(g).changed) for g in golds]
    pred_changed = [parse_change(p).changed for p in predictions]
    n = len(golds)
    return {
        "exact_match": sum(exact) / n if n else float("nan"),
        "has_changed_f1": macro_f1(gold_changed, pred_changed),
        "content_match": sum(same) / n if n else float("nan"),
        "n": n,
    }


def load_released(model: str, adapter: str | None = None):
    """A released explainer (hub id or local directory): a full checkpoint, or a base model with
    a peft adapter; a hub id that is neither cached nor reachable says how to fill the cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter or model)
        explainer = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            explainer = PeftModel.from_pretrained(explainer, adapter)
    except OSError as err:
        raise OSError(
            f"cannot load the released explainer {model!r}"
            + (f" with adapter {adapter!r}" if adapter else "")
            + f" ({err.__class__.__name__}: {str(err).splitlines()[0]}). Without network, fill "
            "the Hugging Face cache on a machine with it (huggingface-cli download <id>) and "
            "copy ~/.cache/huggingface over, or give a local directory"
        ) from err
    explainer.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return explainer, tokenizer


def _test_rows(examples: pl.DataFrame, task: str) -> tuple[pl.DataFrame, list[dict]]:
    """The label set's test rows and their meta, refused when absent or not imported."""
    if task not in SUPPORTED:
        raise ValueError(f"released explainers are supported for {SUPPORTED}, not {task!r}")
    test = examples.filter(pl.col("split") == "test")
    if test.is_empty():
        raise ValueError(f"the label set has no test rows: import it with {task}.labels_from")
    rows = meta(test)
    needs = ("clean", "token", "layer_start") if task == "patching" else ("prompt",)
    missing = [k for k in (*needs, "orig_token", "new_token", "changed") if k not in rows[0]]
    if missing:
        raise ValueError(f"the {task} rows lack {missing}: are they imported ({task}.labels_from)?")
    return test, rows


def _patched_vectors(test: pl.DataFrame) -> list:
    """The patching test rows' patched vectors, refused when a row has none."""
    vectors = test["vector"].to_list()
    if any(v is None for v in vectors):
        raise ValueError(
            f"{sum(v is None for v in vectors)} of {len(vectors)} patching test rows carry "
            "no patched vector: the released patching explainers read it, so import the "
            "rows from a release with patch_position.intervention_vector"
        )
    return vectors


def _reference_prompts(task: str, rows: list[dict], tokenizer, vector_token: str) -> tuple:
    """The reference chat prompt and gold answer string of each row."""
    if task == "patching":
        questions = [patching_question(r, vector_token) for r in rows]
        prompts = [chat_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
        return prompts, [patching_answer(r) for r in rows]
    prompts = [chat_prompt(tokenizer, hint_messages(r)) for r in rows]
    return prompts, [hint_answer(r) for r in rows]


def evaluate_released(
    examples: pl.DataFrame,
    task: str,
    *,
    model: str,
    adapter: str | None = None,
    labels: dict,
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    vector_token: str = VECTOR_TOKEN,
    explainer=None,
) -> tuple[pl.DataFrame, dict]:
    """Ask a released explainer about the test rows of an imported label set: evaluation rows in
    our schema (answers in the reference strings, tf_score +1 / -1 / 0 as the answer says
    changed / unchanged / neither) and the reference metrics. vector_token: where a patching
    explainer reads the patched vector. explainer: an already loaded (model, tokenizer), for
    tests."""

    test, rows = _test_rows(examples, task)
    vectors = _patched_vectors(test) if task == "patching" else None
    model_obj, tokenizer = explainer or load_released(model, adapter)
    injector = None
    if task == "patching":
        injector = ReservedTokenInjector(model_obj, tokenizer, vector_token)
    prompts, golds = _reference_prompts(task, rows, tokenizer, vector_token)
    predictions = generate_answers(
        model_obj,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        vectors=vectors,
        injector=injector,
        raw=True,
    )
    scores = [{True: 1.0, False: -1.0, None: 0.0}[parse_change(p).changed] for p in predictions]
    asked = test.with_columns(
        pl.Series("question", prompts, dtype=pl.String),
        pl.Series("answer", golds, dtype=pl.String),
    )
    return change_rows(asked, predictions, scores, labels), reference_metrics(golds, predictions)


def write_released(rows: pl.DataFrame, metrics: dict, rows_path, metrics_path) -> None:
    """The evaluation rows (parquet) and the reference metrics (JSON)."""

    write_parquet(rows, rows_path)
    Path(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
