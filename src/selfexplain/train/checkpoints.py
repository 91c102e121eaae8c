"""Which checkpoints a training run may resume: the run's fingerprint (its settings, data and
base model) and the newest complete checkpoint written under the same fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import polars as pl
import torch

from selfexplain.core.settings import TrainConfig
from selfexplain.features.injection import MAP_FIT
from selfexplain.models import MANIFEST
from selfexplain.train.rows import example_vectors

FINGERPRINT = "selfexplain_fingerprint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_fingerprint(
    model_path: str | Path,
    examples: pl.DataFrame,
    cfg: TrainConfig,
    injection: dict | None = None,
    validation: pl.DataFrame | None = None,
) -> str:
    """sha256 of what a training run depends on: its settings, its data and its base model.

    Checkpoints are only resumed by a run with the same fingerprint, so a rerun after the
    labels, the config or the model changed starts afresh instead of silently continuing (or
    returning) the old run. The model enters through its manifest (spec, seed, GGUF sha256)
    or, for a plain directory, its config and the names and sizes of its weight files.
    """
    model_path = Path(model_path)
    manifest = model_path / MANIFEST
    if manifest.is_file():
        model_id = json.loads(manifest.read_text())
        model_id.pop("convert_seconds", None)
    else:
        config = model_path / "config.json"
        model_id = {
            "config": config.read_text() if config.is_file() else None,
            "weights": sorted(
                (f.name, f.stat().st_size)
                for f in model_path.iterdir()
                if f.suffix in (".safetensors", ".bin")
            ),
        }
    h = hashlib.sha256()
    h.update(json.dumps({"cfg": asdict(cfg), "model": model_id}, sort_keys=True).encode())
    for question, answer in zip(examples["question"], examples["answer"], strict=True):
        h.update(json.dumps([question, answer]).encode())
        h.update(b"\n")
    if validation is not None:  # the validation ids select the adapter that is returned
        h.update(json.dumps(sorted(validation["id"].to_list())).encode())
    vectors = example_vectors(examples)
    if vectors is not None:  # only for tasks with vectors: other fingerprints stay as they were
        if injection and injection.get("map_from"):  # read through a fitted map: how it is fitted
            injection = injection | {"map_fit": MAP_FIT}
        h.update(json.dumps({"injection": injection}, sort_keys=True).encode())
        h.update(torch.tensor(vectors, dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()


def _complete(checkpoint: Path) -> bool:
    """A checkpoint is complete once trainer_state.json, written last by the Trainer, parses
    and names the checkpoint's own step (a kill during saving leaves it missing)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return f"checkpoint-{state.get('global_step')}" == checkpoint.name


def last_complete_checkpoint(checkpoint_dir: str | Path, fingerprint: str) -> str | None:
    """The newest complete checkpoint of the run with this fingerprint, or None.

    Checkpoints of another run (other fingerprint) and incomplete ones (interrupted while
    saving) are deleted so the Trainer neither resumes nor rotates them.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    marker = checkpoint_dir / FINGERPRINT
    try:
        previous = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError):
        previous = None
    found = sorted(
        (int(m.group(1)), p)
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    main = os.environ.get("RANK", "0") == "0"  # under a launcher only rank 0 deletes
    if previous != fingerprint:
        for _, path in found:
            print(f"removing {path}: it belongs to a run with other settings, data or model")
            if main:
                shutil.rmtree(path, ignore_errors=True)
        return None
    for _, path in reversed(found):
        if _complete(path):
            return str(path)
        print(f"removing incomplete checkpoint {path} (interrupted while saving)")
        if main:
            shutil.rmtree(path, ignore_errors=True)
    return None
