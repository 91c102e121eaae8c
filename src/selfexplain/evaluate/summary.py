"""A trained run's train_summary.json: written by the trainer, read by evaluation and the CLI
(the validation curve, the best step, its has-changed threshold and the train base rate).
"""

from __future__ import annotations

import json
from pathlib import Path

from selfexplain.core.layout import SUMMARY_FILE as SUMMARY
from selfexplain.metrics import prior_shift


def run_summary(adapter_dir: str | Path | None) -> dict:
    """A trained run's train_summary.json ({} for no adapter, or one without a summary)."""
    if adapter_dir is None or not (Path(adapter_dir) / SUMMARY).is_file():
        return {}
    return json.loads((Path(adapter_dir) / SUMMARY).read_text())


def summary_threshold(summary: dict, natural: bool = False) -> float:
    """The has-changed threshold a run's validation chose (its summary's best step; 0 for a
    run without a change-task validation split).

    natural: the threshold for questions asked at the target's own rate of change (every cell
    of a patching grid, every token of a prompt) rather than on balanced rows: moved by
    metrics.prior_shift of the training split's base rate recorded in the summary (unmoved for
    a summary without one)."""
    threshold = float((summary.get("best") or {}).get("threshold", 0.0))
    if natural and summary.get("base_rate") is not None:
        threshold += prior_shift(summary["base_rate"])
    return threshold


def calibrated_threshold(adapter_dir: str | Path | None, natural: bool = False) -> float:
    """summary_threshold of a trained adapter directory's run_summary (0 for none)."""
    return summary_threshold(run_summary(adapter_dir), natural)
