"""``selfexplain ask patching``: what happens to the target's next token on a clean prompt when
the residual stream at one (layer window, position) is patched from a counterfactual prompt,
asked of a trained explainer (one cell, or every cell as a grid and a heatmap) and compared with
the true labels."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from selfexplain.cli.answers import answer, answer_records, finish, metric_line
from selfexplain.cli.locate import ExplainerDir, ask_models
from selfexplain.cli.render import print_cells, print_grid, quote, write_heatmap
from selfexplain.core.formats import PLACEHOLDER
from selfexplain.core.formats import patching_question as paper_question
from selfexplain.core.schema import meta, read_parquet
from selfexplain.core.settings import PatchingSettings
from selfexplain.evaluate.summary import run_summary
from selfexplain.models import decoder_layers, load
from selfexplain.prompts import Prompt, read_pairs_jsonl
from selfexplain.tasks.patching import (
    PatchingSetup,
    patching_question,
    patching_rows,
    window_starts,
)


def _trained_layout(path: Path) -> tuple[int, list[int]]:
    """The window and layer starts of a patching label file (what the explainer trained on)."""
    metas = meta(read_parquet(path).select("meta"))
    windows = sorted({m["window"] for m in metas})
    if len(windows) != 1:
        raise ValueError(f"{path}: expected one patching window, found {windows}; pass --window")
    return windows[0], sorted({m["layer_start"] for m in metas})


def _patching_layout(args, info: ExplainerDir, n_layers: int) -> tuple[int, list[int]]:
    labels = info.labels_path(args.labels, "patching")
    if args.window is None and labels is not None and labels.is_file():
        window, starts = _trained_layout(labels)
        print(f"window {window}, layer starts {starts} (from {labels})", file=sys.stderr)
        return window, starts
    if args.labels and not labels.is_file():
        raise FileNotFoundError(f"{labels}: no such label file (--labels)")
    defaults = PatchingSettings()  # no label file: the pipeline's window and stride
    window = args.window if args.window is not None else defaults.window
    if not 1 <= window <= n_layers:
        raise ValueError(f"--window must be in 1..{n_layers} (the target's layers), got {window}")
    stride = args.layer_stride if args.layer_stride is not None else defaults.layer_stride
    starts = window_starts(n_layers, window, stride)
    print(f"window {window}, layer starts {starts} (--window/--layer-stride)", file=sys.stderr)
    return window, starts


def _patching_rows_without_truth(model, tokenizer, clean, cf, window, starts) -> list[dict]:
    """The fields patching_question needs, from the same set-up patching_rows uses (the two
    unpatched forwards), without the patched forwards."""
    setup = PatchingSetup(model, tokenizer, clean, cf, window, starts)
    return [
        setup.base
        | {
            "layer_start": s,
            "layer_end": s + window - 1,
            "window": window,
            "position": p,
            "token": setup.tokens[p],
            "position_kind": setup.kinds[p],
            "vector": setup.vector(s, p),
        }
        for s, p in setup.jobs()
    ]


def _pairs(args) -> list:
    """The (clean, counterfactual) prompt pairs asked about: --pairs FILE, or the one pair of
    --clean / --counterfactual."""
    if args.pairs:
        if args.clean is not None or args.counterfactual is not None:
            raise ValueError("--pairs replaces --clean / --counterfactual: give one or the other")
        return read_pairs_jsonl(args.pairs)
    for flag, text in (("--clean", args.clean), ("--counterfactual", args.counterfactual)):
        if text is None:
            raise ValueError(f"{flag} is required (or --pairs FILE.jsonl)")
        if not text.strip():
            raise ValueError(f"{flag} is empty")
    if args.clean == args.counterfactual:
        raise ValueError("--clean and --counterfactual are identical")
    return [
        (
            Prompt("cli-clean", "custom", args.clean),
            Prompt("cli-counterfactual", "custom", args.counterfactual),
        )
    ]


def _heatmap_path(args, pair_id: str, n_pairs: int) -> str:
    path = args.heatmap or "patching_heatmap.png"
    if n_pairs == 1:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-{pair_id}.{ext}" if dot else f"{path}-{pair_id}"


def cmd_ask_patching(args) -> int:
    pairs = _pairs(args)
    info, target_dir, explainer_model = ask_models(args, "patching")
    per_pair = _target_rows(args, info, target_dir, pairs)
    rows = [r for pair_rows in per_pair for r in pair_rows]
    preds = _answers(explainer_model, info, rows, args)
    truth = not args.no_truth
    keys = ("pair_id", "layer_start", "layer_end", "position", "token", "position_kind")
    records = answer_records(rows, preds, truth, {key: key for key in keys})
    start = 0
    for pair_rows in per_pair:
        _print_pair(args, pair_rows, records[start : start + len(pair_rows)], len(per_pair))
        start += len(pair_rows)
    if len(per_pair) > 1:
        print(f"\nall {len(per_pair)} pairs:")
    return finish(records, preds, truth, args.out)


def _target_rows(args, info: ExplainerDir, target_dir: Path, pairs: list) -> list[list[dict]]:
    """Each pair's asked cells (with the true labels unless --no-truth), from the target model,
    which is freed before the explainer is loaded."""
    model, tokenizer = load(target_dir)
    window, starts = _patching_layout(args, info, len(decoder_layers(model)))
    if args.layer is not None:
        if args.layer not in starts:
            print(
                f"note: layer start {args.layer} is not one the explainer was trained on "
                f"({starts})",
                file=sys.stderr,
            )
        starts = [args.layer]
    per_pair = []
    for clean, cf in pairs:
        if args.no_truth:
            rows = _patching_rows_without_truth(model, tokenizer, clean, cf, window, starts)
        else:
            rows = patching_rows(model, tokenizer, clean, cf, window=window, layer_starts=starts)
        if args.position is not None:
            rows = _at_position(rows, args.position, clean)
        per_pair.append(rows)
    del model, tokenizer
    gc.collect()
    return per_pair


def _at_position(rows: list[dict], position: int, clean) -> list[dict]:
    """The rows of one --position, or ValueError naming the patchable positions."""
    tokens = {r["position"]: r["token"] for r in rows}
    rows = [r for r in rows if r["position"] == position]
    if not rows:
        choices = ", ".join(f"{p} {quote(t)}" for p, t in sorted(tokens.items()))
        raise ValueError(
            f"--position {position} is not a patchable position of the clean "
            f"prompt {quote(clean.text)}; choose one of: {choices}"
        )
    return rows


def _answers(explainer_model: Path, info: ExplainerDir, rows: list[dict], args) -> list[str]:
    """The explainer's answers, asked in the question format it was trained on."""
    if run_summary(info.adapter).get("question_format") == "paper":
        # the explainer reads the reference question, with the patched vector at its feature
        # placeholder (examples.with_question_format)
        questions = [paper_question(r, PLACEHOLDER) for r in rows]
        return answer(explainer_model, info, questions, args, [r["vector"] for r in rows])
    return answer(explainer_model, info, [patching_question(r) for r in rows], args)


def _print_pair(args, pair_rows: list[dict], pair_records: list[dict], n_pairs: int) -> None:
    """One pair's prompts and next tokens, then its cells (a table, or a grid and a heatmap),
    and its metric line when several pairs are asked."""
    truth = not args.no_truth
    first = pair_rows[0]
    if n_pairs > 1:
        print(f"\n[{first['pair_id']}]", end="")
    print(f"\nclean:          {quote(first['clean'])}")
    print(f"counterfactual: {quote(first['counterfactual'])}")
    same = first["orig_token"] == first["cf_token"]
    print(
        f"target's next token: clean {quote(first['orig_token'])}, "
        f"counterfactual {quote(first['cf_token'])}"
        + ("  (the same: no patch can make it the counterfactual's)" if same else "")
    )
    if len(pair_rows) == 1:
        print_cells(pair_rows, pair_records, truth)
    else:
        print_grid(pair_rows, pair_records, truth)
        path = _heatmap_path(args, first["pair_id"], n_pairs)
        write_heatmap(pair_rows, pair_records, truth, path)
        print(f"heatmap -> {path}")
    if n_pairs > 1 and truth:
        golds = [r["answer"] for r in pair_records]
        print(metric_line(golds, [r["prediction"] for r in pair_records]))
