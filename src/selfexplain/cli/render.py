"""How the ``selfexplain`` commands print and write what they found: quoted and shortened text,
change answers, aligned text tables, the patching grid (text) and heatmap (PNG), JSONL records.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from selfexplain.core.formats import ParsedChange, parse_change


def quote(text: str | None) -> str:
    return json.dumps(text, ensure_ascii=False)


def short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def change_text(changed: bool | None, new_token: str | None, raw: str | None = None) -> str:
    if changed is None:
        return "?? " + short(quote(raw or ""), 24)
    if not changed:
        return "unchanged"
    return "-> " + (short(quote(new_token)) if new_token is not None else "?")


def agrees(pred: ParsedChange, gold: ParsedChange) -> bool:
    if not pred.valid or pred.changed != gold.changed:
        return False
    return not gold.changed or pred.new_token == gold.new_token


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
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


def predicted_text(rec: dict) -> str:
    pred = parse_change(rec["prediction"])
    return change_text(pred.changed if pred.valid else None, pred.new_token, rec["prediction"])


def mark(agree: bool) -> str:
    return "" if agree else "*"


def layers_text(row: dict) -> str:
    s, e = row["layer_start"], row["layer_end"]
    return str(s) if s == e else f"{s}-{e}"


def print_cells(rows: list[dict], records: list[dict], truth: bool) -> None:
    header = ["layers", "pos", "token", "kind", "predicted"] + (["true", ""] if truth else [])
    table = []
    for row, rec in zip(rows, records, strict=True):
        cells = [
            layers_text(row),
            str(row["position"]),
            short(quote(row["token"])),
            row["position_kind"],
        ]
        cells.append(predicted_text(rec))
        if truth:
            agree = agrees(parse_change(rec["prediction"]), parse_change(rec["answer"]))
            cells += [change_text(rec["true_changed"], rec["true_new_token"]), mark(agree)]
        table.append(cells)
    print("\n".join(text_table(header, table)))
    print(f"raw answer: {quote(records[0]['prediction'])}")


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


def print_grid(rows: list[dict], records: list[dict], truth: bool) -> None:
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
        cells = [layers_text({"layer_start": s, "layer_end": s + window - 1})]
        cells.append("".join(_char(v) for v in pgrid[i]))
        if truth:
            cells.append("".join(_char(v) for v in tgrid[i]))
            cells.append(
                "".join("." if pv == tv else "*" for pv, tv in zip(pgrid[i], tgrid[i], strict=True))
            )
        table.append(cells)
    print("\n".join(text_table(header, table, right=0)))
    tokens = {r["position"]: r["token"] for r in rows}
    lines, line = [], "positions:"
    for p in positions:  # wrap between items, never inside a quoted token
        item = f"{p}:{short(quote(tokens[p]), 16)}"
        if len(line) + 1 + len(item) > 100:
            lines.append(line)
            line = " "
        line += " " + item
    print("\n".join([*lines, line]))


def write_heatmap(rows: list[dict], records: list[dict], truth: bool, path: str | Path) -> None:
    """The target's causal map (truth) next to the explainer's predicted map, as a PNG."""
    starts, positions, pred = _grid(rows, [rec["pred_changed"] for rec in records])
    panels = []
    if truth:
        panels.append(("target (truth)", _grid(rows, [rec["true_changed"] for rec in records])[2]))
    panels.append(("explainer (predicted)", pred))
    window = rows[0]["window"]
    tokens = {r["position"]: r["token"] for r in rows}
    width = max(3.5, 0.22 * len(positions) + 1.5)
    height = max(2.4, 0.3 * len(starts) + 1.8)
    fig = Figure(figsize=(width * len(panels), height))  # no pyplot: no GUI backend, no state
    axes = fig.subplots(1, len(panels), squeeze=False)
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


def write_jsonl(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{len(records)} records -> {path}", file=sys.stderr)
