import polars as pl
import pytest

from selfexplain.metrics import (
    bootstrap_ci,
    change_answer,
    change_metrics,
    macro_f1,
    parse_change,
    score_change_rows,
)


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
