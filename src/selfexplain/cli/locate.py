"""Finding what an ask needs from the paths the user gives: the trained adapter (and what its
path under results/explainers/ says: task, target, explainer, variant, seed), and the target and
explainer model directories (given, resolved from a spec into a cache, or found under
resources/models/ next to results/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from selfexplain.cli.options import PROG
from selfexplain.core import layout
from selfexplain.models import resolve, spec_kind


@dataclass(frozen=True)
class ExplainerDir:
    """A trained explainer adapter and what its path says about it (None where unknown)."""

    adapter: Path
    root: Path | None = None  # the directory holding results/ (and resources/models/)
    task: str | None = None
    target: str | None = None
    explainer: str | None = None
    variant: str | None = None
    seed: int | None = None

    def labels_path(self, labels: str | None = None, task: str | None = None) -> Path | None:
        """The label file the explainer was trained on: ``labels`` (a --labels argument) when
        given, else results/labels/<task>/<target>.parquet next to its results/ (task: its
        own by default), else None. Whether the file exists is the caller's to check."""
        if labels:
            return Path(labels)
        task = task or self.task
        if self.root is None or task is None or self.target is None:
            return None
        return self.root / layout.labels_file(task, self.target)

    def describe(self) -> str:
        if self.task is None:
            return str(self.adapter)
        return (
            f"{self.adapter} (task {self.task}, target {self.target}, explainer "
            f"{self.explainer}, {self.variant}, seed {self.seed})"
        )


def _is_explainer(path: Path) -> bool:
    """A trained explainer directory: a LoRA adapter, or a fully fine-tuned model (its whole
    weights and config next to the run's train_summary.json)."""
    if (path / "adapter_config.json").is_file():
        return True
    return (path / "config.json").is_file() and (path / layout.SUMMARY_FILE).is_file()


def find_adapter(path: str | Path) -> Path:
    """The adapter dir: path itself, or for a variant dir (.../trained) its lowest s<seed>/."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such explainer directory; pass --explainer with a trained explainer "
            "such as results/explainers/ablation/<target>/<explainer>/trained/s0"
        )
    if _is_explainer(path):
        return path
    seeds = []
    for sub in path.iterdir():
        seed = layout.parse_seed_dir(sub.name)
        if seed is not None and _is_explainer(sub):
            seeds.append((seed, sub))
    if seeds:
        return min(seeds)[1]
    raise FileNotFoundError(
        f"{path}: no adapter_config.json here and no s<seed>/ subdirectory holding one; pass "
        "--explainer with a trained explainer such as "
        "results/explainers/ablation/<target>/<explainer>/trained/s0 (run the pipeline first)"
    )


def explainer_dir(path: str | Path) -> ExplainerDir:
    """Locate the adapter and read task, target, explainer, variant and seed from its path
    results/explainers/<task>/<target>/<explainer>/<variant>/s<seed>/."""
    adapter = find_adapter(path)
    parsed = layout.parse_adapter_dir(adapter.resolve())
    if parsed is not None:
        root, run = parsed
        return ExplainerDir(
            adapter=adapter,
            root=root,
            task=run.task,
            target=run.target,
            explainer=run.explainer,
            variant=run.variant,
            seed=run.seed,
        )
    root = next((p for p in adapter.resolve().parents if (p / layout.RESULTS).is_dir()), None)
    return ExplainerDir(adapter=adapter, root=root)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", spec).strip("-.") or "model"


def default_cache() -> Path:
    """Where model specs are resolved to: $XDG_CACHE_HOME (or ~/.cache)/selfexplain/models."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfexplain" / "models"


def model_dir(value: str, flag: str, cache: str | Path | None = None) -> Path:
    """An HF model directory for value: an existing model dir as is, or a spec accepted by
    models.resolve (tiny-random-*, a packaged model, a hub id) resolved into the cache."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not _is_model_dir(path):
            raise FileNotFoundError(
                f"{path}: not a model directory (no config.json); pass {flag} with an HF model "
                "directory or a model spec"
            )
        return path
    kind = spec_kind(value)
    path_like = value.startswith((".", "/", "~")) or value.count("/") > 1 or path.exists()
    if kind == "hub" and path_like:
        raise FileNotFoundError(f"{value}: no such model directory; pass {flag} DIR")
    out = Path(cache).expanduser() if cache else default_cache()
    out = out / slug(value)
    print(f"resolving model spec {value!r} into {out}", file=sys.stderr)
    try:
        return resolve(value, out)
    except (OSError, ImportError) as err:
        where = "as a hub id " if kind == "hub" else ""
        raise ValueError(
            f"{value!r} is not a model directory, and loading it {where}failed ({err}); "
            f"pass {flag} with an existing model directory"
        ) from err


def _layout_model(info: ExplainerDir, role: str, flag: str) -> Path:
    """resources/models/<name> next to results/, for role "target" or "explainer"."""
    name = getattr(info, role)
    if info.root is not None and name is not None:
        path = info.root / layout.model_dir(name)
        if _is_model_dir(path):
            return path
        raise FileNotFoundError(
            f"{role} model directory {path} not found (inferred from the explainer path); "
            f"pass {flag} DIR"
        )
    if (
        role == "explainer"
        and (info.adapter / "config.json").is_file()
        and not (info.adapter / "adapter_config.json").is_file()
    ):
        return info.adapter  # a fully fine-tuned explainer is its own model directory
    if role == "explainer":  # fall back on the base model recorded in the adapter
        base = json.loads((info.adapter / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        if base:
            for cand in (Path(base), *([info.root / base] if info.root else [])):
                if _is_model_dir(cand):
                    return cand
    raise FileNotFoundError(
        f"cannot infer the {role} model from {info.adapter} (it is not under "
        f"results/explainers/<task>/<target>/<explainer>/<variant>/s<seed>/); pass {flag} DIR"
    )


def ask_models(args: argparse.Namespace, task: str) -> tuple[ExplainerDir, Path, Path]:
    """The explainer adapter, the target model dir and the explainer model dir of an ask."""
    info = explainer_dir(args.explainer)
    if info.task is not None and info.task != task:
        raise ValueError(
            f"{info.adapter} was trained on the {info.task} task; use `{PROG} ask {info.task}`"
        )
    if args.target_model:
        target = model_dir(args.target_model, "--target-model", args.cache)
    else:
        target = _layout_model(info, "target", "--target-model")
    if args.explainer_model:
        explainer = model_dir(args.explainer_model, "--explainer-model", args.cache)
    else:
        explainer = _layout_model(info, "explainer", "--explainer-model")
    print(f"explainer: {info.describe()}", file=sys.stderr)
    print(f"target model: {target}   explainer model: {explainer}", file=sys.stderr)
    return info, target, explainer
