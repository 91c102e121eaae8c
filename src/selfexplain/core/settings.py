"""Typed settings: one frozen dataclass per section of the experiment config.

The schema (workflow/schemas/config.schema.yaml) checks types and ranges and fills in the
defaults before any rule runs; these classes carry the validated sections into the code with a
type and a one-line doc per field (``dataclasses.fields(cls)[i].metadata["doc"]``). Their
defaults equal the schema's (tests/test_reliability.py::test_one_source_of_defaults), so a
section built from a partial dict means what the default config says.

Build one with :func:`from_config` (a whole config) or ``Cls.from_dict`` / ``Cls.of`` (one
section's dict; ``of`` passes an instance through). Unknown keys raise ValueError naming the key
and the section. The fine-tuning hyper-parameters of ``train`` stay in :class:`TrainConfig`
(selfexplain.train.trainer), built per run by :meth:`TrainSettings.config`.

This module imports no torch: the Snakefile reads it when it builds the DAG.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Self

from selfexplain.core.registry import TASKS as REGISTERED_TASKS


def _field(default: Any = MISSING, *, doc: str) -> Any:
    """A dataclass field with its doc (metadata["doc"]); list, dict and section defaults are
    copied per instance."""
    meta = {"doc": doc}
    if isinstance(default, type):  # a nested section: its own defaults
        return field(default_factory=default, metadata=meta)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _sections_in(hint: Any) -> tuple[list[type[Section]], bool]:
    """The Section classes a field's type names, and whether it allows None."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    found = [a for a in args if isinstance(a, type) and issubclass(a, Section)]
    return found, type(None) in args


@dataclass(frozen=True, kw_only=True)
class Section:
    """A config section: from_dict / of build it from the section's dict."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def _check_keys(cls, d: dict, allowed: set[str]) -> None:
        unknown = sorted(set(d) - allowed)
        if unknown:
            keys = ", ".join(repr(k) for k in unknown)
            raise ValueError(
                f"unknown key(s) {keys} in config section '{cls.SECTION}'; "
                f"allowed keys: {sorted(allowed)}"
            )
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is MISSING and f.default_factory is MISSING
        }
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"config section '{cls.SECTION}' needs key(s) {missing}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Self:
        """The section from its config dict (None or missing keys: the defaults); nested
        sections are converted too."""
        d = dict(d or {})
        cls._check_keys(d, {f.name for f in dataclasses.fields(cls)})
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            nested, optional = _sections_in(hints[name])
            if nested and not isinstance(value, nested[0]) and not (value is None and optional):
                d[name] = nested[0].from_dict(value)
        return cls(**d)

    @classmethod
    def of(cls, value: Self | dict | None) -> Self:
        """value itself when it already is this section, else from_dict(value)."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    def as_config(self) -> dict:
        """The section as its config dict (from_dict(as_config()) gives it back)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class AblationSettings(Section):
    """Input ablation: which prompts, and how the target's removals are labelled."""

    SECTION: ClassVar[str] = "ablation"

    prompts_file: str | None = _field(
        None, doc="your own JSONL ({'prompt': ..., 'hint': ...} per line) instead of the generator"
    )
    n_per_kind: int = _field(480, doc="generated prompts per kind")
    source: str = _field(
        "generated",
        doc="generated (the prompt generators) or mmlu (n_per_kind hinted MMLU questions)",
    )
    dataset: str | None = _field(None, doc="mmlu: a dataset id or local path (null: cais/mmlu)")
    kinds: list[str] = _field(
        ["fact", "arithmetic", "agreement", "copying"], doc="prompt kinds generated"
    )
    holdout: str = _field(
        "fact",
        doc="test split holds out whole facts (fact: no test prompt states a training "
        "prompt's fact; prompts without one by prompt) or prompts (prompt)",
    )
    test_fraction: float = _field(
        0.2, doc="fraction of facts (or prompts) held out for the test split"
    )
    engine: str = _field(
        "feature_ablation", doc="feature_ablation (batched removals) or llm_attribution (Captum)"
    )
    batch_size: int = _field(32, doc="removals per forward")
    drop_last: bool = _field(True, doc="no question about removing the prompt's last token")
    labels_from: dict[str, str] = _field(
        {}, doc="{target: dataset}: import the paper's released labels (selfexplain.hub.released)"
    )


@dataclass(frozen=True, kw_only=True)
class HintSettings(Section):
    """Hint removal: hinted multiple-choice prompts, two forwards each."""

    SECTION: ClassVar[str] = "hint"

    prompts_file: str | None = _field(
        None, doc="your own JSONL ({'prompt': ..., 'hint': ...} per line, hint required)"
    )
    n_prompts: int = _field(1000, doc="generated hinted multiple-choice prompts")
    source: str = _field(
        "generated", doc="generated (the generator) or mmlu (hinted MMLU questions)"
    )
    form: str = _field(
        "strong", doc="generated prompts: plain, strong, few_shot or few_shot_strong (prompts)"
    )
    chat: bool = _field(
        True, doc="the target reads each prompt as a user turn of its chat template"
    )
    dataset: str | None = _field(None, doc="mmlu: a dataset id or local path (null: cais/mmlu)")
    holdout: str = _field(
        "subject",
        doc="test split holds out whole subjects (subject: every question about one) or "
        "(relation, subject) questions (question)",
    )
    test_fraction: float = _field(
        0.3, doc="fraction of subjects (or questions) held out for the test split"
    )
    batch_size: int = _field(32, doc="prompts per step")
    labels_from: dict[str, str] = _field(
        {}, doc="{target: dataset}: import the paper's released labels (selfexplain.hub.released)"
    )


@dataclass(frozen=True, kw_only=True)
class PatchingSettings(Section):
    """Activation patching: counterfactual pairs and the (layer window, position) grid."""

    SECTION: ClassVar[str] = "patching"

    pairs_file: str | None = _field(
        None, doc="your own JSONL ({'clean': ..., 'counterfactual': ...} per line)"
    )
    n_pairs: int = _field(500, doc="generated candidate pairs (subject swaps)")
    source: str = _field(
        "generated", doc="generated (the pair generator) or counterfact (CounterFact facts)"
    )
    dataset: str | None = _field(
        None, doc="counterfact: a dataset id or local path (null: azhx/counterfact)"
    )
    formats: list[str] = _field(["mcq", "cloze"], doc="pair formats generated: mcq, cloze")
    max_pairs: int = _field(100, doc="pairs kept per target (equal length, different outputs)")
    window: int = _field(4, doc="consecutive layers patched together (1 = a single layer)")
    layer_stride: int = _field(4, doc="window starts 0, stride, 2*stride, ...")
    max_positions: int | None = _field(12, doc="positions per pair (null = every position)")
    holdout: str = _field(
        "entity",
        doc="test split holds out whole components of pairs linked by a subject (entity: no "
        "subject of a test pair in training), relations, pairs (prompt) or layer windows (layer)",
    )
    test_fraction: float = _field(0.3, doc="fraction of kept pairs held out for the test split")
    batch_size: int = _field(64, doc="patched rows per forward")
    heatmap_pairs: int = _field(3, doc="test pairs whose every cell is evaluated for heatmaps")
    labels_from: dict[str, str] = _field(
        {}, doc="{target: dataset}: import the paper's released labels (selfexplain.hub.released)"
    )


@dataclass(frozen=True, kw_only=True)
class GeneratorSettings(Section):
    """A text generator that writes (describer) or judges descriptions."""

    SECTION: ClassVar[str] = "features.describer"

    kind: str = _field("deterministic", doc="deterministic (a template, no model), hf, openai")
    model: str | None = _field(None, doc="hf: a model directory; openai: the model name")
    base_url: str | None = _field(None, doc="openai: the server, e.g. http://localhost:8000/v1")
    api_key_env: str | None = _field(
        "OPENAI_API_KEY", doc="openai: environment variable holding the key (sent only if set)"
    )
    max_new_tokens: int = _field(32, doc="length of a generated reply")


@dataclass(frozen=True, kw_only=True)
class JudgeSettings(GeneratorSettings):
    """The optional LM judge: the describer's keys, kind required, no key variable by default."""

    SECTION: ClassVar[str] = "features.judge"

    kind: str = _field(doc="hf or openai (required)")
    api_key_env: str | None = _field(
        None, doc="openai: environment variable holding the key (null: none sent)"
    )


@dataclass(frozen=True, kw_only=True)
class TokenIdentitySettings(Section):
    """The injection-path sanity check: name the word whose embedding is injected."""

    SECTION: ClassVar[str] = "features.token_identity"

    n_train: int = _field(4000, doc="training words (distinct; test words are disjoint)")
    n_test: int = _field(200, doc="held-out test words")
    n_val: int = _field(
        150, doc="validation words: the adapter kept is the step with their lowest answer loss"
    )
    epochs: float = _field(1, doc="training epochs (overrides train.epochs)")
    lr: float = _field(0.0001, doc="learning rate (overrides train.lr)")
    scales: list[float] = _field(
        [0.5, 1.0, 2.0, 4.0], doc="untrained baseline: injection norms, x the reference norm"
    )

    def check(self) -> dict:
        """The run settings of token_identity.run_token_identity."""
        return {
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_val": self.n_val,
            "scales": self.scales,
        }

    def overrides(self) -> dict:
        """The train.* settings this check replaces."""
        return {"epochs": self.epochs, "lr": self.lr}


@dataclass(frozen=True, kw_only=True)
class FeatureSettings(Section):
    """SAE features: activations, the SAE, descriptions, examples and their injection."""

    SECTION: ClassVar[str] = "features"

    corpus_file: str | None = _field(None, doc="your own UTF-8 text instead of the packaged corpus")
    layer: int | None = _field(None, doc="target layer read (null = the middle one)")
    context_len: int = _field(64, doc="tokens per corpus window")
    n_windows: int = _field(1500, doc="corpus windows read")
    batch_size: int = _field(16, doc="windows per forward")
    sae_dir: str | None = _field(None, doc="an external SAE checkpoint dir instead of training one")
    n_latents: int = _field(3072, doc="TopK SAE size")
    k: int = _field(32, doc="active latents per token")
    sae_epochs: int = _field(4, doc="passes over the activations when training the SAE")
    sae_batch_size: int = _field(1024, doc="activation vectors per SAE step")
    sae_lr: float = _field(0.0005, doc="SAE learning rate (Adam)")
    n_examples: int = _field(8, doc="top-activating contexts kept per latent")
    min_count: int = _field(8, doc="a latent is live if it fires on at least this many tokens")
    n_features: int | None = _field(1000, doc="live latents described (seeded choice; null: all)")
    describer: GeneratorSettings = _field(
        GeneratorSettings, doc="who writes the ground-truth descriptions"
    )
    judge: JudgeSettings | None = _field(None, doc="optional LM judge (null: none)")
    holdout: str = _field("feature", doc="test split: held-out features, or frequency bands")
    test_fraction: float = _field(0.2, doc="fraction of features (or bands) held out for test")
    n_bands: int = _field(5, doc="frequency bands for holdout: frequency")
    inject_layer: int = _field(0, doc="explainer block whose input gets the vector (0: embedding)")
    inject_scale: float | None = _field(
        None, doc="vector norm after unit-normalising (null: the explainer's mean norm there)"
    )
    n_distractors: int = _field(4, doc="simulation score: distractor contexts per true context")
    max_new_tokens: int = _field(40, doc="length of a generated description")
    token_identity: TokenIdentitySettings = _field(
        TokenIdentitySettings, doc="the token identity check of the injection path"
    )

    @property
    def injection(self) -> dict:
        """Where and at what norm the explainer gets the vector ({"layer", "scale"})."""
        return {"layer": self.inject_layer, "scale": self.inject_scale}


@dataclass(frozen=True, kw_only=True)
class TrainSettings(Section):
    """Which rows a run trains and validates on; every other key of ``train`` is a fine-tuning
    hyper-parameter of train.TrainConfig (kept in ``hyper``, defaults from TrainConfig)."""

    SECTION: ClassVar[str] = "train"
    # the schema's train keys that are TrainConfig fields
    HYPER_KEYS: ClassVar[tuple[str, ...]] = (
        "eval_steps",
        "patience",
        "epochs",
        "batch_size",
        "grad_accum",
        "lr",
        "lr_scheduler",
        "method",
        "warmup_ratio",
        "weight_decay",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "max_length",
        "save_steps",
        "group_by_length",
        "pack",
        "precision",
        "deepspeed",
    )

    # the tasks per_task may name, and TrainConfig.method's default
    TASKS: ClassVar[tuple[str, ...]] = tuple(REGISTERED_TASKS)
    DEFAULT_METHOD: ClassVar[str] = "lora"

    n_train: int | None = _field(None, doc="training rows per explainer, balanced (null: all)")
    scaling: list[float] = _field([], doc="data-scaling variants n{N}: counts or fractions")
    val_fraction: float = _field(0.15, doc="share of the train split's groups that validate")
    n_val: int | None = _field(200, doc="validation rows scored (balanced; null: all)")
    processes: int | None = _field(
        None, doc="processes per training job (torchrun); null: one per visible GPU, 1 on CPU"
    )
    answer_format: str = _field(
        "compact", doc="change answers: compact or paper (the reference strings; metrics.py)"
    )
    question_format: str = _field(
        "compact", doc="hint questions: compact (ours) or paper (the reference user turn)"
    )
    per_task: dict = _field(
        {"ablation": {"lr_scheduler": "cosine", "patience": 0}},
        doc="{task: {key: value}}: a task's own fine-tuning keys, over the section's",
    )
    hyper: dict = _field({}, doc="the TrainConfig keys as the config gives them")

    @classmethod
    def from_dict(cls, d: dict | None) -> Self:
        d = dict(d or {})
        rows = {f.name for f in dataclasses.fields(cls)} - {"hyper"}
        cls._check_keys(d, rows | set(cls.HYPER_KEYS))
        hyper = {k: d.pop(k) for k in cls.HYPER_KEYS if k in d}
        per_task = {
            task: dict(keys or {}) for task, keys in (d.pop("per_task", None) or {}).items()
        }
        for task, keys in per_task.items():
            if task not in cls.TASKS:
                raise ValueError(
                    f"config key 'train.per_task.{task}': no task {task!r}; "
                    f"tasks: {list(cls.TASKS)}"
                )
            unknown = sorted(set(keys) - set(cls.HYPER_KEYS))
            if unknown:
                raise ValueError(
                    f"unknown key(s) {unknown} in config section 'train.per_task.{task}'; "
                    f"allowed keys (the fine-tuning keys of train): {sorted(cls.HYPER_KEYS)}"
                )
        return cls(**d, per_task=per_task, hyper=hyper)

    def as_config(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hyper"}
        return copy.deepcopy(d | self.hyper)

    def hyper_of(self, task: str | None) -> dict:
        """The fine-tuning keys of a task's runs: the section's, then train.per_task[task]."""
        return self.hyper | self.per_task.get(task, {})

    def method(self, task: str | None) -> str:
        """How a task's explainers are trained: "lora" or "full" (train.method, per task)."""
        return self.hyper_of(task).get("method", self.DEFAULT_METHOD)

    def config(self, seed: int, task: str | None = None) -> TrainConfig:
        """The TrainConfig of one run of a task (train.train_config; task None: the section's
        keys without any per-task override)."""

        return train_config(self.hyper_of(task), seed)

    @staticmethod
    def job_params(section: dict, task: str | None = None) -> dict:
        """The train section as one job's params: train.per_task narrowed to that task's entry
        (none for task None). The job reads nothing else of per_task, and Snakemake reruns a
        job whose params change: editing one task's per-task keys reruns that task's jobs only."""
        per_task = section.get("per_task") or {}
        return section | {"per_task": {task: per_task[task]} if task in per_task else {}}


@dataclass(frozen=True, kw_only=True)
class EvaluateSettings(Section):
    """How the test rows are answered."""

    SECTION: ClassVar[str] = "evaluate"

    n_test: int | None = _field(None, doc="test rows per explainer (null: every balanced row)")
    max_new_tokens: int = _field(16, doc="longest generated answer (change tasks)")
    batch_size: int = _field(16, doc="questions per forward / generation batch")
    pack: int = _field(8, doc="questions per packed sequence when scoring (1: unpacked)")


@dataclass(frozen=True, kw_only=True)
class PlotSettings(Section):
    """Tables and figures."""

    SECTION: ClassVar[str] = "plot"

    n_boot: int = _field(1000, doc="bootstrap resamples for every CI")


SECTIONS: dict[str, type[Section]] = {
    cls.SECTION: cls
    for cls in (
        AblationSettings,
        HintSettings,
        PatchingSettings,
        FeatureSettings,
        TrainSettings,
        EvaluateSettings,
        PlotSettings,
    )
}


def from_config(config: dict, section: str) -> Section:
    """The typed settings of one section of a config (a section left out: its defaults)."""
    if section not in SECTIONS:
        raise ValueError(f"no config section {section!r}; sections: {sorted(SECTIONS)}")
    return SECTIONS[section].from_dict(config.get(section))


@dataclass
class TrainConfig:
    """Hyper-parameters of one explainer fine-tuning run."""

    epochs: float = 2.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    # HF scheduler name: constant_with_warmup (the reference configs' constant LR), cosine, linear
    lr_scheduler: str = "constant_with_warmup"
    # lora: train a LoRA adapter on all linear layers; full: train every weight (the paper's
    # input-ablation and feature explainers), saved as a whole model directory
    method: str = "lora"
    warmup_ratio: float = 0.05  # fraction of the steps spent warming up
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    max_length: int = 320
    save_steps: int = 25  # checkpoint interval (with a validation split: eval_steps)
    logging_steps: int = 5
    # validation (when a validation split is given): score it every eval_steps optimizer steps,
    # keep the best adapter, stop after `patience` scores without improvement (0: never stop)
    eval_steps: int = 50
    patience: int = 3
    seed: int = 0
    deepspeed: str | None = None
    # batches of similar-length examples (HF LengthGroupedSampler): less compute on padding,
    # but one prompt's questions (same length) then share batches; off = random order
    group_by_length: bool = False
    # questions per packed training sequence (selfexplain.packing): the questions of one prompt
    # share one forward of their common prefix; a batch still holds batch_size questions
    # (packing.plan_batches), so a run takes exactly as many steps as unpacked.
    # 1 = no packing. Vector (feature) rows never pack.
    pack: int = 4
    # fp32: every weight and matmul in float32. bf16: the frozen base model's blocks in
    # bfloat16 and its matmuls in bfloat16 (autocast); embeddings, output layer, the trained
    # weights (LoRA, vector map) and the optimizer in float32 (to_bf16). Measured 1.2-1.6x
    # faster training on a CPU with AVX512-BF16 (docs/performance.md). auto: bf16 where the
    # hardware computes it natively (native_bf16) for a LoRA run without DeepSpeed, else fp32.
    # On a GPU, fp32 still autocasts to bf16 where the GPU has it.
    precision: str = "auto"
    extra: dict = field(default_factory=dict)


def train_config(settings: dict, seed: int) -> TrainConfig:
    """TrainConfig from the config's ``train`` section (keys that are not TrainConfig fields,
    such as n_train, scaling and the validation split's size, belong to the run's rows)."""
    from dataclasses import fields

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(seed=seed, **{k: v for k, v in settings.items() if k in names})
