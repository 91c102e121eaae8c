"""Baselines without model access for the change tasks: ``constant`` and ``surface``.

- ``constant``: always the most frequent answer of the training rows (on a balanced test set:
  balanced accuracy 0.5, AUC 0.5, exact match = the share of that answer).
- ``surface``: a logistic regression on features the *question text* states (each task module's
  ``surface_features``: kind of position, distance from the end, layer window, token class,
  whether the model follows the hint, ...), one-hot with all pairwise crosses, fitted on the
  same training rows as the explainers. It says how much of has-changed is predictable from
  the question's surface, without reading the target's computation. It never sees the answer
  column or any label field (tested).

Both return, per test row, a has-changed score (the column ``tf_score`` that the explainers'
teacher-forced score fills, > 0 meaning "changed") and an answer string.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import torch

from selfexplain.core.formats import UNCHANGED, change_answer, parse_change
from selfexplain.core.registry import TASKS
from selfexplain.core.schema import meta


def surface_function(task: str) -> Callable[[dict], dict[str, str]]:
    """The task's surface_features(meta) -> {feature: value}."""
    if task not in TASKS or not TASKS[task].change:
        raise ValueError(f"no surface features for task {task!r}")
    return TASKS[task].module().surface_features


def _tokens(features: dict[str, str]) -> list[str]:
    """One-hot tokens of a feature dict: each value and each pair of values."""
    singles = [f"{k}={v}" for k, v in sorted(features.items())]
    return singles + [f"{a}&{b}" for a, b in itertools.combinations(singles, 2)]


class SurfaceModel:
    """L2-regularised logistic regression on one-hot surface-feature tokens."""

    def __init__(self, task: str, l2: float = 1e-2):
        self.features = surface_function(task)
        self.l2 = l2
        self.vocab: dict[str, int] = {}
        self.weight = torch.zeros(0)
        self.bias = torch.zeros(())

    def _matrix(self, metas: Sequence[dict]) -> torch.Tensor:
        x = torch.zeros(len(metas), len(self.vocab))
        for i, m in enumerate(metas):
            for tok in _tokens(self.features(m)):
                j = self.vocab.get(tok)
                if j is not None:
                    x[i, j] = 1.0
        return x

    def fit(self, metas: Sequence[dict], changed: Sequence[bool]) -> SurfaceModel:
        """Fit on training rows' meta dicts (only surface_features reads them) and labels."""
        counts = Counter(tok for m in metas for tok in _tokens(self.features(m)))
        self.vocab = {tok: j for j, tok in enumerate(sorted(counts))}
        x = self._matrix(metas)
        y = torch.tensor([float(c) for c in changed])
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
            loss = loss + self.l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def scores(self, metas: Sequence[dict]) -> np.ndarray:
        """Log-odds of "changed" per row."""
        return (self._matrix(metas) @ self.weight + self.bias).numpy()


def constant_predictions(
    task: str, train: pl.DataFrame, test: pl.DataFrame
) -> tuple[list[str], np.ndarray]:
    """The most frequent training answer for every test row, scored +1 / -1 by its class."""
    top = Counter(train["answer"].to_list()).most_common(1)[0][0]
    score = 1.0 if parse_change(top).changed else -1.0
    return [top] * len(test), np.full(len(test), score)


def surface_predictions(
    task: str, train: pl.DataFrame, test: pl.DataFrame
) -> tuple[list[str], np.ndarray]:
    """SurfaceModel's has-changed scores; "changed" rows answer the most frequent new token."""
    answers = train["answer"].to_list()
    changed = [bool(parse_change(a).changed) for a in answers]
    model = SurfaceModel(task).fit(meta(train), changed)
    scores = model.scores(meta(test))
    new_tokens = [parse_change(a).new_token for a, c in zip(answers, changed, strict=True) if c]
    common = Counter(t for t in new_tokens if t is not None).most_common(1)
    when_changed = change_answer(True, common[0][0]) if common else "changes to"
    return [when_changed if s > 0 else UNCHANGED for s in scores], scores


# the baseline variants of core.registry (answers "baseline") and how each predicts
PREDICTORS: dict[str, Callable[..., tuple[list[str], np.ndarray]]] = {
    "constant": constant_predictions,
    "surface": surface_predictions,
}
MODEL_FREE = tuple(PREDICTORS)


def baseline_predictions(
    variant: str, task: str, train: pl.DataFrame, test: pl.DataFrame
) -> tuple[list[str], np.ndarray]:
    """(answers, has-changed scores) of a model-free baseline for the test rows, fitted on the
    training rows (questions and answers of train; only the meta surface features of test)."""
    if variant not in PREDICTORS:
        raise ValueError(f"unknown model-free baseline {variant!r}; use one of {MODEL_FREE}")
    return PREDICTORS[variant](task, train, test)
