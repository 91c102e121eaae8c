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


def _trained_layout(path: Path) -> tuple[int, list[int]]:
    """The window and layer starts of a patching label file (what the explainer trained on)."""
    from selfexplain.core.schema import meta, read_parquet

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
    window = args.window if args.window is not None else 1
    if not 1 <= window <= n_layers:
        raise ValueError(f"--window must be in 1..{n_layers} (the target's layers), got {window}")
    from selfexplain.tasks.patching import window_starts

    starts = window_starts(n_layers, window, args.layer_stride)
    print(f"window {window}, layer starts {starts} (--window/--layer-stride)", file=sys.stderr)
    return window, starts


def _patching_rows_without_truth(model, tokenizer, clean, cf, window, starts) -> list[dict]:
    """The fields patching_question needs, from the same set-up patching_rows uses (the two
    unpatched forwards), without the patched forwards."""
    from selfexplain.tasks.patching import PatchingSetup

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
    from selfexplain.prompts import Prompt, read_pairs_jsonl

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
    from selfexplain.evaluate.summary import run_summary
    from selfexplain.models import decoder_layers, load
    from selfexplain.tasks.patching import patching_question, patching_rows

    truth = not args.no_truth
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
        if truth:
            rows = patching_rows(model, tokenizer, clean, cf, window=window, layer_starts=starts)
        else:
            rows = _patching_rows_without_truth(model, tokenizer, clean, cf, window, starts)
        if args.position is not None:
            tokens = {r["position"]: r["token"] for r in rows}
            rows = [r for r in rows if r["position"] == args.position]
            if not rows:
                choices = ", ".join(f"{p} {quote(t)}" for p, t in sorted(tokens.items()))
                raise ValueError(
                    f"--position {args.position} is not a patchable position of the clean "
                    f"prompt {quote(clean.text)}; choose one of: {choices}"
                )
        per_pair.append(rows)
    del model, tokenizer  # free the target before the explainer is loaded
    gc.collect()

    rows = [r for pair_rows in per_pair for r in pair_rows]
    if run_summary(info.adapter).get("question_format") == "paper":
        # the explainer reads the reference question, with the patched vector at its feature
        # placeholder (examples.with_question_format)
        from selfexplain.core.formats import PLACEHOLDER
        from selfexplain.core.formats import patching_question as paper_question

        questions = [paper_question(r, PLACEHOLDER) for r in rows]
        preds = answer(explainer_model, info, questions, args, [r["vector"] for r in rows])
    else:
        preds = answer(explainer_model, info, [patching_question(r) for r in rows], args)
    keys = ("pair_id", "layer_start", "layer_end", "position", "token", "position_kind")
    records = answer_records(rows, preds, truth, {key: key for key in keys})

    start = 0
    for pair_rows in per_pair:
        pair_records = records[start : start + len(pair_rows)]
        start += len(pair_rows)
        first = pair_rows[0]
        if len(per_pair) > 1:
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
            path = _heatmap_path(args, first["pair_id"], len(per_pair))
            write_heatmap(pair_rows, pair_records, truth, path)
            print(f"heatmap -> {path}")
        if len(per_pair) > 1 and truth:
            print(
                metric_line(
                    [r["answer"] for r in pair_records], [r["prediction"] for r in pair_records]
                )
            )
    if len(per_pair) > 1:
        print(f"\nall {len(per_pair)} pairs:")
    return finish(records, preds, truth, args.out)
