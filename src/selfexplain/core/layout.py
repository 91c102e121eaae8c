"""Where every result lives: the one definition of the paths under ``results/``, ``resources/``
and ``logs/`` (relative to the working directory), and the parsers that read a run back from a
path.

The rules (``workflow/rules/*.smk``, through ``common.smk``), the workflow scripts, the CLI and
``tables`` call these functions; nothing else spells a results path. One run of the matrix is a
:class:`Run`; its files hang off ``<task>/<target>/<explainer>/<variant>/s<seed>``:

    results/explainers/<run>/adapter_model.safetensors, train_summary.json   (train_explainer)
    results/checkpoints/<run>/                                              (resumable training)
    results/eval/<run>.parquet                                              (evaluate)
    results/benchmarks/<rule>/<run>.tsv, logs/<rule>/<run>.log

``Run.pattern()`` is the run made of Snakemake wildcards (``{task}``, ..., ``{seed}``), so
``Run.pattern().eval_file()`` is the evaluate rule's output pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RESULTS = "results"
MODELS = "resources/models"
LOGS = "logs"
MODEL_MARKER = "selfexplain_model.json"
ADAPTER_FILE = "adapter_model.safetensors"
FULL_MODEL_FILE = "model.safetensors"  # train.method full: the whole fine-tuned model
SUMMARY_FILE = "train_summary.json"
RUN_RULES = ("train_explainer", "evaluate")  # rules with one job per run
_SEED = re.compile(r"s(\d+)")


# ------------------------------------------------------------------------------ models


def model_dir(name: str) -> str:
    """The HF directory a model of config.models is materialised into."""
    return f"{MODELS}/{name}"


def model_marker(name: str) -> str:
    """The file rule get_model writes last (the model directory is complete when it exists)."""
    return f"{model_dir(name)}/{MODEL_MARKER}"


# ------------------------------------------------------------------------------ per target


def prompts_file(name: str) -> str:
    """Generated prompts or pairs: ablation, hint, patching_pairs."""
    return f"{RESULTS}/prompts/{name}.jsonl"


def labels_file(task: str, target: str) -> str:
    """One task's explainer examples on one target."""
    return f"{RESULTS}/labels/{task}/{target}.parquet"


def dataset_dir(task: str, target: str) -> str:
    """One task's explainer examples on one target as a Hugging Face dataset directory."""
    return f"{RESULTS}/datasets/{task}/{target}"


def released_file(name: str, ext: str = "parquet") -> str:
    """The scores of the released explainer `name` (config released:): rows (.parquet) and the
    reference metrics (.json)."""
    return f"{RESULTS}/released/{name}.{ext}"


def features_dir(target: str) -> str:
    """The feature task's intermediate files of one target."""
    return f"{RESULTS}/features/{target}"


def activations_file(target: str) -> str:
    return f"{features_dir(target)}/activations.safetensors"


def sae_file(target: str) -> str:
    return f"{features_dir(target)}/sae/sae.safetensors"


def sae_stats_file(target: str) -> str:
    return f"{features_dir(target)}/sae_stats.json"


def descriptions_file(target: str) -> str:
    return f"{features_dir(target)}/descriptions.parquet"


def token_identity_file(target: str, explainer: str) -> str:
    return f"{RESULTS}/features/token_identity/{target}/{explainer}.json"


def table_file(name: str) -> str:
    """results/tables/<name> (name with its extension)."""
    return f"{RESULTS}/tables/{name}"


def reference_dir(name: str) -> str:
    """The committed copy of one configuration's small outputs (report.reference)."""
    return f"{RESULTS}/reference/{name}"


def figure_file(name: str) -> str:
    """results/figures/<name>.png."""
    return f"{RESULTS}/figures/{name}.png"


def benchmark_file(rule: str, *names: str) -> str:
    """The benchmark file of one job: results/benchmarks/<rule>/<names...>.tsv."""
    return f"{RESULTS}/benchmarks/{rule}/{'/'.join(names)}.tsv"


def log_file(rule: str, *names: str) -> str:
    """The log of one job: logs/<rule>/<names...>.log (logs/<rule>.log without names)."""
    return f"{LOGS}/{'/'.join((rule, *names))}.log"


# ------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class Run:
    """One run of the matrix: an explainer variant of one (task, target, explainer), one seed.
    Fields are strings in wildcard patterns, so seed is an int or a str."""

    task: str
    target: str
    explainer: str
    variant: str
    seed: int | str

    @classmethod
    def pattern(cls) -> Run:
        """The run whose paths are the rules' wildcard patterns."""
        return cls("{task}", "{target}", "{explainer}", "{variant}", "{seed}")

    @classmethod
    def of(cls, wildcards) -> Run:
        """The run of a job, from its wildcards (anything with the five attributes)."""
        w = wildcards
        return cls(w.task, w.target, w.explainer, w.variant, w.seed)

    @property
    def relation(self) -> str:
        """'self' when the explainer is the target model, else 'other'."""
        return "self" if self.target == self.explainer else "other"

    @property
    def key(self) -> str:
        """<task>/<target>/<explainer>/<variant>/s<seed>."""
        return f"{self.task}/{self.target}/{self.explainer}/{self.variant}/s{self.seed}"

    def adapter_dir(self) -> str:
        return f"{RESULTS}/explainers/{self.key}"

    def adapter_file(self, method: str = "lora") -> str:
        """The trained weights: the LoRA adapter, or the whole model for train.method full."""
        name = FULL_MODEL_FILE if method == "full" else ADAPTER_FILE
        return f"{self.adapter_dir()}/{name}"

    def summary_file(self) -> str:
        return f"{self.adapter_dir()}/{SUMMARY_FILE}"

    def checkpoint_dir(self) -> str:
        return f"{RESULTS}/checkpoints/{self.key}"

    def eval_file(self) -> str:
        return f"{RESULTS}/eval/{self.key}.parquet"

    def benchmark_file(self, rule: str) -> str:
        return benchmark_file(rule, self.key)

    def log_file(self, rule: str) -> str:
        return log_file(rule, self.key)


def parse_seed_dir(name: str) -> int | None:
    """The seed of a run directory's last part s<seed>, or None."""
    m = _SEED.fullmatch(name)
    return int(m.group(1)) if m else None


def _run_from_parts(parts: tuple[str, ...]) -> Run | None:
    """The run of (task, target, explainer, variant, s<seed>), or None if it is not one."""
    if len(parts) != 5 or (seed := parse_seed_dir(parts[4])) is None:
        return None
    return Run(*parts[:4], seed)


def parse_adapter_dir(path: str | Path) -> tuple[Path, Run] | None:
    """(root, run) of an adapter directory <root>/results/explainers/<run>/, where root holds
    results/ (and resources/models/); None for a path of another shape."""
    parts = Path(path).parts
    if len(parts) < 7 or parts[-7:-5] != (RESULTS, "explainers"):
        return None
    run = _run_from_parts(parts[-5:])
    return None if run is None else (Path(*parts[:-7]), run)


def parse_summary_file(path: str | Path) -> Run:
    """The run of a train_summary.json (an adapter directory's file)."""
    parsed = parse_adapter_dir(Path(path).parent)
    if parsed is None:
        raise ValueError(f"{path}: not results/explainers/<task>/<target>/<explainer>/...")
    return parsed[1]


def parse_benchmark(path: str | Path) -> dict:
    """rule, task and model (and for a run's job its variant) of a benchmark file, from its path
    results/benchmarks/<rule>/<...>.tsv; the model is the one the job runs (for train_explainer
    and evaluate: the explainer)."""
    parts = Path(path).with_suffix("").parts
    i = parts.index("benchmarks")
    rule, rest = parts[i + 1], parts[i + 2 :]
    if rule in RUN_RULES:  # task/target/explainer/variant/sSEED
        return {"rule": rule, "task": rest[0], "model": rest[2], "variant": rest[3]}
    if rule.startswith("label_"):
        return {"rule": rule, "task": rule.removeprefix("label_"), "model": rest[0]}
    if rule == "token_identity":  # target/explainer: the explainer is trained
        return {"rule": rule, "task": "features", "model": rest[1]}
    task = "features" if rule in ("collect_activations", "train_sae", "describe_features") else ""
    return {"rule": rule, "task": task, "model": rest[0] if rest else ""}


def eval_labels(task: str, target: str, explainer: str, variant: str, seed: int, n_train: int):
    """Identifying columns attached to every evaluation row."""
    return {
        "task": task,
        "target": target,
        "explainer": explainer,
        "relation": "self" if target == explainer else "other",
        "variant": variant,
        "seed": seed,
        "n_train": n_train,
    }


FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def is_local(source: str) -> bool:
    """Whether source names a local file or directory (existing, or written like a path)."""
    return (
        Path(source).expanduser().exists()
        or source.startswith(("/", "./", "../", "~"))
        or (Path(source).suffix in FILE_BUILDERS)
    )
