"""One run of the matrix, in the library: which rows a variant trains, validates and is tested
on, and how each variant answers. The workflow scripts and the CLI call these.

Rows:
- the test rows of a task are the same for every variant, explainer and seed (balanced
  changed / unchanged, drawn with seed 0), so variants are compared item by item;
- a validation split is carved from the train split, grouped by prompt / pair / question /
  feature, and fixed across seeds (so learning curves are comparable);
- the training draw is balanced (and, for ablation, every prompt kind gets the same number of
  rows of each class), drawn with the run's seed: seeds vary the data as well as the
  initialisation; a data-scaling variant n{N} trains on the first N rows of the seed's draw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl

from selfexplain.core.layout import eval_labels
from selfexplain.core.registry import CHANGE_TASKS, TASKS, TRAINED
from selfexplain.core.registry import variant as variant_record
from selfexplain.core.schema import (
    PAPER_QUESTION_TASKS,
    select,
    vector_question,
    with_answer_format,
    with_question_format,
    without_vectors,
)
from selfexplain.core.settings import EvaluateSettings, FeatureSettings, TrainSettings
from selfexplain.data.baselines import baseline_predictions
from selfexplain.data.draws import balanced, training_rows
from selfexplain.data.matrix import base_variant, variant_n_train
from selfexplain.data.variants import controlled_rows
from selfexplain.evaluate.generation import (
    as_validated,
    change_rows,
    evaluate_change_task,
    evaluate_features,
    explainer_injector,
    load_explainer,
)
from selfexplain.evaluate.summary import run_summary, summary_threshold
from selfexplain.features.injection import with_target_map
from selfexplain.metrics import base_rate, prior_shift
from selfexplain.tasks.patching import heatmap_rows
from selfexplain.train.launch import is_main_process, launch_train, n_processes, world_size
from selfexplain.train.trainer import train_explainer


def train_run(
    examples: pl.DataFrame,
    run,
    *,
    model_dir,
    out_dir,
    train_settings: TrainSettings | dict,
    features: FeatureSettings | dict,
    checkpoint_dir=None,
) -> dict:
    """Train one run's explainer (run: task, variant, seed attributes, e.g. the rule's
    wildcards): its training draw and validation split (training_rows, with the variant's
    control and data-scaling size and the run's seed), the train settings of the config, the
    feature task's injection. Returns train_explainer's summary. The settings may be given as
    the config's dicts."""

    train_settings, features = TrainSettings.of(train_settings), FeatureSettings.of(features)
    run = _run_fields(run)
    processes = n_processes(train_settings.processes)
    if processes > 1 and world_size() == 1:  # not yet inside a launch: torchrun this job
        return launch_train(
            examples,
            vars(run),
            processes=processes,
            work_dir=checkpoint_dir or Path(out_dir) / "checkpoints",
            model_dir=model_dir,
            out_dir=out_dir,
            train_settings=train_settings,
            features=features,
            checkpoint_dir=checkpoint_dir,
        )
    seed = int(run.seed)
    train, val, injected = run_training_rows(examples, run, train_settings)
    print(f"{len(train)} training rows, {len(val)} validation rows")
    return train_explainer(
        model_dir,
        train,
        out_dir,
        train_settings.config(seed, run.task),
        checkpoint_dir,
        injection=(
            with_target_map(features.injection, model_dir, run.target, run.explainer)
            if injected
            else None
        ),
        validation=val if len(val) else None,
        base_rate=train_base_rate(examples) if run.task in CHANGE_TASKS else None,
        question_format=(
            train_settings.question_format if run.task in PAPER_QUESTION_TASKS else None
        ),
    )


def run_training_rows(
    examples: pl.DataFrame, run, train_settings: TrainSettings
) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """(training rows, validation rows, whether the questions inject a vector) of one run: the
    draw of data.draws.training_rows, change-task rows asked in train.*_format (the labels are
    compact)."""
    train, val = training_rows(
        examples,
        run.task,
        base_variant(run.variant),
        int(run.seed),
        n_train=train_settings.n_train,
        n_variant=variant_n_train(run.variant, None),
        val_fraction=train_settings.val_fraction,
        n_val=train_settings.n_val,
    )
    if not TASKS[run.task].change:  # features: the vector is the question
        return train, val, True
    fmt = train_settings.question_format
    train, val = (
        asked_as(rows, run.task, train_settings.answer_format, fmt) for rows in (train, val)
    )
    return train, val, vector_question(run.task, fmt)


def asked_as(
    rows: pl.DataFrame, task: str, answer_format: str, question_format: str
) -> pl.DataFrame:
    """Change-task rows as an explainer trained in these formats is asked them (the labels are
    compact): answers in answer_format, questions in question_format; the rows' vectors kept
    (and required) where the question injects them, dropped where it names the patch in words."""
    if vector_question(task, question_format):
        rows = require_vectors(rows, task)
    else:
        rows = without_vectors(rows)
    return with_question_format(with_answer_format(rows, answer_format), task, question_format)


def require_vectors(rows: pl.DataFrame, task: str) -> pl.DataFrame:
    """The rows, checked to carry the vectors their questions are asked with."""
    missing = rows["vector"].null_count()
    if missing:
        raise ValueError(
            f"{missing} of {len(rows)} {task} rows have no patched vector, which "
            "train.question_format: paper injects at the question's feature placeholder: "
            "re-run rule label_patching (its labels keep the vector) or use "
            "train.question_format: compact"
        )
    return rows


def _run_fields(run) -> SimpleNamespace:
    """A run's wildcards (Snakemake's, a dict or any object with attributes) as attributes."""
    if isinstance(run, dict):
        return SimpleNamespace(**run)
    if hasattr(run, "items"):  # snakemake.io.Wildcards
        return SimpleNamespace(**dict(run.items()))
    return SimpleNamespace(**vars(run))


def train_base_rate(examples: pl.DataFrame) -> float:
    """The share of changed answers among all rows of the train split (before balancing): the
    rate at which the target's output changes when questions are not drawn balanced."""

    return base_rate(select(examples, "train")["answer"].to_list())


def evaluation_rows(examples: pl.DataFrame, task: str, n_test: int | None) -> pl.DataFrame:
    """The test rows every variant of a task is scored on (balanced, seed 0; at most n_test)."""
    return balanced(select(examples, "test"), task, n_test, 0)


def evaluate_run(
    examples: pl.DataFrame,
    run,
    *,
    model_dir,
    adapter_dir,
    settings: EvaluateSettings | dict,
    train_settings: TrainSettings | dict,
    features: FeatureSettings | dict,
    heatmap_pairs: int = 0,
) -> pl.DataFrame:
    """Evaluation rows of one run (run: task, target, explainer, variant, seed attributes, e.g.
    the rule's wildcards). Change tasks: every variant answers the same test rows
    (change_test_rows); explainer variants generate an answer and get a teacher-forced
    has-changed score, baseline variants answer without a model (data.baselines), fitted on
    seed 0's training draw. Features: evaluate.evaluate_features. The settings may be given as
    the config's dicts."""

    settings, train_settings = EvaluateSettings.of(settings), TrainSettings.of(train_settings)
    features, run = FeatureSettings.of(features), _run_fields(run)
    task, variant, seed = run.task, run.variant, int(run.seed)
    spec = variant_record(variant)
    summary = run_summary(adapter_dir)
    labels = eval_labels(
        task, run.target, run.explainer, variant, seed, summary.get("n_examples", 0)
    )
    fitted = fitted_rows(examples, task, train_settings) if spec.fits_train_rows else None
    if task == "features":
        return evaluate_features(
            examples,
            model_dir,
            adapter_dir,
            labels=labels,
            neighbours=fitted,
            settings=settings,
            features=features,
        )
    test_rows = change_test_rows(examples, task, settings, heatmap_pairs)
    asked = controlled_rows(test_rows, select(examples, "test"), task, variant, seed)
    if spec.answers == "baseline":
        preds, scores = baseline_predictions(variant, task, fitted, asked)
        rows = change_rows(asked, preds, scores, labels | {"n_train": len(fitted)})
    else:
        rows = explainer_rows(
            asked, run, labels, summary, model_dir, adapter_dir, settings, train_settings, features
        )
    # the scores are log-odds fitted on balanced rows: heatmaps (every cell of a pair, mostly
    # unchanged) are read at the train split's base rate of change (metrics.prior_shift), and
    # the paper's metrics are reweighted to it (metrics.natural_metrics)
    rate = train_base_rate(examples)
    return rows.with_columns(
        prior_threshold=pl.col("tf_threshold") + prior_shift(rate), base_rate=pl.lit(rate)
    )


def fitted_rows(examples: pl.DataFrame, task: str, train_settings: TrainSettings) -> pl.DataFrame:
    """What the model-free variants learn from: the trained variant's training draw of seed 0."""
    return training_rows(
        examples,
        task,
        TRAINED,
        0,
        n_train=train_settings.n_train,
        n_variant=None,
        val_fraction=train_settings.val_fraction,
    )[0]


def change_test_rows(
    examples: pl.DataFrame, task: str, settings: EvaluateSettings, heatmap_pairs: int
) -> pl.DataFrame:
    """A change task's test rows (evaluation_rows, in_sample True), plus for patching the full
    layer x position grid of heatmap_pairs test pairs (in_sample False, heatmap True)."""
    test = evaluation_rows(examples, task, settings.n_test).with_columns(in_sample=True)
    if task == "patching" and heatmap_pairs:
        grid = heatmap_rows(select(examples, "test"), heatmap_pairs)
        extra = grid.filter(~pl.col("id").is_in(test["id"].to_list()))
        test = pl.concat([test, extra.with_columns(in_sample=False)]).with_columns(
            heatmap=pl.col("id").is_in(grid["id"].to_list())
        )
    return test


def explainer_rows(
    asked: pl.DataFrame,
    run,
    labels: dict,
    summary: dict,
    model_dir,
    adapter_dir,
    settings: EvaluateSettings,
    train_settings: TrainSettings,
    features: FeatureSettings,
) -> pl.DataFrame:
    """An explainer's answers and scores on a change task's rows, asked in the formats the run
    was trained in (its summary; an untrained one: the config), its vectors injected where the
    question format asks for them."""
    answer_format = summary.get("answer_format") or "compact"
    question_format = summary.get("question_format") or train_settings.question_format
    asked = asked_as(asked, run.task, answer_format, question_format)
    model, tokenizer = load_explainer(model_dir, adapter_dir)
    injector = None
    if vector_question(run.task, question_format):
        injection = with_target_map(features.injection, model_dir, run.target, run.explainer)
        width = len(asked["vector"][0])
        injector = explainer_injector(model, tokenizer, adapter_dir, width, injection)
    with as_validated(model, adapter_dir):
        return evaluate_change_task(
            model,
            tokenizer,
            asked,
            labels=labels,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            threshold=summary_threshold(summary),
            pack=settings.pack,
            answer_format=answer_format,
            injector=injector,
        )


def main(argv: list[str] | None = None) -> None:
    """A torchrun worker: train_run from the spec launch_train wrote."""
    import torch

    (spec_path,) = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rank = os.environ.get("RANK", "0")
    if not is_main_process():  # one progress bar and one log: rank 0's
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
    print(f"worker {rank} of {world_size()}", flush=True)
    train_run(
        pl.read_parquet(spec["examples"]),
        spec["run"],
        model_dir=spec["model_dir"],
        out_dir=spec["out_dir"],
        train_settings=spec["train_settings"],
        features=spec["features"],
        checkpoint_dir=spec["checkpoint_dir"],
    )


if __name__ == "__main__":
    main()
