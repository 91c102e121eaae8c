"""The ``selfexplain`` command: ask a trained explainer about your own prompts, or label them.

    selfexplain ask ablation --explainer DIR --prompt TEXT      (or --prompts FILE.jsonl)
    selfexplain ask patching --explainer DIR --clean TEXT --counterfactual TEXT
                                                              (or --pairs FILE.jsonl)
    selfexplain ask features --explainer DIR --feature ID         (or --vector FILE.safetensors)
    selfexplain labels {ablation,patching} --target MODEL --prompts FILE.jsonl --out FILE.parquet

Everything goes through the library functions the Snakemake pipeline uses: true labels from
``tasks.ablation.ablation_labels`` / ``tasks.patching.patching_rows``, questions from
``ablation_question`` / ``patching_question``, answers from ``evaluate.change_answers`` and
scores from ``metrics.score_change_rows`` + ``metrics.change_metrics``, so the answers and the
metric line printed here are the ones the pipeline would compute for the same questions.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is fast.

Here: the parser and ``main``; one module per command (``ask_ablation``, ``ask_patching``,
``ask_features``, ``labels``), ``locate`` (the adapter and model directories an ask needs),
``answers`` (the explainer's answers and the metric line) and ``render`` (text tables, the
patching grid and heatmap, JSONL records).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from selfexplain.cli.ask_ablation import cmd_ask_ablation
from selfexplain.cli.ask_features import cmd_ask_features
from selfexplain.cli.ask_patching import cmd_ask_patching
from selfexplain.cli.labels import cmd_labels
from selfexplain.cli.locate import PROG


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _fraction(value: str) -> float:
    x = float(value)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return x


def _threshold_rule(value: str) -> str:
    from selfexplain.cli.answers import THRESHOLD_RULES

    if value in THRESHOLD_RULES:
        return value
    try:
        float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(THRESHOLD_RULES)} or a number, got {value!r}"
        ) from None
    return value


def _threshold_arg(p: argparse.ArgumentParser, default: str, why: str) -> None:
    p.add_argument(
        "--threshold",
        type=_threshold_rule,
        default=default,
        metavar="RULE",
        help="how has-changed scores become answers: rank (the run's base rate of change, as "
        "the share of the asked questions scored highest), natural (the validation threshold "
        "moved to that base rate), balanced (the validation threshold) or a number; "
        f"default {default}: {why}",
    )


def _ask_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--explainer",
        required=True,
        metavar="DIR",
        help="trained explainer: results/explainers/<task>/<target>/<explainer>/<variant>/"
        "s<seed>/ (or the <variant>/ dir: its lowest seed is used)",
    )
    p.add_argument(
        "--target-model",
        metavar="DIR",
        help="target model dir or spec (default: resources/models/<target> next to results/)",
    )
    p.add_argument(
        "--explainer-model",
        metavar="DIR",
        help="explainer base model dir or spec (default: resources/models/<explainer>)",
    )
    p.add_argument(
        "--no-truth",
        action="store_true",
        help="skip computing the true labels on the target (only the explainer's answers)",
    )
    p.add_argument("--out", metavar="FILE.jsonl", help="write one JSON record per question")
    p.add_argument("--max-new-tokens", type=_positive, default=16, metavar="N")
    p.add_argument(
        "--batch-size", type=_positive, default=16, metavar="N", help="questions per generate call"
    )
    p.add_argument("--cache", metavar="DIR", help="where model specs are resolved to")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask a trained explainer about the target model's computations on your own "
        "prompts, or label prompts with the pipeline's interpretability code.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="ask a trained explainer, compared with the truth")
    tasks = ask.add_subparsers(dest="task", required=True, metavar="TASK")

    abl = tasks.add_parser(
        "ablation",
        help="what happens to the next token when each input token is removed",
        description="For every token of each prompt (and the hint, if any), ask the explainer "
        "what the target's next token becomes when the token is removed, and compare with the "
        "true label computed on the target.",
    )
    _ask_common(abl)
    src = abl.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    src.add_argument(
        "--prompts", metavar="FILE.jsonl", help='one {"prompt": ..., "hint": ...} per line'
    )
    abl.add_argument("--hint", metavar="TEXT", help="the removable hint inside --prompt")
    _threshold_arg(
        abl,
        "rank",
        "free-text prompts shift the scores' scale away from the generated training prompts",
    )
    abl.add_argument(
        "--keep-last",
        action="store_true",
        help="also ask about removing each prompt's last token (by default asked only when the "
        "explainer's labels have that question; the pipeline drops it: ablation.drop_last)",
    )
    abl.add_argument(
        "--labels",
        metavar="FILE.parquet",
        help="the label file the explainer trained on (default: the one next to results/)",
    )
    abl.set_defaults(func=cmd_ask_ablation)

    pat = tasks.add_parser(
        "patching",
        help="what happens to the next token when hidden states are patched",
        description="Ask the explainer what the target's next token on the clean prompt becomes "
        "when the residual stream at one (layer window, position) is replaced by its value from "
        "the counterfactual prompt (same token length). With --layer and --position: one cell; "
        "without: every cell, and a predicted-vs-true heatmap PNG.",
    )
    _ask_common(pat)
    pat.add_argument("--clean", metavar="TEXT", help="the clean prompt (or --pairs)")
    pat.add_argument("--counterfactual", metavar="TEXT", help="its counterfactual (same length)")
    pat.add_argument(
        "--pairs",
        metavar="FILE.jsonl",
        help='instead of --clean / --counterfactual: one {"clean": ..., "counterfactual": ...} '
        "per line (the pipeline's patching.pairs_file format); every cell of every pair, one "
        "explainer load, a heatmap per pair (OUT-<pair>.png) and the metrics pooled over all",
    )
    pat.add_argument("--layer", type=int, metavar="L", help="first layer of the patched window")
    pat.add_argument("--position", type=int, metavar="P", help="token position in --clean")
    pat.add_argument(
        "--heatmap", metavar="OUT.png", help="heatmap path (default patching_heatmap.png)"
    )
    pat.add_argument(
        "--labels",
        metavar="FILE.parquet",
        help="patching label file whose window and layer starts the explainer was trained on "
        "(default: results/labels/patching/<target>.parquet next to the explainer)",
    )
    pat.add_argument(
        "--window",
        type=_positive,
        metavar="W",
        help="layers per patched window when no label file is found (default 1)",
    )
    pat.add_argument(
        "--layer-stride", type=_positive, metavar="S", help="window starts 0, S, 2S, ..."
    )
    _threshold_arg(pat, "natural", "an ask covers a pair's whole grid, as the heatmaps do")
    pat.set_defaults(func=cmd_ask_patching)

    feat = tasks.add_parser(
        "features",
        help="describe an SAE feature (or any residual vector) with a trained explainer",
        description="Inject a feature's decoder vector into the explainer's question and print "
        "its description next to the ground-truth description and the feature's "
        "top-activating contexts (from the label file the explainer was trained on).",
    )
    _ask_common(feat)
    what = feat.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--feature", type=int, action="append", metavar="ID", help="feature id (repeatable)"
    )
    what.add_argument(
        "--vector",
        metavar="FILE.safetensors",
        help='a (d,) or (n, d) tensor ("vector", or the only tensor) in the target\'s width',
    )
    feat.add_argument(
        "--labels",
        metavar="FILE.parquet",
        help="feature label file (default: results/labels/features/<target>.parquet)",
    )
    feat.add_argument("--layer", type=int, metavar="L", help="with --vector and no label file")
    feat.add_argument("--n-examples", type=_positive, default=5, metavar="N")
    feat.set_defaults(func=cmd_ask_features, max_new_tokens=40)

    lab = commands.add_parser(
        "labels",
        help="label your own prompts on a target model (a parquet of explainer examples)",
        description="Compute a task's labels for your prompts with the pipeline's code and write "
        "them as explainer examples (the shared parquet schema).",
    )
    lab.add_argument("task", choices=["ablation", "patching"])
    lab.add_argument(
        "--target",
        required=True,
        metavar="MODEL",
        help="a model dir, or a spec (tiny-random-llama, smollm2-135m-instruct, a hub id)",
    )
    lab.add_argument(
        "--prompts",
        required=True,
        metavar="FILE.jsonl",
        help='ablation: {"prompt": ...} per line; patching: {"clean": ..., "counterfactual": ...}',
    )
    lab.add_argument("--out", required=True, metavar="FILE.parquet")
    lab.add_argument("--target-name", help="name in example ids (default: from --target)")
    lab.add_argument("--cache", metavar="DIR", help="where model specs are resolved to")
    lab.add_argument("--batch-size", type=_positive, metavar="N", help="rows per forward")
    lab.add_argument("--test-fraction", type=_fraction, default=0.2, metavar="F")
    lab.add_argument(
        "--engine",
        choices=["feature_ablation", "llm_attribution"],
        default="feature_ablation",
        help="ablation: Captum engine for the scores",
    )
    lab.add_argument("--window", type=_positive, default=1, metavar="W", help="patching")
    lab.add_argument("--layer-stride", type=_positive, metavar="S", help="patching (default W)")
    lab.add_argument("--max-positions", type=_positive, metavar="N", help="patching")
    lab.add_argument("--max-pairs", type=_positive, metavar="N", help="patching")
    lab.add_argument("--holdout", choices=["prompt", "layer"], default="prompt", help="patching")
    lab.set_defaults(func=cmd_labels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, with a one-line error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
