"""The two registries: every task and every explainer variant, one record each.

Everything that asks "which tasks?" or "what does this variant need?" reads these records: the
config check, the experiment matrix (which runs exist), the training and evaluation of a run,
the baselines, the comparisons and the figures (their order). Adding a task is its module in
``selfexplain/tasks/`` plus one :class:`Task` line here; adding a variant of an existing kind is
one :class:`Variant` line. Plain data: no torch, so the Snakefile reads it when it builds the DAG.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Task:
    """One task: what its answers are and what its questions withhold from a control."""

    name: str
    # answers "unchanged" / "changes to <token>" (has-changed metrics, balanced draws, baselines)
    change: bool
    # the question names a privileged input (removed token; patched position and layers) that
    # the no_signal control shuffles and prompt_only strips (data.controls)
    signal: bool
    # meta key of the prompt / pair a row was made from: rows of one cluster share it (controls
    # shuffle within it; CIs resample it). None: the task's module says (hint: question_key), or
    # every row is its own cluster (features)
    group_key: str | None = None
    doc: str = ""

    def module(self) -> ModuleType:
        """The task's module in selfexplain.tasks (label recipe, questions, surface features)."""
        return importlib.import_module(f"selfexplain.tasks.{self.name}")


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("ablation", True, True, "prompt_id", "remove one input token (Captum)"),
        Task("patching", True, True, "pair_id", "patch one hidden state from a counterfactual"),
        Task("hint", True, False, None, "remove the hint of a multiple-choice question"),
        Task("features", False, False, None, "describe an SAE feature given its vector"),
    )
}
CHANGE_TASKS = tuple(name for name, t in TASKS.items() if t.change)


@dataclass(frozen=True)
class Variant:
    """One explainer variant: which tasks it applies to, what it needs, how it answers."""

    name: str
    # the tasks it is evaluated on, as a test on the task's record
    applies: Callable[[Task], bool]
    # who answers: "explainer" (a language model, trained or not), "baseline" (a classifier on
    # the question text, no model: data.baselines), "reference" (feature descriptions without a
    # model: evaluate.generation.REFERENCE_ANSWERS)
    answers: str
    # needs a trained adapter (rule train_explainer)
    trains: bool = False
    # how its questions differ from the trained variant's, in training and test alike:
    # "withhold" (data.variants.withhold_signal), "strip" (data.controls.strip_signal), None
    control: str | None = None
    # a control with a language model of its own: with controls_for "self" it runs only where
    # the explainer explains itself
    lm_control: bool = False
    # fitted on the trained variant's training draw (seed 0) without a model
    fits_train_rows: bool = False
    # which seeds: "seeds" (every seed), "control_seeds" (control_seeds, default seeds), "first"
    seeds: str = "first"
    # trained − it is one of the comparisons (comparisons.csv)
    compared: bool = True
    doc: str = ""


def _any(task: Task) -> bool:
    return True


def _change(task: Task) -> bool:
    return task.change


def _description(task: Task) -> bool:
    return not task.change


# in plot order; "trained" is the variant every comparison is made against
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("trained", _any, "explainer", trains=True, seeds="seeds", compared=False),
        Variant("untrained", _any, "explainer", lm_control=True, doc="same prompt, no training"),
        Variant(
            "no_signal",
            lambda t: t.signal or not t.change,
            "explainer",
            trains=True,
            control="withhold",
            lm_control=True,
            seeds="control_seeds",
            doc="the privileged input shuffled within the prompt (features: random vectors)",
        ),
        Variant(
            "prompt_only",
            lambda t: t.signal,
            "explainer",
            trains=True,
            control="strip",
            lm_control=True,
            seeds="control_seeds",
            doc="the clause naming the privileged input removed",
        ),
        Variant("surface", _change, "baseline", fits_train_rows=True, doc="question text"),
        Variant("constant", _change, "baseline", fits_train_rows=True, doc="majority answer"),
        Variant("nearest_neighbour", _description, "reference", fits_train_rows=True),
        Variant("floor", _description, "reference", doc="another feature's description"),
        Variant("ceiling", _description, "reference", compared=False, doc="true description"),
    )
}
TRAINED = "trained"
SCALING = re.compile(r"n(\d+)")  # data-scaling variants n{N}: trained on the first N rows


def variant(name: str) -> Variant:
    """A variant's record; a data-scaling variant n{N} behaves as trained."""
    if SCALING.fullmatch(name):
        return VARIANTS[TRAINED]
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {list(VARIANTS)} or n<N>")
    return VARIANTS[name]


def is_scaling(name: str) -> bool:
    """Whether the name is a data-scaling variant n{N}."""
    return SCALING.fullmatch(name) is not None


def applies(task: str, name: str) -> bool:
    """Whether the variant is evaluated for the task."""
    return task in TASKS and variant(name).applies(TASKS[task])


def task_variants(task: str) -> tuple[str, ...]:
    """The registered variants a task supports, in plot order."""
    return tuple(name for name in VARIANTS if applies(task, name))
