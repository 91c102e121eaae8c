"""The ``selfexplain`` command: ask a trained explainer about your own prompts, or label them.

    selfexplain ask ablation --explainer DIR --prompt TEXT      (or --prompts FILE.jsonl)
    selfexplain ask patching --explainer DIR --clean TEXT --counterfactual TEXT
    selfexplain ask features --explainer DIR --feature ID         (or --vector FILE.safetensors)
    selfexplain labels {ablation,patching} --target MODEL --prompts FILE.jsonl --out FILE.parquet

Everything goes through the library functions the Snakemake pipeline uses: true labels from
``tasks.ablation.ablation_labels`` / ``tasks.patching.patching_rows``, questions from
``ablation_question`` / ``patching_question``, answers from ``evaluate.change_answers`` and
scores from ``metrics.score_change_rows`` + ``metrics.change_metrics``, so the answers and the
metric line printed here are the ones the pipeline would compute for the same questions.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selfexplain.metrics import ParsedChange, change_answer, parse_change

PROG = "selfexplain"
_SEED_DIR = re.compile(r"s(\d+)")


# --------------------------------------------------------------------------- locating models


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

    def describe(self) -> str:
        if self.task is None:
            return str(self.adapter)
        return (
            f"{self.adapter} (task {self.task}, target {self.target}, explainer "
            f"{self.explainer}, {self.variant}, seed {self.seed})"
        )


def find_adapter(path: str | Path) -> Path:
    """The adapter dir: path itself, or for a variant dir (.../trained) its lowest s<seed>/."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such explainer directory; pass --explainer with a trained explainer "
            "such as results/explainers/ablation/<target>/<explainer>/trained/s0"
        )
    if (path / "adapter_config.json").is_file():
        return path
    seeds = []
    for sub in path.iterdir():
        m = _SEED_DIR.fullmatch(sub.name)
        if m and (sub / "adapter_config.json").is_file():
            seeds.append((int(m.group(1)), sub))
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
    parts = adapter.resolve().parts
    m = _SEED_DIR.fullmatch(parts[-1])
    if len(parts) >= 8 and parts[-7:-5] == ("results", "explainers") and m:
        return ExplainerDir(
            adapter=adapter,
            root=Path(*parts[:-7]),
            task=parts[-5],
            target=parts[-4],
            explainer=parts[-3],
            variant=parts[-2],
            seed=int(m.group(1)),
        )
    root = next((p for p in adapter.resolve().parents if (p / "results").is_dir()), None)
    return ExplainerDir(adapter=adapter, root=root)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _slug(spec: str) -> str:
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
    from selfexplain.models import resolve, spec_kind

    kind = spec_kind(value)
    path_like = value.startswith((".", "/", "~")) or value.count("/") > 1 or path.exists()
    if kind == "hub" and path_like:
        raise FileNotFoundError(f"{value}: no such model directory; pass {flag} DIR")
    out = Path(cache).expanduser() if cache else default_cache()
    out = out / _slug(value)
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
        path = info.root / "resources" / "models" / name
        if _is_model_dir(path):
            return path
        raise FileNotFoundError(
            f"{role} model directory {path} not found (inferred from the explainer path); "
            f"pass {flag} DIR"
        )
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


# --------------------------------------------------------------------------- answers & output


def _q(text: str | None) -> str:
    return json.dumps(text, ensure_ascii=False)


def _short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _change_text(changed: bool | None, new_token: str | None, raw: str | None = None) -> str:
    if changed is None:
        return "?? " + _short(_q(raw or ""), 24)
    if not changed:
        return "unchanged"
    return "-> " + (_short(_q(new_token)) if new_token is not None else "?")


def _agrees(pred: ParsedChange, gold: ParsedChange) -> bool:
    if not pred.valid or pred.changed != gold.changed:
        return False
    return not gold.changed or pred.new_token == gold.new_token


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """Left-aligned text columns (the first `right` columns right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [
            str(c).rjust(w) if i < right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def answer(model_path: Path, adapter: Path, questions: list[str], args) -> list[str]:
    """The explainer's answers, exactly as the pipeline's evaluate step makes them: "unchanged"
    or "changes to ..." as its has-changed score is at or above the threshold calibrated on
    the run's validation split (evaluate.change_answers)."""
    from selfexplain.evaluate import change_answers, load_explainer
    from selfexplain.train import calibrated_threshold

    model, tokenizer = load_explainer(model_path, adapter)
    preds, _ = change_answers(
        model,
        tokenizer,
        questions,
        threshold=calibrated_threshold(adapter),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    del model, tokenizer
    gc.collect()
    return preds


def metric_line(golds: list[str] | None, preds: list[str]) -> str:
    """has_changed_f1 and exact_match with the pipeline's scoring code (n only without truth)."""
    if golds is None:
        return f"n={len(preds)}"
    from selfexplain.metrics import change_metrics, score_change_rows

    m = change_metrics(score_change_rows(golds, preds))
    return (
        f"has_changed_f1={m['has_changed_f1']:.3f} exact_match={m['exact_match']:.3f} "
        f"n={len(preds)}"
    )


def _record(row: dict, pred_text: str, truth: bool) -> dict:
    """The predicted and (with truth) true change of one question, for the JSONL output."""
    pred = parse_change(pred_text)
    gold = change_answer(row["changed"], row["new_token"]) if truth else None
    return {
        "pred_changed": pred.changed,
        "pred_new_token": pred.new_token,
        "true_changed": row["changed"] if truth else None,
        "true_new_token": (row["new_token"] if row["changed"] else None) if truth else None,
        "prediction": pred_text,
        "answer": gold,
    }


def write_jsonl(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{len(records)} records -> {path}", file=sys.stderr)


# --------------------------------------------------------------------------- ask ablation


def _ablation_prompts(args) -> list:
    from selfexplain.prompts import Prompt, read_prompts_jsonl

    if args.prompts:
        if args.hint:
            raise ValueError("--hint goes with --prompt; put hints in the JSONL file instead")
        return read_prompts_jsonl(args.prompts)
    if args.hint and len(args.prompt) != 1:
        raise ValueError("--hint needs exactly one --prompt")
    prompts = []
    for i, text in enumerate(args.prompt, start=1):
        if not text.strip():
            raise ValueError(f"--prompt {i} is empty")
        hint = args.hint if i == 1 else None
        if hint is not None and hint not in text:
            raise ValueError(f"--hint {hint!r} is not a substring of the prompt")
        prompts.append(Prompt(f"prompt-{i}", "custom", text, hint))
    return prompts


def _ablation_rows_without_truth(model, tokenizer, prompt) -> list[dict]:
    """The fields ablation_question needs (the target's tokens and greedy next token), computed
    as prompt_ablation_rows does, without the removal forwards."""
    from selfexplain.forward import next_token_logprobs
    from selfexplain.tasks.ablation import ablatable_positions, encode, greedy_content_tokens

    ids = encode(tokenizer, prompt.text)
    logp = next_token_logprobs(model, [ids], tokenizer.pad_token_id)
    y0 = greedy_content_tokens(logp, tokenizer)[0]
    base = {
        "prompt_id": prompt.id,
        "kind": prompt.kind,
        "prompt": prompt.text,
        "orig_token": tokenizer.decode([y0]),
        "orig_token_id": y0,
    }
    rows = [
        base
        | {
            "unit": "token",
            "position": k,
            "token_index": pos,
            "removed": tokenizer.decode([ids[pos]]),
        }
        for k, pos in enumerate(ablatable_positions(tokenizer, ids))
    ]
    if prompt.hint:
        rows.append(base | {"unit": "hint", "position": None, "removed": prompt.hint})
    return rows


def cmd_ask_ablation(args) -> int:
    prompts = _ablation_prompts(args)
    info, target_dir, explainer_model = ask_models(args, "ablation")
    from selfexplain.models import load
    from selfexplain.tasks.ablation import ablation_labels, ablation_question

    truth = not args.no_truth
    model, tokenizer = load(target_dir)
    if truth:
        rows = ablation_labels(model, tokenizer, prompts)
    else:
        rows = [r for p in prompts for r in _ablation_rows_without_truth(model, tokenizer, p)]
    del model, tokenizer  # free the target before the explainer is loaded
    gc.collect()

    preds = answer(explainer_model, info.adapter, [ablation_question(r) for r in rows], args)
    records = []
    for row, pred_text in zip(rows, preds, strict=True):
        rec = {
            "prompt_id": row["prompt_id"],
            "unit": row["unit"],
            "position": row["position"],
            "token": row["removed"],
        }
        records.append(rec | _record(row, pred_text, truth))

    mismatches = 0
    for prompt in prompts:
        recs = [
            (r, rec) for r, rec in zip(rows, records, strict=True) if r["prompt_id"] == prompt.id
        ]
        print(f"\n[{prompt.id}] {_q(prompt.text)}")
        print(f"target's next token: {_q(recs[0][0]['orig_token'])}")
        header = ["pos", "removed token", "predicted"] + (["true", ""] if truth else [])
        table = []
        for row, rec in recs:
            pos = "hint" if row["unit"] == "hint" else str(row["position"])
            cells = [pos, _short(_q(row["removed"])), _predicted(rec)]
            if truth:
                agree = _agrees(parse_change(rec["prediction"]), parse_change(rec["answer"]))
                mismatches += not agree
                cells += [_change_text(rec["true_changed"], rec["true_new_token"]), _mark(agree)]
            table.append(cells)
        print("\n".join(_table(header, table)))
    if truth:
        print(f"\n* = predicted differs from the true label ({mismatches} of {len(records)})")
    if args.out:
        write_jsonl(records, args.out)
    golds = [rec["answer"] for rec in records] if truth else None
    print(metric_line(golds, preds))
    return 0


def _predicted(rec: dict) -> str:
    pred = parse_change(rec["prediction"])
    return _change_text(pred.changed if pred.valid else None, pred.new_token, rec["prediction"])


def _mark(agree: bool) -> str:
    return "" if agree else "*"


# --------------------------------------------------------------------------- ask patching


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
        labels = info.root / "results" / "labels" / "patching" / f"{info.target}.parquet"
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


def _layers(row: dict) -> str:
    s, e = row["layer_start"], row["layer_end"]
    return str(s) if s == e else f"{s}-{e}"


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
            choices = ", ".join(f"{p} {_q(t)}" for p, t in sorted(tokens.items()))
            raise ValueError(
                f"--position {args.position} is not a patchable position of the clean prompt; "
                f"choose one of: {choices}"
            )

    preds = answer(explainer_model, info.adapter, [patching_question(r) for r in rows], args)
    records = []
    for row, pred_text in zip(rows, preds, strict=True):
        rec = {
            "pair_id": row["pair_id"],
            "layer_start": row["layer_start"],
            "layer_end": row["layer_end"],
            "position": row["position"],
            "token": row["token"],
            "position_kind": row["position_kind"],
        }
        records.append(rec | _record(row, pred_text, truth))

    first = rows[0]
    print(f"\nclean:          {_q(first['clean'])}")
    print(f"counterfactual: {_q(first['counterfactual'])}")
    same = first["orig_token"] == first["cf_token"]
    print(
        f"target's next token: clean {_q(first['orig_token'])}, "
        f"counterfactual {_q(first['cf_token'])}"
        + ("  (the same: no patch can make it the counterfactual's)" if same else "")
    )
    if len(rows) == 1:
        _print_cells(rows, records, truth)
    else:
        _print_grid(rows, records, truth)
        path = args.heatmap or "patching_heatmap.png"
        write_heatmap(rows, records, truth, path)
        print(f"heatmap -> {path}")
    if args.out:
        write_jsonl(records, args.out)
    golds = [rec["answer"] for rec in records] if truth else None
    print(metric_line(golds, preds))
    return 0


def _print_cells(rows: list[dict], records: list[dict], truth: bool) -> None:
    header = ["layers", "pos", "token", "kind", "predicted"] + (["true", ""] if truth else [])
    table = []
    for row, rec in zip(rows, records, strict=True):
        cells = [_layers(row), str(row["position"]), _short(_q(row["token"])), row["position_kind"]]
        cells.append(_predicted(rec))
        if truth:
            agree = _agrees(parse_change(rec["prediction"]), parse_change(rec["answer"]))
            cells += [_change_text(rec["true_changed"], rec["true_new_token"]), _mark(agree)]
        table.append(cells)
    print("\n".join(_table(header, table)))
    print(f"raw answer: {_q(records[0]['prediction'])}")


def _grid(rows: list[dict], values: list[float | None]):
    starts = sorted({r["layer_start"] for r in rows})
    positions = sorted({r["position"] for r in rows})
    cells = {(r["layer_start"], r["position"]): v for r, v in zip(rows, values, strict=True)}
    nan = float("nan")
    grid = [
        [nan if cells.get((s, p)) is None else float(cells[(s, p)]) for p in positions]
        for s in starts
    ]
    return starts, positions, grid


def _char(value: float) -> str:
    return "?" if value != value else ("#" if value else ".")


def _print_grid(rows: list[dict], records: list[dict], truth: bool) -> None:
    pred = [rec["pred_changed"] for rec in records]
    starts, positions, pgrid = _grid(rows, pred)
    tgrid = _grid(rows, [rec["true_changed"] for rec in records])[2] if truth else None
    window = rows[0]["window"]
    print(
        "\none line per layer window, one character per position: '#' the next token changes, "
        "'.' unchanged, '?' unparseable answer" + ("; '*' marks a disagreement" if truth else "")
    )
    header = ["layers", "predicted"] + (["true", "disagree"] if truth else [])
    table = []
    for i, s in enumerate(starts):
        cells = [_layers({"layer_start": s, "layer_end": s + window - 1})]
        cells.append("".join(_char(v) for v in pgrid[i]))
        if truth:
            cells.append("".join(_char(v) for v in tgrid[i]))
            cells.append(
                "".join("." if pv == tv else "*" for pv, tv in zip(pgrid[i], tgrid[i], strict=True))
            )
        table.append(cells)
    print("\n".join(_table(header, table, right=0)))
    tokens = {r["position"]: r["token"] for r in rows}
    lines, line = [], "positions:"
    for p in positions:  # wrap between items, never inside a quoted token
        item = f"{p}:{_short(_q(tokens[p]), 16)}"
        if len(line) + 1 + len(item) > 100:
            lines.append(line)
            line = " "
        line += " " + item
    print("\n".join([*lines, line]))


def write_heatmap(rows: list[dict], records: list[dict], truth: bool, path: str | Path) -> None:
    """The target's causal map (truth) next to the explainer's predicted map, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, positions, pred = _grid(rows, [rec["pred_changed"] for rec in records])
    panels = []
    if truth:
        panels.append(("target (truth)", _grid(rows, [rec["true_changed"] for rec in records])[2]))
    panels.append(("explainer (predicted)", pred))
    window = rows[0]["window"]
    tokens = {r["position"]: r["token"] for r in rows}
    width = max(3.5, 0.22 * len(positions) + 1.5)
    height = max(2.4, 0.3 * len(starts) + 1.8)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, (title, grid) in zip(axes[0], panels, strict=True):
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(starts)), [f"{s}-{s + window - 1}" for s in starts], fontsize=7)
        ax.set_xticks(
            range(len(positions)), [tokens[p] for p in positions], fontsize=6, rotation=90
        )
        ax.set_ylabel("layer window", fontsize=8)
        ax.set_title(title, fontsize=9)
    if truth:  # mark the cells where the prediction disagrees with the truth
        for i in range(len(starts)):
            for j in range(len(positions)):
                if pred[i][j] != panels[0][1][i][j]:
                    axes[0][-1].text(j, i, "x", ha="center", va="center", color="red", fontsize=7)
    fig.suptitle("activation patching: 1 (yellow) = the next token changes", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- ask features


def _feature_labels(args, info: ExplainerDir) -> Path | None:
    """The feature label file the explainer was trained on (or --labels)."""
    if args.labels:
        path = Path(args.labels)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such label file (--labels)")
        return path
    if info.root is not None and info.target is not None:
        path = info.root / "results" / "labels" / "features" / f"{info.target}.parquet"
        if path.is_file():
            return path
    return None


def _read_vectors(path: str) -> list[list[float]]:
    """Vectors from a safetensors file: its "vector" tensor, or its only tensor; (d,) or (n, d)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if "vector" in tensors:
        t = tensors["vector"]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise ValueError(f"{path}: several tensors {sorted(tensors)}; name the one to ask 'vector'")
    if t.dim() not in (1, 2):
        raise ValueError(f"{path}: expected a (d,) or (n, d) tensor, got {tuple(t.shape)}")
    return (t[None] if t.dim() == 1 else t).float().tolist()


def _snippet(ex: dict, width: int = 70) -> str:
    text = f"{ex['left']}<<{ex['token']}>>{ex['right']}".replace("\n", "\\n")
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def cmd_ask_features(args) -> int:
    import polars as pl

    if (args.feature is None) == (args.vector is None):
        raise ValueError("pass --feature ID (a feature of the label file) or --vector FILE")
    info, _, explainer_model = ask_models(args, "features")
    from selfexplain.examples import read_examples
    from selfexplain.features.metrics import nearest_neighbour_answers
    from selfexplain.tasks.features import feature_question

    labels_path = _feature_labels(args, info)
    labels = read_examples(labels_path) if labels_path else None
    if labels is not None:
        print(f"labels: {labels_path}", file=sys.stderr)
    truth = not args.no_truth and labels is not None
    if args.feature is not None:
        if labels is None:
            raise FileNotFoundError(
                "no feature label file found next to the explainer; pass --labels FILE.parquet"
            )
        ids = {json.loads(m)["feature"]: i for i, m in enumerate(labels["meta"])}
        missing = [f for f in args.feature if f not in ids]
        if missing:
            raise ValueError(
                f"--feature {missing[0]} is not in {labels_path} ({len(ids)} features, e.g. "
                f"{sorted(ids)[:5]})"
            )
        asked = labels[[ids[f] for f in args.feature]]
    else:
        vectors = _read_vectors(args.vector)
        layer = args.layer
        if layer is None and labels is not None:
            layer = json.loads(labels["meta"][0])["layer"]
        if layer is None:
            raise ValueError("pass --layer L: no label file says which layer the vector is from")
        asked = pl.DataFrame(
            {
                "id": [f"vector-{i}" for i in range(len(vectors))],
                "question": [feature_question(layer)] * len(vectors),
                "vector": vectors,
            },
            schema_overrides={"vector": pl.List(pl.Float32)},
        )
        if labels is not None:  # the closest labelled feature is the reference
            _, nearest = nearest_neighbour_answers(
                labels["vector"].to_list(), labels["answer"].to_list(), vectors
            )
            ref = labels[nearest]
            cos = _cosines(vectors, ref["vector"].to_list())
            for i, (m, c) in enumerate(zip(ref["meta"], cos, strict=True)):
                print(
                    f"vector {i}: nearest labelled feature {json.loads(m)['feature']} (cos {c:.3f})"
                )
            asked = ref.with_columns(
                pl.Series("vector", vectors, dtype=pl.List(pl.Float32)),
                pl.Series("id", asked["id"]),
            )

    preds = _ask_feature_explainer(explainer_model, info.adapter, asked, args)
    rows = None
    if truth:
        from selfexplain.evaluate import evaluate_feature_task

        rows = evaluate_feature_task(asked, preds, labels={}, pool=labels)
    records = []
    for i, pred in enumerate(preds):
        meta = json.loads(asked["meta"][i]) if truth else {}
        rec = {"id": asked["id"][i], "feature": meta.get("feature"), "prediction": pred}
        print(
            f"\n[{asked['id'][i]}]"
            + (
                f" feature {meta['feature']}, layer {meta['layer']}, "
                f"fires on {meta['frequency']:.2%} of tokens"
                if truth
                else ""
            )
        )
        print(f"explainer:    {pred}")
        if truth:
            rec |= {
                "answer": asked["answer"][i],
                "similarity": rows["similarity"][i],
                "simulation": rows["simulation"][i],
            }
            print(f"ground truth: {asked['answer'][i]}")
            print(f"similarity {rec['similarity']:.3f}, simulation {rec['simulation']}")
            print("top-activating contexts (activation, <<token>>):")
            for ex in meta["examples"][: args.n_examples]:
                print(f"  {ex['activation']:8.2f}  {_snippet(ex)}")
        records.append(rec)
    if args.out:
        write_jsonl(records, args.out)
    if truth:
        from selfexplain.features.metrics import feature_metrics

        m = feature_metrics(rows)
        print(f"similarity={m['similarity']:.3f} simulation={m['simulation']:.3f} n={len(preds)}")
    else:
        print(f"n={len(preds)}")
    return 0


def _cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    import torch

    ta, tb = torch.tensor(a), torch.tensor(b)
    return torch.nn.functional.cosine_similarity(ta, tb, dim=-1).tolist()


def _ask_feature_explainer(model_path: Path, adapter: Path, asked, args) -> list[str]:
    """The explainer's descriptions of the asked vectors, as the pipeline's evaluate step."""
    from selfexplain.evaluate import explainer_injector, generate_answers, load_explainer

    model, tokenizer = load_explainer(model_path, adapter)
    vectors = asked["vector"].to_list()
    injector = explainer_injector(model, tokenizer, adapter, len(vectors[0]))
    preds = generate_answers(
        model,
        tokenizer,
        asked["question"].to_list(),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        vectors=vectors,
        injector=injector,
    )
    del model, tokenizer
    gc.collect()
    return preds


# --------------------------------------------------------------------------- labels


def cmd_labels(args) -> int:
    from selfexplain.prompts import read_pairs_jsonl, read_prompts_jsonl

    # read (and validate) the input before loading any model
    if args.task == "ablation":
        items = read_prompts_jsonl(args.prompts)
    else:
        items = read_pairs_jsonl(args.prompts)
    target_dir = model_dir(args.target, "--target", args.cache)
    name = args.target_name or (
        target_dir.name if Path(args.target).expanduser().is_dir() else _slug(args.target)
    )
    from selfexplain.examples import to_frame, write_parquet
    from selfexplain.models import decoder_layers, load

    model, tokenizer = load(target_dir)
    if args.task == "ablation":
        from selfexplain.tasks.ablation import ablation_examples, ablation_labels

        rows = ablation_labels(
            model, tokenizer, items, batch_size=args.batch_size or 32, engine=args.engine
        )
        examples = ablation_examples(rows, name, test_fraction=args.test_fraction)
        print(f"{len(rows)} labels from {len(items)} prompts")
    else:
        from selfexplain.tasks.patching import (
            filter_pairs,
            patching_examples,
            patching_labels,
            window_starts,
        )

        pairs = filter_pairs(model, tokenizer, items)
        if args.max_pairs is not None:
            pairs = pairs[: args.max_pairs]
        print(f"{len(pairs)} of {len(items)} pairs kept (equal length, different outputs)")
        if not pairs:
            raise ValueError(
                f"{args.prompts}: 0 of {len(items)} pairs kept: a pair needs a clean and a "
                "counterfactual prompt of equal token length on which the target's next "
                "tokens differ"
            )
        n_layers = len(decoder_layers(model))
        window = min(args.window, n_layers)
        starts = window_starts(n_layers, window, args.layer_stride)
        rows = patching_labels(
            model,
            tokenizer,
            pairs,
            window=window,
            layer_starts=starts,
            batch_size=args.batch_size or 64,
            max_positions=args.max_positions,
        )
        examples = patching_examples(
            rows, name, test_fraction=args.test_fraction, holdout=args.holdout
        )
        print(f"{len(rows)} labels: window {window}, layer starts {starts}")
    df = to_frame(examples)
    write_parquet(df, args.out)
    n_test = sum(ex.split == "test" for ex in examples)
    print(f"{len(df)} examples ({len(df) - n_test} train, {n_test} test) -> {args.out}")
    return 0


# --------------------------------------------------------------------------- parser


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
    pat.add_argument("--clean", required=True, metavar="TEXT")
    pat.add_argument("--counterfactual", required=True, metavar="TEXT")
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


if __name__ == "__main__":
    sys.exit(main())
