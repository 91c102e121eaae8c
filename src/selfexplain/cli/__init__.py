"""The ``selfexplain`` command: ask a trained explainer about your own prompts, or label them.

    selfexplain ask ablation --explainer DIR --prompt TEXT      (or --prompts FILE.jsonl)
    selfexplain ask patching --explainer DIR --clean TEXT --counterfactual TEXT
                                                              (or --pairs FILE.jsonl)
    selfexplain ask hint --explainer DIR --prompt TEXT --hint TEXT  (or --prompts FILE.jsonl)
    selfexplain ask features --explainer DIR --feature ID         (or --vector FILE.safetensors)
    selfexplain labels {ablation,patching} --target MODEL --prompts FILE.jsonl --out FILE.parquet

Everything goes through the library functions the Snakemake pipeline uses: true labels from
``tasks.ablation.ablation_labels`` / ``tasks.patching.patching_rows``, questions from
``ablation_question`` / ``patching_question``, answers from ``evaluate.change_answers`` and
scores from ``metrics.score_change_rows`` + ``metrics.change_metrics``, so the answers and the
metric line printed here are the ones the pipeline would compute for the same questions.

The defaults a command shares with the pipeline (patching window and stride, test fraction,
batch sizes, answer lengths, ...) are the pipeline's settings (``core.settings``).

Here: ``main``, which builds the parser (``parser``; what it needs at parse time is in
``options``, no torch) and imports the module of the command it runs only then
(``parser.COMMANDS``), so ``--help`` is fast. One module per command (``ask_ablation``,
``ask_patching``, ``ask_hint``, ``ask_features``, ``labels``), ``locate`` (the adapter and
model directories an ask needs), ``answers`` (the explainer's answers and the metric line)
and ``render`` (text tables, the patching grid and heatmap, JSONL records).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from selfexplain.cli.options import PROG
from selfexplain.cli.parser import COMMANDS, build_parser, command_of

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, with a one-line error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    module, function = command_of(args).split(":")
    run = getattr(importlib.import_module(module), function)
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
