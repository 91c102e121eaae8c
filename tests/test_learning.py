"""Learning diagnostics: teacher-forced scoring, validation in training, the rows a run trains
and is tested on, the model-free baselines and the paired clustered bootstrap."""

import json

import numpy as np
import polars as pl
import pytest
import torch
from toy_data import toy_examples, toy_patching_rows

from selfexplain.core.formats import format_prompt
from selfexplain.core.settings import TrainConfig
from selfexplain.data.baselines import SurfaceModel, baseline_predictions
from selfexplain.data.controls import strip_signal
from selfexplain.data.draws import balanced, groups, training_rows
from selfexplain.evaluate.generation import (
    change_answers,
    evaluate_change_task,
    generate_answers,
    load_explainer,
)
from selfexplain.evaluate.scoring import answer_forms, change_scores
from selfexplain.forward import pad_left
from selfexplain.metrics import (
    auc,
    balanced_accuracy,
    best_threshold,
    change_metrics,
    rank_threshold,
    score_change_rows,
)
from selfexplain.models import resolve
from selfexplain.report.compare import comparisons, paired_difference
from selfexplain.run import evaluation_rows
from selfexplain.train.trainer import train_explainer


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_teacher_forced_score_is_generations_first_step(name, request):
    """The score is the difference of the two forms' logits at generation's first step
    (batched, left-padded), so it orders them exactly as greedy decoding does."""
    model, tok = request.getfixturevalue(name)
    questions = ["short?", "a much longer question about the tokens here?", "mid length one?"]
    common, changed_id, unchanged_id = answer_forms(tok)
    assert not common and changed_id != unchanged_id
    scores = change_scores(model, tok, questions, batch_size=3)
    ids, mask = pad_left([tok(format_prompt(q))["input_ids"] for q in questions], tok.pad_token_id)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=1,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)
    expected = (logp[:, changed_id] - logp[:, unchanged_id]).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_teacher_forced_decision_equals_generated_answer(tmp_path):
    """On a tiny model trained to answer, every generated answer that follows a template has
    the has-changed value the teacher-forced score gives; validation picks the best step."""
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    examples = toy_examples(24)
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-2, eval_steps=4, patience=0, seed=0)
    summary = train_explainer(
        model_dir, examples.head(16), tmp_path / "a", cfg, tmp_path / "c", validation=examples
    )
    curve = summary["validation"]
    assert [p["step"] for p in curve] == [0, 4, 8, 12, 16, 20, 24]
    assert curve[0]["auc"] < 1.0 and summary["best"]["value"][0] == 1.0  # AUC selects
    model, tok = load_explainer(model_dir, tmp_path / "a")
    questions = examples["question"].to_list()
    free = generate_answers(model, tok, questions, max_new_tokens=8, batch_size=8)
    free_rows = score_change_rows(examples["answer"].to_list(), free)
    rows = evaluate_change_task(
        model, tok, examples, labels={"variant": "trained"}, max_new_tokens=8, batch_size=8
    )
    valid = free_rows["valid"].to_numpy()
    assert valid.sum() >= len(rows) // 2
    # free greedy generation writes "changes to" exactly where the score is > 0 ...
    assert (
        free_rows["pred_changed"].to_numpy()[valid] == (rows["tf_score"] > 0).to_numpy()[valid]
    ).all()
    # ... and the calibrated answers at threshold 0 are those same answers
    assert [p for p, v in zip(rows["prediction"], valid, strict=True) if v] == [
        p for p, v in zip(free, valid, strict=True) if v
    ]
    assert rows["valid"].all()  # calibrated decoding always starts with one of the two forms
    metrics = change_metrics(rows)
    assert metrics["balanced_accuracy"] == 1.0 and metrics["auc"] == 1.0


def test_calibrated_answers_follow_the_threshold(tiny_llama):
    """Above the threshold the answer is decoded after the "changes to" tokens, at or below it
    the answer is "unchanged"; the scores are the teacher-forced ones."""
    model, tok = tiny_llama
    questions = ["short?", "a much longer question about the tokens here?", "mid length one?"]
    scores = change_scores(model, tok, questions, batch_size=3)
    cut = float(np.median(scores))
    answers, got = change_answers(model, tok, questions, threshold=cut, max_new_tokens=4)
    common, changed_id, _ = answer_forms(tok)
    np.testing.assert_allclose(got, scores, atol=1e-5)
    for answer, score in zip(answers, scores, strict=True):
        if score > cut:
            assert answer.startswith(tok.decode([*common, changed_id]).strip())
        else:
            assert answer == "unchanged"


def test_rank_threshold_marks_the_base_rate_share_scored_highest(tiny_llama):
    """rank_threshold marks round(rate * n) of n questions changed, the highest scored; with
    a rate, change_answers answers "changes to" for exactly those."""
    scores = [0.3, -1.0, 2.0, 0.9, -0.2]
    assert rank_threshold(scores, 0.4) == pytest.approx((0.9 + 0.3) / 2)  # 2 of 5: 2.0, 0.9
    assert sum(s > rank_threshold(scores, 0.4) for s in scores) == 2
    assert sum(s > rank_threshold(scores, 0.0) for s in scores) == 0
    assert sum(s > rank_threshold(scores, 1.0) for s in scores) == 5
    assert rank_threshold([], 0.5) == 0.0
    model, tok = tiny_llama
    questions = ["short?", "a much longer question about the tokens here?", "mid length one?"]
    scores = change_scores(model, tok, questions, batch_size=3)
    answers, _ = change_answers(model, tok, questions, threshold=99.0, rate=1 / 3, max_new_tokens=2)
    top = int(np.argmax(scores))
    assert [a != "unchanged" for a in answers] == [i == top for i in range(3)]


def test_the_starting_score_is_never_kept_nor_stops_training():
    """A high score before the first step (noise on a small split) neither becomes the kept
    step nor runs out the patience: the best of the trained steps is kept."""
    from types import SimpleNamespace

    from selfexplain.train.validation import Validation

    scores = iter([0.9, 0.4, 0.5, 0.45, 0.3, 0.2])
    v = Validation(lambda model: {"auc": next(scores)}, "auc", 10, patience=2, resume=None)
    v.model = torch.nn.Linear(2, 2)
    control = SimpleNamespace(should_training_stop=False)
    for step in range(0, 60, 10):
        v._evaluate(SimpleNamespace(global_step=step, epoch=0.0, log_history=[]), control)
        if control.should_training_stop:
            break
    assert [p["step"] for p in v.curve] == [0, 10, 20, 30, 40]  # 0.9 at step 0 is on the curve
    assert v.best["step"] == 20 and v.best["value"] == [0.5]  # ... but not kept
    assert control.should_training_stop  # two trained scores after the best one


def test_validation_state_survives_resume(tmp_path):
    """A rerun resumes from the last checkpoint with the same curve and best step."""
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    ex = toy_examples(16)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, eval_steps=4, patience=0, seed=0)
    first = train_explainer(model_dir, ex, tmp_path / "a", cfg, tmp_path / "c", validation=ex)
    again = train_explainer(model_dir, ex, tmp_path / "b", cfg, tmp_path / "c", validation=ex)
    assert again["resumed_from"].endswith("checkpoint-8")
    assert again["validation"] == first["validation"] and again["best"] == first["best"]


def test_auc_and_balanced_accuracy_known_cases():
    assert auc([True, False, True, False], [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert auc([True, False], [0.5, 0.5]) == 0.5  # ties count one half
    assert auc([True, False, True, False], [0.1, 0.9, 0.8, 0.2]) == 0.25  # 1 of 4 pairs
    gold, pred = [True, True, True, False], [True, False, False, False]
    assert balanced_accuracy(gold, pred) == pytest.approx((1 / 3 + 1) / 2)
    assert balanced_accuracy([True, False], [None, False]) == 0.5
    # the validation-calibrated threshold: midway between the classes when they separate
    assert best_threshold([True, False, True, False], [0.9, 0.1, 0.8, 0.2]) == pytest.approx(0.5)
    assert best_threshold([True, False], [-1.0, -2.0]) == pytest.approx(-1.5)


def test_rows_balanced_grouped_and_seeded():
    ex = toy_patching_rows()
    train, val = training_rows(
        ex, "patching", "trained", 0, n_train=None, n_variant=None, val_fraction=0.6
    )
    changed = [json.loads(m)["changed"] for m in train["meta"]]
    assert sum(changed) == len(changed) - sum(changed)  # balanced
    assert len(val) > 0  # pairs 4 and 6 (hash of the group) validate
    assert not set(groups(train, "patching")) & set(groups(val, "patching"))  # grouped
    other, _ = training_rows(
        ex, "patching", "trained", 1, n_train=None, n_variant=None, val_fraction=0.6
    )
    # seeds vary the draw: which rows of the larger class, and their order
    assert len(other) == len(train) and other["id"].to_list() != train["id"].to_list()
    small, _ = training_rows(
        ex, "patching", "trained", 0, n_train=None, n_variant=4, val_fraction=0.6
    )
    assert small["id"].to_list() == train["id"].to_list()[:4]
    test = evaluation_rows(ex, "patching", None)
    assert set(test["split"]) == {"test"} and len(test) == 2 * 2 * 2  # 2 changed per pair
    assert balanced(ex, "patching", 4, 0).height == 4


def test_prompt_only_strips_the_signal_clause():
    ex = toy_patching_rows(1, 4)
    stripped = strip_signal(ex, "patching")
    assert stripped["question"].n_unique() == 1
    assert stripped["question"][0].endswith("\nReplaced: one hidden state.")
    assert "token" not in stripped["question"][0].split("\n")[-1]
    assert stripped["answer"].to_list() == ex["answer"].to_list()


def test_surface_baseline_cannot_see_the_answer():
    """Fitted on training rows; its test predictions depend only on the surface features: the
    same when the test rows' answers and label fields are changed or removed."""
    ex = toy_patching_rows()
    train, test = ex.filter(pl.col("split") == "train"), ex.filter(pl.col("split") == "test")
    answers, scores = baseline_predictions("surface", "patching", train, test)
    assert (
        balanced_accuracy([json.loads(m)["changed"] for m in test["meta"]], list(scores > 0)) == 1.0
    )  # position_kind gives it away in this toy set

    def scrub(m: str) -> str:
        meta = json.loads(m)
        for key in ("changed", "new_token"):
            meta.pop(key)
        return json.dumps(meta)

    blind = test.with_columns(
        answer=pl.lit("unchanged"), meta=pl.col("meta").map_elements(scrub, pl.String)
    )
    answers2, scores2 = baseline_predictions("surface", "patching", train, blind)
    assert answers2 == answers
    np.testing.assert_array_equal(scores2, scores)
    constant, const_scores = baseline_predictions("constant", "patching", train, test)
    assert set(constant) == {"unchanged"} and (const_scores < 0).all()
    model = SurfaceModel("patching").fit([json.loads(m) for m in train["meta"]], [1, 0] * 16)
    assert len(model.vocab) > 5


def _eval(ids, clusters, correct, gold, variant, explainer="e", seed=0):
    return pl.DataFrame(
        {
            "id": ids,
            "meta": [json.dumps({"pair_id": c}) for c in clusters],
            "gold_changed": gold,
            "exact_match": correct,
            # the score says "changed" when that is right for a correct item, wrong otherwise
            "tf_score": [1.0 if g == c else -1.0 for c, g in zip(correct, gold, strict=True)],
            "task": "patching",
            "target": "t",
            "explainer": explainer,
            "variant": variant,
            "seed": seed,
        }
    )


def test_paired_cluster_bootstrap_hand_computed():
    """Two clusters, A (two items: a right, b wrong) and B (one item: both right). Resampling
    whole clusters gives AA (p 1/4, diff 1), BB (1/4, diff 0) and AB (1/2, diff 2/3): the
    point difference is 2/3 and the 95% interval spans [0, 1]."""
    ids, clusters, gold = ["i1", "i2", "i3"], ["A", "A", "B"], [True, False, True]
    a = _eval(ids, clusters, [True, True, True], gold, "trained")
    b = _eval(ids, clusters, [False, False, True], gold, "no_signal")
    res = {r["metric"]: r for r in paired_difference([a], [b], "patching", n_boot=2000)}
    em = res["exact_match"]
    assert em["diff"] == pytest.approx(2 / 3) and em["n_clusters"] == 2 and em["n_items"] == 3
    assert em["ci_lo"] == 0.0 and em["ci_hi"] == 1.0
    table = comparisons([a, b], n_boot=200)
    assert set(table["comparison"]) == {"trained - no_signal"}
    assert table.filter(pl.col("metric") == "exact_match")["diff"][0] == pytest.approx(2 / 3)


def test_heatmap_agreement_counts_the_heatmap_cells():
    """Agreement of the predicted has-changed map with the target's on the heatmap pairs'
    cells only, read at each row's threshold; no heatmap rows, no metric."""
    from selfexplain.metrics import heatmap_agreement

    rows = pl.DataFrame(
        {
            "heatmap": [True, True, True, True, False],
            "tf_score": [1.0, -1.0, 1.0, 0.5, 1.0],
            "tf_threshold": [0.0, 0.0, 0.0, 0.7, 0.0],
            "gold_changed": [True, False, False, False, False],
            "pred_changed": [True, True, True, True, True],
        }
    )
    assert heatmap_agreement(rows) == {"heatmap_agreement": 0.75}
    assert heatmap_agreement(rows.drop("tf_score")) == {"heatmap_agreement": 0.25}
    assert heatmap_agreement(rows.drop("heatmap")) == {}
    # the threshold moved to the natural base rate, where the evaluation recorded one
    moved = rows.with_columns(prior_threshold=pl.Series([0.5, 0.0, 1.5, 1.0, 0.0]))
    assert heatmap_agreement(moved) == {"heatmap_agreement": 1.0}


def test_prior_shift_is_the_accuracy_optimal_threshold_at_the_base_rate():
    """Scores that are log-odds under a balanced prior (here the exact log-likelihood ratio of
    two unit Gaussians at -1 and +1) are best cut at prior_shift(rate) when a share ``rate`` of
    the rows is changed: the threshold maximising accuracy on a large sample lies there."""
    from selfexplain.metrics import base_rate, prior_shift

    assert prior_shift(0.5) == 0.0 and prior_shift(0.2) == pytest.approx(np.log(4))
    assert prior_shift(0.0) == pytest.approx(np.log(999))  # clipped, finite
    assert base_rate(["unchanged", "changes to ' Paris'", "unchanged", "unchanged"]) == 0.25
    rng = np.random.default_rng(0)
    rate, n = 0.2, 200_000
    gold = rng.random(n) < rate
    x = rng.normal(np.where(gold, 1.0, -1.0), 1.0)
    score = 2 * x  # log N(x; 1, 1) - log N(x; -1, 1)
    cuts = np.linspace(-1, 3, 81)
    accuracy = [((score > c) == gold).mean() for c in cuts]
    assert abs(cuts[int(np.argmax(accuracy))] - prior_shift(rate)) <= 0.15
    assert max(accuracy) - ((score > 0) == gold).mean() > 0.01  # the balanced cut loses


def test_natural_threshold_reads_the_recorded_base_rate(tmp_path):
    from selfexplain.evaluate.summary import SUMMARY, calibrated_threshold
    from selfexplain.metrics import prior_shift

    (tmp_path / SUMMARY).write_text(json.dumps({"best": {"threshold": -0.3}, "base_rate": 0.2}))
    assert calibrated_threshold(tmp_path) == pytest.approx(-0.3)
    natural = calibrated_threshold(tmp_path, natural=True)
    assert natural == pytest.approx(-0.3 + prior_shift(0.2))
    (tmp_path / SUMMARY).write_text(json.dumps({"best": {"threshold": -0.3}}))
    assert calibrated_threshold(tmp_path, natural=True) == pytest.approx(-0.3)  # no rate: as is


def test_paper_answer_format_trains_scores_and_generates_in_its_strings(tmp_path):
    """train.answer_format paper: the rows are rewritten, the summary records the format, the
    teacher-forced score reads the paper forms, and calibrated answers are paper strings whose
    change is the score's (both forms are generated: "unchanged" names the current output)."""
    from selfexplain.core.formats import COMPACT, PAPER, parse_change
    from selfexplain.core.schema import with_answer_format

    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    toy = toy_examples(24)
    toy = toy.with_columns(
        question=pl.col("question") + " " + COMPACT.instruction,
        meta=pl.lit('{"orig_token": " A"}'),
    )
    examples = with_answer_format(toy, "paper")
    _, tok = load_explainer(model_dir)
    common, changed_id, unchanged_id = answer_forms(tok, PAPER)
    assert common and changed_id != unchanged_id  # "The" is shared, then " most" / " output"
    cfg = TrainConfig(epochs=8, batch_size=4, lr=1e-2, eval_steps=8, patience=0, seed=0)
    summary = train_explainer(
        model_dir, examples.head(16), tmp_path / "a", cfg, tmp_path / "c", validation=examples
    )
    assert summary["answer_format"] == "paper" and summary["best"]["value"][0] == 1.0
    model, tok = load_explainer(model_dir, tmp_path / "a")
    rows = evaluate_change_task(
        model,
        tok,
        examples,
        labels={"variant": "trained"},
        max_new_tokens=24,
        batch_size=8,
        answer_format="paper",
    )
    parsed = [parse_change(p) for p in rows["prediction"]]
    assert all(p.valid for p in parsed)
    assert [p.changed for p in parsed] == (rows["tf_score"] > 0).to_list()
    assert all(p.startswith(("The output would", "The most likely")) for p in rows["prediction"])
    assert change_metrics(rows)["balanced_accuracy"] == 1.0
