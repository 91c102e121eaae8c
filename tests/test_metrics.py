import numpy as np
import polars as pl
import pytest

from selfexplain.core.formats import change_answer, parse_change
from selfexplain.metrics import bootstrap_ci, change_metrics, macro_f1, score_change_rows


def test_answer_template_round_trips():
    for token in [" Paris", '"', "\n", " 7", "ünï"]:
        parsed = parse_change(change_answer(True, token))
        assert parsed.valid and parsed.changed and parsed.new_token == token
    assert parse_change("unchanged") == parse_change(" unchanged.")
    assert parse_change("blah").valid is False


def test_macro_f1_hand_computed():
    gold = [True, True, False, False]
    pred = [True, False, False, None]
    # changed: P=1/1, R=1/2 -> 2/3 ; unchanged: P=1/2, R=1/2 -> 1/2
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert macro_f1([True, False], [True, False]) == 1.0


def test_change_metrics_values():
    gold = [change_answer(True, " A"), change_answer(True, " B"), "unchanged", "unchanged"]
    pred = [change_answer(True, " A"), change_answer(True, " C"), "unchanged", "junk"]
    rows = score_change_rows(gold, pred)
    m = change_metrics(rows)
    assert m["exact_match"] == pytest.approx(0.5)
    assert m["content_match"] == pytest.approx(0.5)
    assert m["valid"] == pytest.approx(0.75)
    # changed: P=2/2,R=2/2 -> 1 ; unchanged: P=1/1, R=1/2 -> 2/3
    assert m["has_changed_f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_bootstrap_ci_brackets_value():
    rows = score_change_rows(
        ["unchanged"] * 50 + [change_answer(True, " x")] * 50,
        ["unchanged"] * 70 + [change_answer(True, " x")] * 30,
    )
    ci = bootstrap_ci(rows, change_metrics, n_boot=200, seed=1)
    value = change_metrics(rows)["exact_match"]
    lo, hi = ci["exact_match"]
    assert lo < value < hi and hi - lo < 0.3
    assert isinstance(rows, pl.DataFrame)


def test_bootstrap_ci_resamples_whole_clusters():
    """10 clusters of 20 rows, each cluster all right or all wrong (5 of each): resampling rows
    gives a half-width near 1.96 x sqrt(.25 / 200) = 0.07, resampling clusters one near
    1.96 x sqrt(.25 / 10) = 0.31. A cluster key per row is required."""
    right = [(i // 20) % 2 == 0 for i in range(200)]
    rows = pl.DataFrame({"exact_match": right})
    clusters = [f"p{i // 20}" for i in range(200)]

    def mean(r):
        return {"em": float(r["exact_match"].mean())}

    lo, hi = bootstrap_ci(rows, mean, n_boot=1000, seed=0)["em"]
    clo, chi = bootstrap_ci(rows, mean, n_boot=1000, seed=0, clusters=clusters)["em"]
    assert (hi - lo) / 2 < 0.1 < 0.2 < (chi - clo) / 2 < 0.4
    with pytest.raises(ValueError, match="cluster keys"):
        bootstrap_ci(rows, mean, clusters=clusters[:5])


def test_answer_formats_round_trip_and_parse_either():
    from selfexplain.core.formats import COMPACT, PAPER, answer_format, format_of

    paper_changed = PAPER.answer(True, " Paris")
    paper_same = PAPER.answer(False, None, " Rome")
    assert paper_changed == "The most likely output would change to <<< Paris>>>."
    assert paper_same == "The output would remain unchanged from <<< Rome>>>."
    assert COMPACT.answer(True, " Paris") == change_answer(True, " Paris")
    assert parse_change(paper_changed) == parse_change(COMPACT.answer(True, " Paris"))
    assert parse_change(paper_same) == parse_change("unchanged")
    # a cut-off answer still says which way it went; anything else is invalid
    assert parse_change("The most likely output would change to <<<Par").changed is True
    assert parse_change("The output would remain").valid is False
    assert format_of(["unchanged", paper_same]) is PAPER and format_of(["unchanged"]) is COMPACT
    with pytest.raises(ValueError, match="names the current output"):
        PAPER.answer(False, None)
    with pytest.raises(ValueError, match=r"unknown answer format 'long'.*compact.*paper"):
        answer_format("long")


def test_exact_match_is_the_whole_string_in_one_format_and_the_change_across():
    from selfexplain.core.formats import PAPER

    gold = [PAPER.answer(False, None, " Rome"), PAPER.answer(True, " B"), "unchanged"]
    pred = [PAPER.answer(False, None, " Oslo"), PAPER.answer(True, " B"), PAPER.answer(True, " B")]
    rows = score_change_rows(gold, pred)
    # the paper's exact match: X is part of the string; across formats (compact gold names no
    # current output) the change and the new token decide
    assert rows["exact_match"].to_list() == [False, True, False]
    cross = score_change_rows(['changes to " B"', "unchanged"], [pred[1], pred[0]])
    assert cross["exact_match"].to_list() == [True, True]
    assert cross["content_match"].to_list() == [True, None]


def test_with_answer_format_rewrites_answers_and_the_instruction():
    from selfexplain.core.formats import COMPACT, PAPER
    from selfexplain.core.schema import ExplainerExample, to_frame, with_answer_format

    def row(i, answer, orig):
        return ExplainerExample(
            id=f"r{i}",
            task="ablation",
            target="t",
            split="train",
            question=f"Prompt {i}? {COMPACT.instruction}\nRemoved: token 0.",
            answer=answer,
            meta={"orig_token": orig},
        )

    df = to_frame([row(0, 'changes to " B"', " A"), row(1, "unchanged", " A")])
    assert with_answer_format(df, "compact") is df
    out = with_answer_format(df, "paper")
    assert out["answer"].to_list() == [PAPER.answer(True, " B"), PAPER.answer(False, None, " A")]
    assert all(PAPER.instruction in q and COMPACT.instruction not in q for q in out["question"])
    assert out["question"][0].endswith("\nRemoved: token 0.")
    bad = df.with_columns(pl.Series("question", ["no instruction here", "x"]))
    with pytest.raises(ValueError, match="no 'Answer"):
        with_answer_format(bad, "paper")


def test_natural_metrics_reweight_balanced_rows_to_the_base_rate():
    """10 changed rows answered right and 10 unchanged answered wrong ("changed" every time),
    at a natural rate of change of 0.2: exact match 0.2 x 1 + 0.8 x 0 = 0.2; has-changed F1
    changed: precision 0.2, recall 1 -> 1/3, unchanged 0 -> macro 1/6. The rate comes from
    base_rate, or from prior_threshold - tf_threshold (= log(0.8 / 0.2)) in older files."""
    from selfexplain.metrics import natural_metrics, natural_rate

    rows = pl.DataFrame(
        {
            "gold_changed": [True] * 10 + [False] * 10,
            "pred_changed": [True] * 20,
            "exact_match": [True] * 10 + [False] * 10,
            "base_rate": [0.2] * 20,
        }
    )
    m = natural_metrics(rows)
    assert m["exact_match_natural"] == pytest.approx(0.2)
    assert m["has_changed_f1_natural"] == pytest.approx(1 / 6)
    older = rows.drop("base_rate").with_columns(
        tf_threshold=pl.lit(0.5), prior_threshold=pl.lit(0.5 + np.log(4))
    )
    assert natural_rate(older) == pytest.approx(0.2)
    assert natural_metrics(older) == pytest.approx(m)
    assert natural_metrics(rows.drop("base_rate")) == {}
