"""The experiment matrix: which (task, target, explainer, variant, seed) runs a config asks for.

workflow/rules/common.smk expands the DAG from :func:`runs`; the tests check the expansion
without Snakemake. Variants: ``trained``, ``untrained``, ``no_signal``, ``nearest_neighbour``
(see variants.py for which task supports which) and data-scaling variants ``n{N}``: trained on
the first N examples of the same draw of ``train.n_train`` examples, one per fraction in
``train.scaling``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from selfexplain.variants import TRAINED_VARIANTS, applies

SCALING = re.compile(r"n(\d+)")


@dataclass(frozen=True)
class Run:
    """One evaluation of the matrix (a trained variant also needs one training job)."""

    task: str
    target: str
    explainer: str
    variant: str
    seed: int

    @property
    def relation(self) -> str:
        return relation(self.target, self.explainer)


def relation(target: str, explainer: str) -> str:
    """'self' when the explainer is the target model, else 'other'."""
    return "self" if target == explainer else "other"


def scaling_sizes(config: dict) -> list[int]:
    """The training-set sizes of the data-scaling variants (distinct, below train.n_train)."""
    n_train = config["train"]["n_train"]
    sizes = {max(1, round(f * n_train)) for f in config["train"].get("scaling") or []}
    return sorted(n for n in sizes if n < n_train)


def scaling_variants(config: dict) -> list[str]:
    """Variant names of the data-scaling runs, e.g. ['n40', 'n80', 'n160']."""
    return [f"n{n}" for n in scaling_sizes(config)]


def all_variants(config: dict) -> list[str]:
    """Every variant name the config can produce (for the wildcard constraint)."""
    scaling = scaling_variants(config) if "trained" in config["variants"] else []
    return list(config["variants"]) + scaling


def is_trained(variant: str) -> bool:
    """Whether the variant needs a trained adapter (rule train_explainer)."""
    return variant in TRAINED_VARIANTS or SCALING.fullmatch(variant) is not None


def trained_variants(config: dict) -> list[str]:
    """The variant names that rule train_explainer produces."""
    return [v for v in all_variants(config) if is_trained(v)]


def variant_n_train(variant: str, n_train: int) -> int:
    """Training examples behind a variant: N for n{N}, 0 untrained, else train.n_train."""
    match = SCALING.fullmatch(variant)
    if match:
        return int(match.group(1))
    return 0 if variant == "untrained" else n_train


def variant_seeds(config: dict, variant: str) -> list[int]:
    """seeds for trained; control_seeds (default: seeds) for no_signal and n{N}; once else."""
    seeds = list(config["seeds"])
    if variant == "trained":
        return seeds
    if is_trained(variant):
        control = config.get("control_seeds")
        return list(control) if control else seeds
    return seeds[:1]


def runs(config: dict) -> list[Run]:
    """Every evaluation of the experiment, in a fixed order."""
    out = []
    scaling = scaling_variants(config) if "trained" in config["variants"] else []
    for task in config["tasks"]:
        for target in config["targets"]:
            for explainer in config["explainers"]:
                for variant in list(config["variants"]) + scaling:
                    base = "trained" if SCALING.fullmatch(variant) else variant
                    if not applies(task, base):
                        continue
                    for seed in variant_seeds(config, variant):
                        out.append(Run(task, target, explainer, variant, seed))
    return out
