"""``selfexplain ask patching``: what happens to the target's next token on a clean prompt when
the residual stream at one (layer window, position) is patched from a counterfactual prompt,
asked of a trained explainer (one cell, or every cell as a grid and a heatmap) and compared with
the true labels."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from selfexplain import layout
from selfexplain.cli.answers import answer, answer_records, finish
from selfexplain.cli.locate import ExplainerDir, ask_models
from selfexplain.cli.render import print_cells, print_grid, quote, write_heatmap


def _trained_layout(path: Path) -> tuple[int, list[int]]:
    """The window and layer starts of a patching label file (what the explainer trained on)."""
    from selfexplain.examples import meta, read_parquet

    metas = meta(read_parquet(path).select("meta"))
    windows = sorted({m["window"] for m in metas})
    if len(windows) != 1:
        raise ValueError(f"{path}: expected one patching window, found {windows}; pass --window")
    return windows[0], sorted({m["layer_start"] for m in metas})


def _patching_layout(args, info: ExplainerDir, n_layers: int) -> tuple[int, list[int]]:
    labels = Path(args.labels) if args.labels else None
    if labels is None and info.root is not None and info.target is not None:
        labels = info.root / layout.labels_file("patching", info.target)
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
    from selfexplain.tasks.patching import _Setup

    setup = _Setup(model, tokenizer, clean, cf, window, starts)
    return [
        setup.base
        | {
            "layer_start": s,
            "layer_end": s + window - 1,
            "window": window,
            "position": p,
            "token": setup.tokens[p],
            "position_kind": setup.kinds[p],
        }
        for s, p in setup.jobs()
    ]


def cmd_ask_patching(args) -> int:
    from selfexplain.prompts import Prompt

    for flag, text in (("--clean", args.clean), ("--counterfactual", args.counterfactual)):
        if not text.strip():
            raise ValueError(f"{flag} is empty")
    if args.clean == args.counterfactual:
        raise ValueError("--clean and --counterfactual are identical")
    info, target_dir, explainer_model = ask_models(args, "patching")
    from selfexplain.models import decoder_layers, load
    from selfexplain.tasks.patching import patching_question, patching_rows

    clean = Prompt("cli-clean", "custom", args.clean)
    cf = Prompt("cli-counterfactual", "custom", args.counterfactual)
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
    if truth:
        rows = patching_rows(model, tokenizer, clean, cf, window=window, layer_starts=starts)
    else:
        rows = _patching_rows_without_truth(model, tokenizer, clean, cf, window, starts)
    del model, tokenizer  # free the target before the explainer is loaded
    gc.collect()
    if args.position is not None:
        tokens = {r["position"]: r["token"] for r in rows}
        rows = [r for r in rows if r["position"] == args.position]
        if not rows:
            choices = ", ".join(f"{p} {quote(t)}" for p, t in sorted(tokens.items()))
            raise ValueError(
                f"--position {args.position} is not a patchable position of the clean prompt; "
                f"choose one of: {choices}"
            )

    preds = answer(explainer_model, info, [patching_question(r) for r in rows], args)
    keys = ("pair_id", "layer_start", "layer_end", "position", "token", "position_kind")
    records = answer_records(rows, preds, truth, {key: key for key in keys})

    first = rows[0]
    print(f"\nclean:          {quote(first['clean'])}")
    print(f"counterfactual: {quote(first['counterfactual'])}")
    same = first["orig_token"] == first["cf_token"]
    print(
        f"target's next token: clean {quote(first['orig_token'])}, "
        f"counterfactual {quote(first['cf_token'])}"
        + ("  (the same: no patch can make it the counterfactual's)" if same else "")
    )
    if len(rows) == 1:
        print_cells(rows, records, truth)
    else:
        print_grid(rows, records, truth)
        path = args.heatmap or "patching_heatmap.png"
        write_heatmap(rows, records, truth, path)
        print(f"heatmap -> {path}")
    return finish(records, preds, truth, args.out)
