"""The ``selfexplain`` argument parser: one function per sub-command, and ``COMMANDS``, the
module and function that run each one (imported only when it runs, so building the parser and
``--help`` import no torch). The defaults a command shares with the pipeline are read from the
settings (``core.settings``), so an ask or a labelling run means what the pipeline's would."""

from __future__ import annotations

import argparse

from selfexplain.cli.options import (
    PROG,
    fraction,
    from_setting,
    positive,
    positive_or_all,
    setting_doc,
    threshold_rule,
)
from selfexplain.core.settings import (
    AblationSettings,
    EvaluateSettings,
    FeatureSettings,
    PatchingSettings,
)

# "<command> <task>" -> "module:function" that runs it with the parsed arguments
COMMANDS = {
    "ask ablation": "selfexplain.cli.ask_ablation:cmd_ask_ablation",
    "ask patching": "selfexplain.cli.ask_patching:cmd_ask_patching",
    "ask hint": "selfexplain.cli.ask_hint:cmd_ask_hint",
    "ask features": "selfexplain.cli.ask_features:cmd_ask_features",
    "labels ablation": "selfexplain.cli.labels:cmd_labels",
    "labels patching": "selfexplain.cli.labels:cmd_labels",
}


def command_of(args: argparse.Namespace) -> str:
    """The COMMANDS entry the parsed arguments name."""
    return COMMANDS[f"{args.command} {args.task}"]


def _threshold_arg(p: argparse.ArgumentParser, default: str, why: str) -> None:
    p.add_argument(
        "--threshold",
        type=threshold_rule,
        default=default,
        metavar="RULE",
        help="how has-changed scores become answers: rank (the run's base rate of change, as "
        "the share of the asked questions scored highest), natural (the validation threshold "
        "moved to that base rate), balanced (the validation threshold) or a number; "
        f"default {default}: {why}",
    )


def _ask_common(p: argparse.ArgumentParser, answers=EvaluateSettings) -> None:
    """The options every ask shares; ``answers``: the settings section whose max_new_tokens
    bounds an answer (a feature's description is longer than a change answer)."""
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
    p.add_argument(
        "--max-new-tokens",
        type=positive,
        metavar="N",
        **from_setting(answers, "max_new_tokens"),
    )
    p.add_argument(
        "--batch-size", type=positive, metavar="N", **from_setting(EvaluateSettings, "batch_size")
    )
    p.add_argument("--cache", metavar="DIR", help="where model specs are resolved to")


def _ask_ablation(tasks) -> None:
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


def _ask_patching(tasks) -> None:
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
    window, stride = PatchingSettings().window, PatchingSettings().layer_stride
    pat.add_argument(
        "--window",
        type=positive,
        metavar="W",
        help="layers per patched window when no label file is found (default "
        f"{window}: patching.window)",
    )
    pat.add_argument(
        "--layer-stride",
        type=positive,
        metavar="S",
        help=f"window starts 0, S, 2S, ... (default {stride}: patching.layer_stride)",
    )
    _threshold_arg(pat, "natural", "an ask covers a pair's whole grid, as the heatmaps do")


def _ask_hint(tasks) -> None:
    hint = tasks.add_parser(
        "hint",
        help="does the chosen option of a multiple-choice prompt change without its hint",
        description="Ask a trained hint explainer whether the option the target chooses (the "
        "letter it rates highest) on a hinted multiple-choice prompt changes when the hint "
        "sentence is removed, and to which letter; compare with the true label computed on "
        "the target.",
    )
    _ask_common(hint)
    src = hint.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a multiple-choice prompt with options 'A. ...', 'B. ...' (repeatable, each with "
        "its --hint)",
    )
    src.add_argument(
        "--prompts", metavar="FILE.jsonl", help='one {"prompt": ..., "hint": ...} per line'
    )
    hint.add_argument(
        "--hint",
        action="append",
        metavar="TEXT",
        help="the removable hint sentence inside --prompt (one per --prompt, in order)",
    )
    hint.add_argument(
        "--labels",
        metavar="FILE.parquet",
        help="the hint label file the explainer trained on, for the target's base rate of "
        "change (default: results/labels/hint/<target>.parquet next to the explainer)",
    )
    _threshold_arg(hint, "natural", "one question per prompt: too few to rank")


def _ask_features(tasks) -> None:
    feat = tasks.add_parser(
        "features",
        help="describe an SAE feature (or any residual vector) with a trained explainer",
        description="Inject a feature's decoder vector into the explainer's question and print "
        "its description next to the ground-truth description and the feature's "
        "top-activating contexts (from the label file the explainer was trained on).",
    )
    _ask_common(feat, answers=FeatureSettings)
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
    feat.add_argument(
        "--n-examples", type=positive, default=5, metavar="N", help="top contexts printed"
    )


def _ask(commands) -> None:
    ask = commands.add_parser("ask", help="ask a trained explainer, compared with the truth")
    tasks = ask.add_subparsers(dest="task", required=True, metavar="TASK")
    _ask_ablation(tasks)
    _ask_patching(tasks)
    _ask_hint(tasks)
    _ask_features(tasks)


def _labels_common(p: argparse.ArgumentParser, section) -> None:
    p.add_argument(
        "--target",
        required=True,
        metavar="MODEL",
        help="a model dir, or a spec (tiny-random-llama, smollm2-135m-instruct, a hub id)",
    )
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.add_argument("--target-name", help="name in example ids (default: from --target)")
    p.add_argument("--cache", metavar="DIR", help="where model specs are resolved to")
    p.add_argument(
        "--batch-size", type=positive, metavar="N", **from_setting(section, "batch_size")
    )
    p.add_argument(
        "--test-fraction", type=fraction, metavar="F", **from_setting(section, "test_fraction")
    )


def _labels_ablation(tasks) -> None:
    abl = tasks.add_parser(
        "ablation",
        help="input ablation: how the next token changes when a token (or the hint) is removed",
    )
    abl.add_argument(
        "--prompts",
        required=True,
        metavar="FILE.jsonl",
        help='one {"prompt": ..., "hint": ...} per line',
    )
    _labels_common(abl, AblationSettings)
    abl.add_argument(
        "--engine",
        choices=["feature_ablation", "llm_attribution"],
        **from_setting(AblationSettings, "engine"),
    )
    abl.add_argument(
        "--holdout", choices=["fact", "prompt"], **from_setting(AblationSettings, "holdout")
    )
    drop_last = AblationSettings().drop_last
    abl.add_argument(
        "--keep-last",
        action="store_true",
        default=not drop_last,
        help="also label removing each prompt's last token (default: as the pipeline, "
        f"ablation.drop_last {str(drop_last).lower()}: "
        f"{setting_doc(AblationSettings, 'drop_last')})",
    )


def _labels_patching(tasks) -> None:
    pat = tasks.add_parser(
        "patching",
        help="activation patching: how the next token changes when one (layer window, "
        "position) is patched from the counterfactual prompt",
    )
    pat.add_argument(
        "--prompts",
        required=True,
        metavar="FILE.jsonl",
        help='one {"clean": ..., "counterfactual": ...} per line',
    )
    _labels_common(pat, PatchingSettings)
    pat.add_argument(
        "--window", type=positive, metavar="W", **from_setting(PatchingSettings, "window")
    )
    pat.add_argument(
        "--layer-stride",
        type=positive,
        metavar="S",
        **from_setting(PatchingSettings, "layer_stride"),
    )
    max_positions = from_setting(PatchingSettings, "max_positions", none="all")
    max_positions["help"] += "; all: every position"
    pat.add_argument("--max-positions", type=positive_or_all, metavar="N|all", **max_positions)
    pat.add_argument(
        "--max-pairs", type=positive, metavar="N", **from_setting(PatchingSettings, "max_pairs")
    )
    pat.add_argument(
        "--holdout",
        choices=["entity", "relation", "prompt", "layer"],
        **from_setting(PatchingSettings, "holdout"),
    )


def _labels(commands) -> None:
    lab = commands.add_parser(
        "labels",
        help="label your own prompts on a target model (a parquet of explainer examples)",
        description="Compute a task's labels for your prompts with the pipeline's code and write "
        "them as explainer examples (the shared parquet schema); the defaults are the "
        "pipeline's settings.",
    )
    tasks = lab.add_subparsers(dest="task", required=True, metavar="TASK")
    _labels_ablation(tasks)
    _labels_patching(tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask a trained explainer about the target model's computations on your own "
        "prompts, or label prompts with the pipeline's interpretability code.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _ask(commands)
    _labels(commands)
    return parser
