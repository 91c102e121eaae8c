import polars as pl
import pytest

from selfexplain.core.schema import (
    ExplainerExample,
    meta,
    read_examples,
    read_parquet,
    split_of,
    subsample,
    to_frame,
    write_parquet,
)


def _frame(n=40):
    return to_frame(
        ExplainerExample(
            id=f"x{i}",
            task="ablation",
            target="t",
            split="train",
            question=f"q{i}",
            answer="a",
            meta={"changed": i % 4 == 0},
        )
        for i in range(n)
    )


def test_round_trip_and_datasets_loadable(tmp_path):
    df = _frame()
    path = tmp_path / "ex.parquet"
    write_parquet(df, path)
    back = read_examples(path)
    assert back.equals(df)
    from datasets import Dataset

    ds = Dataset.from_parquet(str(path))
    assert ds.num_rows == 40 and set(ds.column_names) >= {"question", "answer", "meta"}


def test_corrupt_parquet_names_file(tmp_path):
    path = tmp_path / "bad.parquet"
    write_parquet(_frame(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="bad.parquet.*truncated or corrupt"):
        read_parquet(path)


def test_split_is_deterministic_and_near_fraction():
    splits = [split_of(f"p{i}", 0.2, seed=3) for i in range(2000)]
    assert splits == [split_of(f"p{i}", 0.2, seed=3) for i in range(2000)]
    assert 0.17 < splits.count("test") / 2000 < 0.23


def test_subsample_balances_classes():
    df = _frame(40)  # 10 changed, 30 unchanged
    out = subsample(df, 16, seed=0, stratify="changed")
    flags = [m["changed"] for m in meta(out)]
    assert len(out) == 16 and flags.count(True) == 8
    assert out.equals(subsample(df, 16, seed=0, stratify="changed"))
    assert isinstance(out, pl.DataFrame)
