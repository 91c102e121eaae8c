"""Tidy result tables (polars) and figures (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from selfexplain.core.registry import SCALING, TRAINED, VARIANTS
from selfexplain.data.draws import groups
from selfexplain.features.metrics import feature_metrics
from selfexplain.metrics import bootstrap_ci, change_metrics, heatmap_agreement, natural_prediction
from selfexplain.report.compare import INTERACTION

GROUP = ["task", "target", "explainer", "relation", "variant", "n_train", "seed"]
# the metrics plotted per task (the table holds every metric of the task's aggregator)
# (teacher-forced has-changed balanced accuracy and AUC first: the primary metrics)
_CHANGE_PLOTS = ("balanced_accuracy", "auc", "exact_match", "has_changed_f1", "content_match")
PLOT_METRICS = {
    "ablation": _CHANGE_PLOTS,
    "patching": _CHANGE_PLOTS,
    "hint": _CHANGE_PLOTS,
    "features": ("similarity", "simulation"),
}


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def task_metrics(task: str):
    """The aggregator of a task's per-example evaluation rows."""
    if task == "features":
        return feature_metrics
    return change_metrics


def summarize(evals: Sequence[pl.DataFrame], *, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Long table: one row per (group, metric) with value, 95% bootstrap CI and n."""
    rows = []
    for full in evals:
        df = in_sample(full)
        keys = {k: df[k][0] for k in GROUP}
        statistic = task_metrics(keys["task"])
        values = statistic(df)
        task = keys["task"]  # CIs resample whole prompts / pairs / questions / features
        cis = bootstrap_ci(df, statistic, n_boot=n_boot, seed=seed, clusters=clusters_of(df, task))
        if heatmap := heatmap_agreement(full):  # patching: all cells of the heatmap pairs
            cells = full.filter(pl.col("heatmap"))
            values |= heatmap
            by_pair = clusters_of(cells, task)
            cis |= bootstrap_ci(
                cells, heatmap_agreement, n_boot=n_boot, seed=seed, clusters=by_pair
            )
        for metric, value in values.items():
            lo, hi = cis[metric]
            if metric == "content_match":
                n = int(df["gold_changed"].sum())
            elif metric in ("simulation", "judge"):
                n = int(df[metric].drop_nulls().len())
            elif metric == "heatmap_agreement":
                n = int(full["heatmap"].sum())
            else:
                n = len(df)
            rows.append(keys | {"metric": metric, "value": value, "ci_lo": lo, "ci_hi": hi, "n": n})
    return pl.DataFrame(rows).sort(GROUP + ["metric"])


def clusters_of(df: pl.DataFrame, task: str) -> list[str] | None:
    """Each evaluation row's cluster (data.draws.group_of: prompt, pair, question, feature),
    which the CIs resample whole; None for rows without meta (then single rows)."""
    return groups(df, task) if "meta" in df.columns else None


def write_table(df: pl.DataFrame, parquet: str | Path, csv: str | Path) -> None:
    """Write the tidy table as parquet and CSV."""
    Path(parquet).parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(parquet)
    df.write_csv(csv)


def metric_bars(
    table: pl.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str] = ("exact_match", "has_changed_f1", "content_match"),
    title: str = "",
) -> None:
    """Bar chart of metrics per (target, explainer, variant) with 95% CI error bars."""
    table = table.filter(pl.col("metric").is_in(list(metrics)))
    groups = table.select("target", "explainer", "variant").unique(maintain_order=True).rows()
    width = max(4.2, 1.4 * len(groups))  # room for each bar's two-line label
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (target, explainer, variant) in enumerate(groups):
            sub = table.filter(
                (pl.col("metric") == metric)
                & (pl.col("target") == target)
                & (pl.col("explainer") == explainer)
                & (pl.col("variant") == variant)
            )
            if sub.is_empty():
                continue
            value = sub["value"].mean()
            lo, hi = sub["ci_lo"].mean(), sub["ci_hi"].mean()
            ax.bar(i, value, color=colors[i % len(colors)], label=f"{explainer}→{target} {variant}")
            ax.errorbar(i, value, yerr=[[value - lo], [hi - value]], color="black", capsize=4)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{e}→{t}\n{v}" for t, e, v in groups], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(metric)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def read_json(path: str | Path) -> dict:
    """Read a small JSON file."""
    return json.loads(Path(path).read_text())


def in_sample(df: pl.DataFrame) -> pl.DataFrame:
    """The rows of an evaluation that count for metrics (heatmap-only rows are left out)."""
    return df.filter(pl.col("in_sample")) if "in_sample" in df.columns else df


def layer_table(evals: Sequence[pl.DataFrame], *, n_boot: int = 1000, seed: int = 0):
    """Patching: exact match and has-changed F1 per layer window, with 95% bootstrap CIs."""
    rows = []
    for df in evals:
        df = in_sample(df)
        keys = {k: df[k][0] for k in GROUP}
        layers = pl.Series("layer_start", [json.loads(m)["layer_start"] for m in df["meta"]])
        df = df.with_columns(layers)
        for (layer,), sub in df.group_by("layer_start", maintain_order=True):
            values = change_metrics(sub)
            by_pair = clusters_of(sub, keys["task"])
            cis = bootstrap_ci(sub, change_metrics, n_boot=n_boot, seed=seed, clusters=by_pair)
            for metric in ("exact_match", "has_changed_f1"):
                lo, hi = cis[metric]
                rows.append(
                    keys
                    | {"layer_start": layer, "metric": metric, "value": values[metric]}
                    | {"ci_lo": lo, "ci_hi": hi, "n": len(sub)}
                )
    return pl.DataFrame(rows).sort(GROUP + ["metric", "layer_start"])


def layer_curves(table: pl.DataFrame, path: str | Path, metric: str = "exact_match") -> None:
    """Accuracy by patched layer window, one line per (explainer -> target, variant)."""
    table = table.filter(pl.col("metric") == metric)
    targets = table["target"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        sub = table.filter(pl.col("target") == target)
        curves = sub.group_by(["explainer", "variant", "layer_start"], maintain_order=True).agg(
            pl.col("value").mean(), pl.col("ci_lo").mean(), pl.col("ci_hi").mean()
        )
        for (explainer, variant), c in curves.group_by(["explainer", "variant"]):
            c = c.sort("layer_start")
            x = c["layer_start"].to_list()
            ax.plot(x, c["value"].to_list(), marker="o", label=f"{explainer} {variant}")
            ax.fill_between(x, c["ci_lo"].to_list(), c["ci_hi"].to_list(), alpha=0.15)
        ax.set_xlabel("first layer of the patched window")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
        ax.set_title(f"target: {target}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _grid(df: pl.DataFrame, column: str) -> tuple[list[int], list[int], list[list[float]]]:
    metas = [json.loads(m) for m in df["meta"]]
    layers = sorted({m["layer_start"] for m in metas})
    positions = sorted({m["position"] for m in metas})
    cells = {(m["layer_start"], m["position"]): v for m, v in zip(metas, df[column], strict=True)}
    grid = [
        [float("nan") if cells.get((y, x)) is None else float(cells[(y, x)]) for x in positions]
        for y in layers
    ]
    return layers, positions, grid


def patching_heatmaps(evals: Sequence[pl.DataFrame], path: str | Path, n_pairs: int = 3) -> None:
    """Per test pair: the target's causal map (layer window x position, 1 = output changes) next
    to each explainer variant's predicted map (metrics.natural_prediction)."""
    frames = [df.filter(pl.col("heatmap")) for df in evals if "heatmap" in df.columns]
    frames = [df.with_columns(natural_changed=natural_prediction(df)) for df in frames if len(df)]
    if not frames:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no heatmap rows in the evaluations", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=130)
        plt.close(fig)
        return
    pair_of = lambda df: pl.Series([json.loads(m)["pair_id"] for m in df["meta"]])  # noqa: E731
    pairs = sorted(set(pair_of(frames[0]).to_list()))[:n_pairs]
    cols = 1 + len(frames)
    fig, axes = plt.subplots(
        len(pairs), cols, figsize=(3.2 * cols, 2.6 * len(pairs)), squeeze=False
    )
    for r, pair in enumerate(pairs):
        panels = [("target (truth)", frames[0], "gold_changed")]
        panels += [
            (f"{df['explainer'][0]} {df['variant'][0]}", df, "natural_changed") for df in frames
        ]
        for c, (title, df, column) in enumerate(panels):
            sub = df.filter(pair_of(df) == pair)
            layers, positions, grid = _grid(sub, column)
            ax = axes[r][c]
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
            tokens = {json.loads(m)["position"]: json.loads(m)["token"] for m in sub["meta"]}
            ax.set_xticks(
                range(len(positions)), [tokens[p] for p in positions], fontsize=6, rotation=90
            )
            ax.set_title(title if r == 0 else "", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{pair}\nlayer window start", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------- figures of the matrix
# All drawn from the seed summary (tables.seed_summary): mean over seeds, 95% CI.


def _empty_figure(path: str | Path, text: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    _save(fig, path)


def _bar(ax, x, row, color, label=None):
    mean, lo, hi = row["mean"], row["ci_lo"], row["ci_hi"]
    if mean is None:
        return
    ax.bar(x, mean, width=0.8, color=color, label=label)
    if lo is not None and hi is not None:
        ax.errorbar(x, mean, yerr=[[max(mean - lo, 0)], [max(hi - mean, 0)]], color="k", capsize=3)


def _n_note(sub: pl.DataFrame) -> str:
    seeds = sorted(set(sub["n_seeds"].to_list()))
    ns = sorted(set(x for x in sub["n"].to_list() if x is not None))
    return f"seeds {'/'.join(map(str, seeds))}, n test {'/'.join(map(str, ns))}"


def _plottable(summary: pl.DataFrame) -> pl.DataFrame:
    """The rows of tasks that have plotted metrics."""
    return summary.filter(pl.col("task").is_in(list(PLOT_METRICS)))


def _task_metric_cells(table: pl.DataFrame, col_width: float):
    """A figure with a row per task of the table and a column per plotted metric: the figure
    and, per used cell, (ax, task, metric, the table's rows of that task and metric)."""
    tasks = [t for t in PLOT_METRICS if t in set(table["task"])]
    ncols = max(len(PLOT_METRICS[t]) for t in tasks)
    fig, axes = plt.subplots(
        len(tasks), ncols, figsize=(col_width * ncols, 3.0 * len(tasks)), squeeze=False
    )
    cells = []
    for r, task in enumerate(tasks):
        for c in range(ncols):
            if c >= len(PLOT_METRICS[task]):
                axes[r][c].axis("off")
                continue
            metric = PLOT_METRICS[task][c]
            sub = table.filter((pl.col("task") == task) & (pl.col("metric") == metric))
            cells.append((axes[r][c], task, metric, sub))
    return fig, cells


def _finish_cell(ax, task: str, metric: str, sub: pl.DataFrame) -> None:
    ax.set_ylim(0, 1)
    ax.set_title(f"{task}: {metric}\n({_n_note(sub)})" if len(sub) else metric, fontsize=8)


def self_vs_other_figure(summary: pl.DataFrame, path: str | Path) -> None:
    """Trained explainers per task (rows) and metric (columns): for each target, the self
    explainer next to each other explainer; mean over seeds with 95% CI."""
    table = _plottable(summary).filter(pl.col("variant") == TRAINED)
    if table.is_empty():
        return _empty_figure(path, "no trained runs in the table")
    fig, cells = _task_metric_cells(table, 3.6)
    colors = {"self": "tab:blue", "other": "tab:orange"}
    for ax, task, metric, sub in cells:
        ticks, labels, x = [], [], 0
        for target in sorted(set(sub["target"])):
            rows = sub.filter(pl.col("target") == target).sort(
                pl.col("relation") != "self", "explainer"
            )
            for row in rows.iter_rows(named=True):
                _bar(ax, x, row, colors[row["relation"]])
                ticks.append(x)
                labels.append(f"{row['explainer']}\n→{target}")
                x += 1
            x += 0.6
        ax.set_xticks(ticks, labels, fontsize=7)
        _finish_cell(ax, task, metric, sub)
    handles = [plt.Rectangle((0, 0), 1, 1, color=v) for v in colors.values()]
    fig.suptitle("Self vs other: trained explainers (mean over seeds, 95% CI)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    fig.legend(handles, list(colors), loc="upper right", fontsize=8)
    _save(fig, path)


def baselines_figure(summary: pl.DataFrame, path: str | Path) -> None:
    """Per task (rows) and metric (columns): trained vs untrained, no_signal and (features)
    nearest_neighbour, one group of bars per explainer → target pair."""
    table = _plottable(summary).filter(pl.col("variant").is_in(list(VARIANTS)))
    if table.is_empty():
        return _empty_figure(path, "no runs in the table")
    fig, cells = _task_metric_cells(table, 4.2)
    colors = ["tab:blue", "tab:gray", "tab:red", "tab:purple", "tab:orange", "black", "tab:green"]
    colors += ["tab:brown", "tab:olive"]
    palette = {v: colors[i % len(colors)] for i, v in enumerate(VARIANTS)}
    for ax, task, metric, sub in cells:
        in_task = table.filter(pl.col("task") == task)
        pairs = sorted(set(in_task.select("target", "explainer").iter_rows()))
        variants = [v for v in VARIANTS if v in set(in_task["variant"])]
        width = len(variants) + 1
        for p, (target, explainer) in enumerate(pairs):
            for v, variant in enumerate(variants):
                rows = sub.filter(
                    (pl.col("target") == target)
                    & (pl.col("explainer") == explainer)
                    & (pl.col("variant") == variant)
                )
                for row in rows.iter_rows(named=True):
                    _bar(ax, p * width + v, row, palette[variant])
        ax.set_xticks(
            [p * width + (len(variants) - 1) / 2 for p in range(len(pairs))],
            [f"{e}\n→{t}" for t, e in pairs],
            fontsize=7,
        )
        _finish_cell(ax, task, metric, sub)
    shown = [v for v in VARIANTS if v in set(table["variant"])]
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[v]) for v in shown]
    fig.suptitle("Trained explainers vs baselines (mean over seeds, 95% CI)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.legend(handles, shown, loc="upper right", fontsize=8)
    _save(fig, path)


def scaling_figure(summary: pl.DataFrame, path: str | Path) -> None:
    """Metric vs training examples (log x), one line per explainer → target pair, from the
    data-scaling variants n{N} and the full trained variant (mean over seeds, 95% CI band)."""
    table = _plottable(summary).filter(
        (pl.col("variant") == TRAINED) | pl.col("variant").str.contains(f"^{SCALING.pattern}$")
    )
    if table.is_empty():
        return _empty_figure(path, "no trained runs in the table")
    fig, cells = _task_metric_cells(table, 3.8)
    for ax, task, metric, sub in cells:
        pairs = sorted(
            set(table.filter(pl.col("task") == task).select("target", "explainer").iter_rows())
        )
        for target, explainer in pairs:
            line = sub.filter(
                (pl.col("target") == target)
                & (pl.col("explainer") == explainer)
                & pl.col("mean").is_not_null()
            ).sort("n_train")
            if line.is_empty():
                continue
            x = line["n_train"].to_list()
            style = "-" if target == explainer else "--"
            ax.plot(x, line["mean"].to_list(), style, marker="o", label=f"{explainer}→{target}")
            means = line["mean"]
            lo = [v if v is not None else m for v, m in zip(line["ci_lo"], means, strict=True)]
            hi = [v if v is not None else m for v, m in zip(line["ci_hi"], means, strict=True)]
            ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("training examples", fontsize=8)
        _finish_cell(ax, task, metric, sub)
        ax.legend(fontsize=6)
    fig.suptitle("Data scaling (solid: self, dashed: other; mean over seeds, 95% CI)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def comparisons_figure(table: pl.DataFrame, path: str | Path) -> None:
    """Forest plot of the paired comparisons (compare.comparisons): one panel per task and
    metric, one line per comparison (difference with its clustered 95% bootstrap CI)."""
    if table.is_empty():
        return _empty_figure(path, "no comparisons: the runs share no test items")
    panels = table.select("task", "metric").unique(maintain_order=True).rows()
    n_rows = max(
        len(table.filter((pl.col("task") == t) & (pl.col("metric") == m))) for t, m in panels
    )
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 0.35 * n_rows + 1.4), squeeze=False
    )
    for ax, (task, metric) in zip(axes[0], panels, strict=True):
        sub = table.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        labels = []
        for y, row in enumerate(sub.iter_rows(named=True)):
            excludes = row["ci_lo"] > 0 or row["ci_hi"] < 0
            color = "tab:blue" if row["diff"] > 0 else "tab:red"
            ax.errorbar(
                row["diff"],
                y,
                xerr=[[row["diff"] - row["ci_lo"]], [row["ci_hi"] - row["diff"]]],
                fmt="o",
                color=color if excludes else "tab:gray",
                capsize=3,
            )
            who = row["a_explainer"]
            if row["comparison"] == "self - other":
                who = f"{row['a_explainer']} - {row['b_explainer']}"
            labels.append(f"{row['comparison']}\n{who}→{row['target']}")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(f"{task}: {metric}", fontsize=8)
        ax.set_xlabel("difference (95% CI, clustered)", fontsize=7)
    fig.suptitle("Paired comparisons on the same test items (colour: CI excludes 0)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def learning_curves_figure(curves: pl.DataFrame, path: str | Path) -> None:
    """Validation metric against training step, one panel per task, one line per run
    (explainer → target, variant, seed); the best step marked."""
    if curves.is_empty():
        return _empty_figure(path, "no validation curves (train.val_fraction is 0)")
    tasks = sorted(set(curves["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = curves.filter(pl.col("task") == task)
        metric = sub["metric"][0]
        for (target, explainer, variant, seed), run in sub.group_by(
            ["target", "explainer", "variant", "seed"], maintain_order=True
        ):
            run = run.sort("step")
            style = "-" if variant == TRAINED else ":"
            line = ax.plot(
                run["step"].to_list(),
                run["value"].to_list(),
                style,
                marker=".",
                label=f"{explainer}→{target} {variant} s{seed}",
            )[0]
            best = run.filter(pl.col("best"))
            if len(best):
                ax.plot(best["step"], best["value"], "*", ms=10, color=line.get_color())
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel(f"validation {metric}", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=5)
    fig.suptitle("Learning curves on the validation split (star: kept adapter)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def curve_table(summaries: Sequence[tuple[dict, dict]]) -> pl.DataFrame:
    """Tidy learning curves from (run labels, train_summary.json) pairs: one row per run and
    validation step with the selecting metric's value (its first part) and whether it is the
    kept step."""
    rows = []
    for labels, summary in summaries:
        best = summary.get("best") or {}
        metric = str(best.get("metric", "")).split("+")[0]
        for point in summary.get("validation") or []:
            if metric not in point:
                continue
            rows.append(
                labels
                | {
                    "metric": metric,
                    "step": point["step"],
                    "value": point[metric],
                    "train_loss": point.get("train_loss"),
                    "best": point["step"] == best.get("step"),
                }
            )
    schema = {
        "task": pl.String,
        "target": pl.String,
        "explainer": pl.String,
        "variant": pl.String,
        "seed": pl.Int64,
        "metric": pl.String,
        "step": pl.Int64,
        "value": pl.Float64,
        "train_loss": pl.Float64,
        "best": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def privileged_access_figure(table: pl.DataFrame, path: str | Path) -> None:
    """The paper's privileged-access figure, from the comparisons table (compare.comparisons):
    per task, the explainer (rows) x target (columns) grid of trained explainers' balanced
    accuracy (the per-target self - other rows give each cell; mean over seeds), each
    target's self - other and the interaction ((S->S - G->S) + (G->G - S->G)) / 2 with their
    hierarchical-bootstrap 95% CIs in the title."""
    metric = "balanced_accuracy"
    rows = table.filter(pl.col("metric") == metric)
    self_other = rows.filter(pl.col("comparison") == "self - other")
    if self_other.is_empty():
        return _empty_figure(
            path,
            "no self - other comparison: the matrix needs a target\n"
            "explained by itself and by another explainer",
        )
    tasks = sorted(set(self_other["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = self_other.filter(pl.col("task") == task)
        cells = {}
        for r in sub.iter_rows(named=True):
            cells[(r["a_explainer"], r["target"])] = r["a"]
            cells[(r["b_explainer"], r["target"])] = r["b"]
        names = sorted({e for e, _ in cells} | {t for _, t in cells})
        grid = np.full((len(names), len(names)), np.nan)
        for (e, t), v in cells.items():
            grid[names.index(e), names.index(t)] = v
        ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis")
        for i in range(len(names)):
            for j in range(len(names)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("target", fontsize=8)
        ax.set_ylabel("explainer", fontsize=8)
        lines = [f"{task}: {metric}"]
        for r in sub.iter_rows(named=True):
            lines.append(f"self - other on {r['target']}: {_ci_text(r)}")
        inter = rows.filter((pl.col("task") == task) & (pl.col("comparison") == INTERACTION))
        if len(inter):
            lines.append(f"interaction: {_ci_text(inter.row(0, named=True))}")
        ax.set_title("\n".join(lines), fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _ci_text(row: dict) -> str:
    return f"{row['diff']:+.3f} [{row['ci_lo']:+.3f}, {row['ci_hi']:+.3f}]"


MATRIX_FIGURES = {
    "self_vs_other": self_vs_other_figure,
    "baselines": baselines_figure,
    "scaling": scaling_figure,
}


def compute_figure(table: pl.DataFrame, path: str | Path) -> None:
    """Total wall time per rule family (bars) with the peak RSS written next to each bar."""
    table = table.sort("wall_s_total")
    labels = [
        " ".join(x for x in (r, t, m) if x)
        for r, t, m in table.select("rule", "task", "model").iter_rows()
    ]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(labels) + 1.2))
    y = range(len(labels))
    ax.barh(list(y), table["wall_s_total"].to_list(), color="tab:blue")
    for i, (s, rss, jobs) in enumerate(table.select("wall_s_total", "max_rss_mb", "jobs").rows()):
        rss_text = f"{rss:,.0f} MB" if rss is not None else "? MB"
        ax.text(s, i, f" {s:,.0f} s, {jobs} jobs, peak {rss_text}", va="center", fontsize=7)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xlabel("wall time, all jobs of the family (s)")
    ax.set_xlim(0, max(table["wall_s_total"].max() or 1, 1) * 1.6)
    fig.tight_layout()
    _save(fig, path)
