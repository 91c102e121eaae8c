"""``selfexplain ask features``: a trained explainer's description of an SAE feature (by id, from
the label file it was trained on) or of any residual vector, next to the ground truth, the
feature's top-activating contexts and the feature metrics."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from selfexplain.cli.locate import ExplainerDir, ask_models
from selfexplain.cli.render import write_jsonl
from selfexplain.core.schema import read_examples
from selfexplain.evaluate.generation import describe_vectors, evaluate_feature_task
from selfexplain.features.metrics import feature_metrics, nearest_neighbour_answers
from selfexplain.tasks.features import feature_question


def _feature_labels(args, info: ExplainerDir) -> Path | None:
    """The feature label file the explainer was trained on (or --labels)."""
    if args.labels:
        path = Path(args.labels)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such label file (--labels)")
        return path
    path = info.labels_path(task="features")
    return path if path is not None and path.is_file() else None


def _read_vectors(path: str) -> list[list[float]]:
    """Vectors from a safetensors file: its "vector" tensor, or its only tensor; (d,) or (n, d)."""
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if "vector" in tensors:
        t = tensors["vector"]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise ValueError(f"{path}: several tensors {sorted(tensors)}; name the one to ask 'vector'")
    if t.dim() not in (1, 2):
        raise ValueError(f"{path}: expected a (d,) or (n, d) tensor, got {tuple(t.shape)}")
    return (t[None] if t.dim() == 1 else t).float().tolist()


def _snippet(ex: dict, width: int = 70) -> str:
    text = f"{ex['left']}<<{ex['token']}>>{ex['right']}".replace("\n", "\\n")
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def cmd_ask_features(args) -> int:
    if (args.feature is None) == (args.vector is None):
        raise ValueError("pass --feature ID (a feature of the label file) or --vector FILE")
    info, _, explainer_model = ask_models(args, "features")
    labels_path = _feature_labels(args, info)
    labels = read_examples(labels_path) if labels_path else None
    if labels is not None:
        print(f"labels: {labels_path}", file=sys.stderr)
    truth = not args.no_truth and labels is not None
    if args.feature is not None:
        asked = _asked_features(args.feature, labels, labels_path)
    else:
        asked = _asked_vectors(_read_vectors(args.vector), args.layer, labels)
    preds = _ask_feature_explainer(explainer_model, info.adapter, asked, args)
    rows = evaluate_feature_task(asked, preds, labels={}, pool=labels) if truth else None
    records = [
        _print_feature(asked, i, pred, rows, args.n_examples) for i, pred in enumerate(preds)
    ]
    if args.out:
        write_jsonl(records, args.out)
    if truth:
        m = feature_metrics(rows)
        print(f"similarity={m['similarity']:.3f} simulation={m['simulation']:.3f} n={len(preds)}")
    else:
        print(f"n={len(preds)}")
    return 0


def _asked_features(features: list[int], labels: pl.DataFrame | None, labels_path) -> pl.DataFrame:
    """The label file's rows of the asked feature ids."""
    if labels is None:
        raise FileNotFoundError(
            "no feature label file found next to the explainer; pass --labels FILE.parquet"
        )
    ids = {json.loads(m)["feature"]: i for i, m in enumerate(labels["meta"])}
    missing = [f for f in features if f not in ids]
    if missing:
        raise ValueError(
            f"--feature {missing[0]} is not in {labels_path} ({len(ids)} features, e.g. "
            f"{sorted(ids)[:5]})"
        )
    return labels[[ids[f] for f in features]]


def _asked_vectors(
    vectors: list[list[float]], layer: int | None, labels: pl.DataFrame | None
) -> pl.DataFrame:
    """Rows asking about the given vectors: with a label file, each takes the place of its
    nearest labelled feature (the reference); without, a question at ``layer``."""
    if layer is None and labels is not None:
        layer = json.loads(labels["meta"][0])["layer"]
    if layer is None:
        raise ValueError("pass --layer L: no label file says which layer the vector is from")
    asked = pl.DataFrame(
        {
            "id": [f"vector-{i}" for i in range(len(vectors))],
            "question": [feature_question(layer)] * len(vectors),
            "vector": vectors,
        },
        schema_overrides={"vector": pl.List(pl.Float32)},
    )
    if labels is None:
        return asked
    _, nearest = nearest_neighbour_answers(
        labels["vector"].to_list(), labels["answer"].to_list(), vectors
    )
    ref = labels[nearest]
    cos = _cosines(vectors, ref["vector"].to_list())
    for i, (m, c) in enumerate(zip(ref["meta"], cos, strict=True)):
        print(f"vector {i}: nearest labelled feature {json.loads(m)['feature']} (cos {c:.3f})")
    return ref.with_columns(
        pl.Series("vector", vectors, dtype=pl.List(pl.Float32)),
        pl.Series("id", asked["id"]),
    )


def _print_feature(asked: pl.DataFrame, i: int, pred: str, rows, n_examples: int) -> dict:
    """Print the i-th asked feature's description (with truth, rows set: next to the ground
    truth, its scores and top-activating contexts) and return its JSONL record."""
    truth = rows is not None
    meta = json.loads(asked["meta"][i]) if truth else {}
    rec = {"id": asked["id"][i], "feature": meta.get("feature"), "prediction": pred}
    print(
        f"\n[{asked['id'][i]}]"
        + (
            f" feature {meta['feature']}, layer {meta['layer']}, "
            f"fires on {meta['frequency']:.2%} of tokens"
            if truth
            else ""
        )
    )
    print(f"explainer:    {pred}")
    if not truth:
        return rec
    rec |= {
        "answer": asked["answer"][i],
        "similarity": rows["similarity"][i],
        "simulation": rows["simulation"][i],
    }
    print(f"ground truth: {asked['answer'][i]}")
    print(f"similarity {rec['similarity']:.3f}, simulation {rec['simulation']}")
    print("top-activating contexts (activation, <<token>>):")
    for ex in meta["examples"][:n_examples]:
        print(f"  {ex['activation']:8.2f}  {_snippet(ex)}")
    return rec


def _cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    ta, tb = torch.tensor(a), torch.tensor(b)
    return torch.nn.functional.cosine_similarity(ta, tb, dim=-1).tolist()


def _ask_feature_explainer(model_path: Path, adapter: Path, asked, args) -> list[str]:
    """The explainer's descriptions of the asked vectors, as the pipeline's evaluate step."""
    preds = describe_vectors(
        model_path,
        adapter,
        asked,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    gc.collect()
    return preds
