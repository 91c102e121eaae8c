"""The experiment matrix: which (task, target, explainer, variant, seed) runs a config asks for.

workflow/rules/common.smk expands the DAG from :func:`runs`; the tests check the expansion
without Snakemake. Variants: see core/registry.py (which task supports which) and data-scaling
variants ``n{N}``: trained on the first N rows of the same draw, one per entry of
``train.scaling``.
"""

from __future__ import annotations

from selfexplain.core.layout import Run
from selfexplain.core.registry import SCALING, TRAINED, applies, is_scaling
from selfexplain.core.registry import variant as variant_record
from selfexplain.core.settings import TrainSettings


def scaling_sizes(config: dict) -> list[int]:
    """The training-set sizes of the data-scaling variants (distinct; below train.n_train when
    it is set). An entry above 1 is a row count, one in (0, 1] a fraction of train.n_train."""
    train = TrainSettings.from_dict(config["train"])
    n_train = train.n_train
    sizes = set()
    for f in train.scaling:
        if f > 1:
            sizes.add(int(f))
        elif n_train is None:
            raise ValueError(
                f"train.scaling entry {f} is a fraction of train.n_train, which is null (all "
                "rows): give scaling sizes as row counts above 1, or set train.n_train"
            )
        else:
            sizes.add(max(1, round(f * n_train)))
    return sorted(n for n in sizes if n_train is None or n < n_train)


def scaling_variants(config: dict) -> list[str]:
    """Variant names of the data-scaling runs, e.g. ['n40', 'n80', 'n160']."""
    return [f"n{n}" for n in scaling_sizes(config)]


def all_variants(config: dict) -> list[str]:
    """Every variant name the config can produce (for the wildcard constraint)."""
    scaling = scaling_variants(config) if TRAINED in config["variants"] else []
    return list(config["variants"]) + scaling


def base_variant(variant: str) -> str:
    """The variant a run behaves as: "trained" for a data-scaling variant n{N}."""
    return TRAINED if is_scaling(variant) else variant


def is_trained(variant: str) -> bool:
    """Whether the variant needs a trained adapter (rule train_explainer)."""
    return variant_record(variant).trains


def trained_variants(config: dict) -> list[str]:
    """The variant names that rule train_explainer produces."""
    return [v for v in all_variants(config) if is_trained(v)]


def variant_n_train(variant: str, n_train: int | None) -> int | None:
    """Training rows behind a variant: N for n{N}, 0 without training (untrained and the
    model-free baselines), else train.n_train (None: all balanced rows)."""
    match = SCALING.fullmatch(variant)
    if match:
        return int(match.group(1))
    return n_train if variant_record(variant).trains else 0


def variant_seeds(config: dict, variant: str) -> list[int]:
    """seeds for trained; control_seeds (default: seeds) for no_signal and n{N}; once else."""
    seeds = list(config["seeds"])
    which = "control_seeds" if is_scaling(variant) else variant_record(variant).seeds
    if which == "seeds":
        return seeds
    if which == "control_seeds":
        return list(config.get("control_seeds") or seeds)
    return seeds[:1]


def targets_for(config: dict, task: str) -> list[str]:
    """The targets a task runs: the first target for a task in single_target_tasks, else every
    target."""
    targets = list(config["targets"])
    return targets[:1] if task in (config.get("single_target_tasks") or []) else targets


def runs(config: dict) -> list[Run]:
    """Every evaluation of the experiment, in a fixed order (a trained variant also needs one
    training job); layout.Run gives each its paths. controls_for "self" (the default) keeps
    the language-model controls (a record's lm_control, and the data-scaling variants) to the
    pairs whose explainer is the target; "all" runs them for every pair. The data-scaling
    variants are the trained recipe on fewer rows, not a control: every pair runs them, so
    the scaling curve has self and other."""
    out = []
    variants = all_variants(config)
    every_pair = config.get("controls_for", "self") == "all"
    for task in config["tasks"]:
        for target in targets_for(config, task):
            for explainer in config["explainers"]:
                for variant in variants:
                    if not applies(task, variant):
                        continue
                    control = variant_record(variant).lm_control
                    if control and not every_pair and explainer != target:
                        continue
                    for seed in variant_seeds(config, variant):
                        out.append(Run(task, target, explainer, variant, seed))
    return out
