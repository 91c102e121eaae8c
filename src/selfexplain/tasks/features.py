"""Feature-description labels: SAE features of the target's residual stream, each described in
words from its top-activating contexts, become explainer examples whose vector is the
feature's decoder direction.

The steps before the labels live in ``selfexplain.features``: activations on the corpus
(``features.activations``), the SAE (``features.sae``), each live latent's record
(``features.records``) and its description (``features.describe``). This module is the label
maker: :func:`feature_examples` turns described records into rows of the shared schema, split
by held-out feature or by held-out frequency band.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from selfexplain.core.formats import PLACEHOLDER
from selfexplain.core.schema import ExplainerExample, split_of
from selfexplain.features.records import FeatureRecord

QUESTION = "At layer {layer}, " + PLACEHOLDER + " encodes"
HOLDOUTS = ("feature", "frequency")


def feature_question(layer: int) -> str:
    """The question about a feature read at ``layer``; PLACEHOLDER marks where its vector goes."""
    return QUESTION.format(layer=layer)


def frequency_bands(frequencies: Sequence[float], n_bands: int) -> list[int]:
    """Band index (0 = rarest) of each frequency: equal-count quantile bands of log frequency."""
    order = sorted(range(len(frequencies)), key=lambda i: (frequencies[i], i))
    bands = [0] * len(frequencies)
    for rank, i in enumerate(order):
        bands[i] = min(n_bands - 1, rank * n_bands // max(len(order), 1))
    return bands


def held_out_bands(n_bands: int, test_fraction: float, seed: int) -> set[int]:
    """A seeded choice of round(test_fraction * n_bands) bands (at least one, never all)."""
    if n_bands < 2:
        return set()
    k = min(max(1, round(test_fraction * n_bands)), n_bands - 1)
    order = sorted(
        range(n_bands), key=lambda b: hashlib.sha256(f"{seed}:band{b}".encode()).digest()
    )
    return set(order[:k])


def select_features(records: Sequence[FeatureRecord], n: int | None, seed: int = 0):
    """At most n records, a seeded choice (order by hash of the feature id), in feature order."""
    if n is None or len(records) <= n:
        return list(records)
    key = lambda r: hashlib.sha256(f"{seed}:f{r.feature}".encode()).digest()  # noqa: E731
    return sorted(sorted(records, key=key)[:n], key=lambda r: r.feature)


def feature_examples(
    records: Sequence[FeatureRecord],
    decoder: torch.Tensor,
    target: str,
    layer: int,
    *,
    test_fraction: float = 0.2,
    holdout: str = "feature",
    n_bands: int = 5,
    seed: int = 0,
) -> list[ExplainerExample]:
    """One explainer example per described feature; vector = the decoder row (target width).

    holdout="feature": a seeded test_fraction of features is held out; "frequency": whole
    frequency bands (quantiles of firing rate) are held out, so test features are rarer or
    more common than any training feature.
    """
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {list(HOLDOUTS)}, got {holdout!r}")
    bands = frequency_bands([r.frequency for r in records], n_bands)
    test_bands = held_out_bands(n_bands, test_fraction, seed)
    out = []
    for r, band in zip(records, bands, strict=True):
        if holdout == "feature":
            split = split_of(f"feature{r.feature}", test_fraction, seed)
        else:
            split = "test" if band in test_bands else "train"
        meta = {
            "feature": r.feature,
            "layer": layer,
            "frequency": r.frequency,
            "band": band,
            "max_activation": r.max_activation,
            "top_tokens": r.top_tokens,
            "promoted": r.promoted,
            "examples": r.examples,
        }
        out.append(
            ExplainerExample(
                id=f"features/{target}/l{layer}/f{r.feature}",
                task="features",
                target=target,
                split=split,
                question=feature_question(layer),
                answer=r.description,
                vector=[float(v) for v in decoder[r.feature].tolist()],
                meta=meta,
            )
        )
    return out
