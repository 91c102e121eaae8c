"""Datasets the config names, through Hugging Face ``datasets``: a local parquet / json / jsonl
file, a local dataset directory (``save_to_disk`` output, or data files whose names say their
split: ``train-*.parquet``, ``data/test-*.parquet``), or a hub id. A hub id needs network or a
filled cache; without either the error says how to get one.

Used by the importers of the paper's released label sets (selfexplain.hub.released) and the prompt
sources MMLU and CounterFact (selfexplain.hub.sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfexplain.core.layout import FILE_BUILDERS, is_local

if TYPE_CHECKING:
    import datasets

SPLIT_COLUMN = "split"  # a single file's rows say their split here (our own exports do)


def load_splits(
    source: str, *, what: str, config_name: str | None = None, cache_dir: str | None = None
) -> dict[str, datasets.Dataset]:
    """Every split of the dataset source names, by split name. what says who asks (the config
    key) in errors. A single file is one split "train", unless it has a "split" column, which
    then divides it. config_name: the hub dataset's configuration (e.g. "all" for cais/mmlu)."""
    import datasets

    if is_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{what}: {source!r} does not exist (relative to {Path.cwd()}); give an existing "
                "parquet / json / jsonl file, a dataset directory, or a hub id"
            )
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix)
            if builder is None:
                raise ValueError(
                    f"{what}: {source!r} is not a parquet, json or jsonl file "
                    f"(suffixes {sorted(FILE_BUILDERS)}); convert it, or pass its directory"
                )
            loaded = datasets.load_dataset(
                builder, data_files={"train": str(path)}, cache_dir=cache_dir
            )
            return _by_split_column(loaded["train"])
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path), config_name, cache_dir=cache_dir)
        return _as_dict(loaded)
    try:
        loaded = datasets.load_dataset(source, config_name, cache_dir=cache_dir)
    except Exception as err:  # offline: ConnectionError; no such repo: DatasetNotFoundError, ...
        raise ConnectionError(
            f"{what}: cannot load the dataset {source!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). There is no network here, or 'offline' is true "
            "(HF_HUB_OFFLINE=1) and it is not in the local cache. Either fill the cache on a "
            f'machine with network (python -c "import datasets; datasets.load_dataset('
            f"'{source}'" + (f", '{config_name}'" if config_name else "") + ')" with the same '
            "HF_HOME, then copy that directory here), or download its files and set the key to "
            "a local path: a parquet / json / jsonl file or a directory of train-* / test-* "
            "files."
        ) from err
    return _as_dict(loaded)


def _as_dict(loaded) -> dict[str, datasets.Dataset]:
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return _by_split_column(loaded)


def _by_split_column(ds: datasets.Dataset) -> dict[str, datasets.Dataset]:
    """One dataset divided by its split column (without one: all of it is "train")."""
    if SPLIT_COLUMN not in ds.column_names:
        return {"train": ds}
    names = sorted(set(ds[SPLIT_COLUMN]))
    return {
        name: ds.filter(lambda s, name=name: s == name, input_columns=SPLIT_COLUMN)
        for name in names
    }


def require_splits(
    splits: dict[str, datasets.Dataset], wanted: tuple[str, ...], *, source: str, what: str
) -> None:
    """Raise naming the dataset and its splits when one of wanted is missing."""
    missing = [s for s in wanted if s not in splits]
    if missing:
        raise ValueError(
            f"{what}: dataset {source!r} has no split(s) {missing} (it has {sorted(splits)}); "
            f"a local file needs a '{SPLIT_COLUMN}' column, a directory files named "
            + " / ".join(f"{s}-*.parquet" for s in wanted)
        )


def require_columns(
    ds: datasets.Dataset, columns: tuple[str, ...], *, source: str, what: str, split: str = ""
) -> None:
    """Raise naming the first missing column and the dataset (nested fields as a.b, after
    Dataset.flatten)."""
    have = set(ds.column_names)
    missing = [c for c in columns if c not in have]
    if missing:
        where = f"{source!r}" + (f" (split {split!r})" if split else "")
        raise ValueError(
            f"{what}: dataset {where} has no column {missing[0]!r}"
            + (f" (missing: {missing})" if len(missing) > 1 else "")
            + f"; it has {sorted(have)}; needed: {list(columns)}"
        )
