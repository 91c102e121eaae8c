"""Activation-patching labels: how does the target's next token change when the residual stream
of a clean prompt at one token position, over a window of consecutive layers, is replaced by its
value from a counterfactual prompt (the same question about a different subject)?

Clean and counterfactual prompts have the same number of tokens, so positions align. Patching
window ``[s, s + window)`` at position ``p`` overwrites the output of every block in the window
at ``p`` with the counterfactual run's output of the same block at ``p``. All (window start,
position) cases of a pair run as batched forwards of the clean ids repeated, row ``b`` patched
at its own position and layers. "Next token" means the greedy token among ordinary (non-special)
tokens, as in the ablation task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import polars as pl
import torch
from tqdm.auto import tqdm

from selfexplain.core.schema import (
    ExplainerExample,
    change_example,
    held_out,
    held_out_groups,
    linked_groups,
    meta,
    to_frame,
)
from selfexplain.forward import PrefixCache, next_token_logprobs, prefix_chunks
from selfexplain.hooks import ResidualPatch, capture_residual, patch_residual, replay_blocks
from selfexplain.models import decoder_layers
from selfexplain.prompts import Prompt, same_length_pairs
from selfexplain.tasks.ablation import (
    ablatable_positions,
    encode,
    end_distance_bucket,
    greedy_content_tokens,
    token_class,
)

POSITION_KINDS = ("subject", "relation", "option", "other")
# From this prompt length on, patched forwards skip the unchanged prefix and the blocks below the
# window (measured on SmolLM2, 2 CPU threads: 1.5x faster at 49 tokens, 1.4x slower at 6).
PREFIX_MIN_TOKENS = 16
# entity: no subject of a test pair (clean or counterfactual) in a training pair; relation: no
# relation of a test pair in training; prompt: whole pairs; layer: whole layer windows
HOLDOUTS = ("entity", "relation", "prompt", "layer")

_OPTION_LINE = re.compile(r"^[A-Z][.)] .*$", re.MULTILINE)
_QUESTION_LINE = re.compile(r"^Question: *(.*)$", re.MULTILINE)
_FORMAT_LINE = re.compile(r"^(Respond with|Answer:)")


# --------------------------------------------------------------------------- pairs / positions


def pair_id(clean: Prompt) -> str:
    """The pair's id: the clean prompt's id without its "-clean" suffix."""
    return clean.id.removesuffix("-clean")


def filter_pairs(
    model, tokenizer, pairs: Iterable[tuple[Prompt, Prompt]], *, batch_size: int = 32
) -> list[tuple[Prompt, Prompt]]:
    """The pairs whose prompts have equal token length and different greedy next tokens."""
    pairs = same_length_pairs(pairs, lambda text: encode(tokenizer, text))
    if not pairs:
        return []
    seqs = [encode(tokenizer, p.text) for pair in pairs for p in pair]
    logp = next_token_logprobs(model, seqs, tokenizer.pad_token_id, batch_size=batch_size)
    top1 = greedy_content_tokens(logp, tokenizer)
    return [pair for i, pair in enumerate(pairs) if top1[2 * i] != top1[2 * i + 1]]


def _overlaps(offset: tuple[int, int], spans: Sequence[tuple[int, int]]) -> bool:
    a, b = offset
    return b > a and any(a < end and b > start for start, end in spans)


def _question_spans(text: str) -> list[tuple[int, int]]:
    """The question words: the text after "Question:" on its line; without such a line, the
    first line that is neither an answer option nor a format line ("Respond with", "Answer:")."""
    m = _QUESTION_LINE.search(text)
    if m:
        return [m.span(1)]
    pos = 0
    for line in text.split("\n"):
        if line.strip() and not _OPTION_LINE.match(line) and not _FORMAT_LINE.match(line):
            return [(pos, pos + len(line))]
        pos += len(line) + 1
    return []


def position_kinds(tokenizer, clean: Prompt, counterfactual: Prompt) -> list[str]:
    """Kind of each token position of the clean prompt, by priority: "subject" (differs from the
    counterfactual, or overlaps an occurrence of meta["subject"]), "option" (in an answer-option
    line such as "B. Paris"), "relation" (the question words), "other" (format and special
    tokens such as "Question:", "Respond with ...", "Answer:", BOS)."""
    enc = tokenizer(clean.text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cf_ids = encode(tokenizer, counterfactual.text)
    text = clean.text
    subject = clean.meta.get("subject")
    subject_spans = [m.span() for m in re.finditer(re.escape(subject), text)] if subject else []
    option_spans = [m.span() for m in _OPTION_LINE.finditer(text)]
    question_spans = _question_spans(text)
    special = set(tokenizer.all_special_ids)
    kinds = []
    for i, (tid, off) in enumerate(zip(ids, offsets, strict=True)):
        differs = i >= len(cf_ids) or cf_ids[i] != tid
        if tid in special and not differs:
            kinds.append("other")
        elif differs or _overlaps(off, subject_spans):
            kinds.append("subject")
        elif _overlaps(off, option_spans):
            kinds.append("option")
        elif _overlaps(off, question_spans):
            kinds.append("relation")
        else:
            kinds.append("other")
    return kinds


# --------------------------------------------------------------------------- labels


def select_positions(
    positions: Sequence[int], kinds: Sequence[str], limit: int | None
) -> list[int]:
    """At most limit positions: every subject token and the last token first, then evenly spaced
    others (deterministic), so the cost per pair is bounded on long prompts."""
    if limit is None or len(positions) <= limit:
        return list(positions)
    must = [p for p in positions if kinds[p] == "subject"] + [positions[-1]]
    must = sorted(set(must))[:limit]
    rest = [p for p in positions if p not in must]
    n_more = limit - len(must)
    step = len(rest) / n_more if n_more > 0 else 0
    picked = [rest[int(i * step)] for i in range(n_more)]
    return sorted(must + picked)


def window_starts(n_layers: int, window: int, stride: int | None = None) -> list[int]:
    """First layers 0, stride, 2*stride, ... of the windows of `window` consecutive layers that
    fit in n_layers (stride defaults to the window: non-overlapping windows)."""
    return list(range(0, n_layers - window + 1, stride or window))


def _layer_starts(n_layers: int, window: int, layer_starts: Sequence[int] | None) -> list[int]:
    if not 1 <= window <= n_layers:
        raise ValueError(f"window must be in 1..{n_layers} (the number of layers), got {window}")
    starts = list(range(n_layers - window + 1)) if layer_starts is None else list(layer_starts)
    bad = [s for s in starts if not 0 <= s <= n_layers - window]
    if bad:
        raise ValueError(
            f"layer starts {bad} out of range for window {window}: use 0..{n_layers - window}"
        )
    return starts


class PatchingSetup:
    """Everything a pair's patched forwards need: ids, counterfactual residuals, baselines."""

    def __init__(
        self,
        model,
        tokenizer,
        clean: Prompt,
        counterfactual: Prompt,
        window: int,
        starts: Sequence[int] | None,
        max_positions: int | None = None,
    ) -> None:
        self.ids = encode(tokenizer, clean.text)
        cf_ids = encode(tokenizer, counterfactual.text)
        if len(cf_ids) != len(self.ids):
            raise ValueError(
                f"pair {pair_id(clean)!r}: clean and counterfactual prompts have "
                f"{len(self.ids)} and {len(cf_ids)} tokens; patching needs equal lengths "
                "(filter with filter_pairs)"
            )
        self.n_layers = len(decoder_layers(model))
        self.window = window
        self.starts = _layer_starts(self.n_layers, window, starts)
        self.device = next(model.parameters()).device
        kinds = position_kinds(tokenizer, clean, counterfactual)
        self.positions = select_positions(
            ablatable_positions(tokenizer, self.ids), kinds, max_positions
        )
        batch = torch.tensor([self.ids, cf_ids], device=self.device)
        with torch.no_grad(), capture_residual(model, range(self.n_layers)) as resid:
            logits = model(input_ids=batch, logits_to_keep=1).logits[:, -1]
        self.clean_resid = {layer: h[0] for layer, h in resid.items()}  # (seq, d_model) each
        self.cf_resid = {layer: h[1] for layer, h in resid.items()}
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        self.orig_id, self.cf_id = greedy_content_tokens(logp, tokenizer)
        self.base = {
            "pair_id": pair_id(clean),
            "clean": clean.text,
            "counterfactual": counterfactual.text,
            "relation": clean.meta.get("relation"),
            "subject": clean.meta.get("subject"),
            "cf_subject": counterfactual.meta.get("subject"),
            "orig_token": tokenizer.decode([self.orig_id]),
            "orig_token_id": self.orig_id,
            "cf_token": tokenizer.decode([self.cf_id]),
            "cf_token_id": self.cf_id,
            "p_orig_clean": float(logp[0, self.orig_id].exp()),
            "n_tokens": len(self.ids),
        }
        self.prefix = PrefixCache(model, self.ids)
        self.tokens = {p: tokenizer.decode([self.ids[p]]) for p in self.positions}
        self.kinds = kinds
        self.tokenizer = tokenizer

    def jobs(self) -> list[tuple[int, int]]:
        """(layer start, position) of every row, window start major."""
        return [(s, p) for s in self.starts for p in self.positions]

    def vector(self, start: int, position: int) -> list[float]:
        """The patched vector of a row (the paper's ``intervention_vector``): what the patch
        writes first, the counterfactual's output of block ``start`` at ``position``."""
        return self.cf_resid[start][position].float().cpu().tolist()

    def patches(self, jobs: Sequence[tuple[int, int]], start: int = 0) -> list[ResidualPatch]:
        """Patches for a batch whose row b is jobs[b] and whose first position is the prompt's
        position `start`: one per layer any row's window covers."""
        out = []
        for layer in range(self.n_layers):
            rows = [b for b, (s, _) in enumerate(jobs) if s <= layer < s + self.window]
            if not rows:
                continue
            pos = torch.tensor([jobs[b][1] for b in rows], device=self.device)
            out.append(
                ResidualPatch(
                    layer=layer,
                    rows=torch.tensor(rows, device=self.device),
                    positions=pos - start,
                    values=self.cf_resid[layer][pos],
                )
            )
        return out

    @torch.no_grad()
    def run(
        self, model, jobs: Sequence[tuple[int, int]], *, reuse_prefix: bool = True
    ) -> torch.Tensor:
        """Next-token log-probs (len(jobs), vocab) of the clean prompt patched per row.

        A patch at position p in layers s.. leaves every earlier position and every block below
        s as in the clean run (attention is causal), so with reuse_prefix the positions before
        the earliest patched one come from the clean run's cache, the blocks below the lowest
        window start replay the clean run's outputs, and only the rest is computed."""
        start = min(p for _, p in jobs) if reuse_prefix else 0
        lowest = min(s for s, _ in jobs) if reuse_prefix else 0
        replay = {layer: self.clean_resid[layer][start:] for layer in range(lowest)}
        with replay_blocks(model, replay), patch_residual(model, self.patches(jobs, start)):
            logits = self.prefix.logits([self.ids[start:]] * len(jobs), start)
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def rows(self, jobs: Sequence[tuple[int, int]], logp: torch.Tensor) -> list[dict]:
        top1 = greedy_content_tokens(logp, self.tokenizer)
        out = []
        for (s, p), new_id, lp in zip(jobs, top1, logp, strict=True):
            out.append(
                self.base
                | {
                    "layer_start": s,
                    "layer_end": s + self.window - 1,
                    "window": self.window,
                    "position": p,
                    "token": self.tokens[p],
                    "position_kind": self.kinds[p],
                    "new_token": self.tokenizer.decode([new_id]),
                    "new_token_id": new_id,
                    "changed": new_id != self.orig_id,
                    "p_orig": float(lp[self.orig_id].exp()),
                    "p_cf": float(lp[self.cf_id].exp()),
                    "vector": self.vector(s, p),
                }
            )
        return out


def patching_rows(
    model,
    tokenizer,
    clean: Prompt,
    counterfactual: Prompt,
    *,
    window: int = 1,
    layer_starts: Sequence[int] | None = None,
    batch_size: int = 64,
    max_positions: int | None = None,
) -> list[dict]:
    """Labels for patching each (window start, non-special position) of one pair, computed by
    batched forwards (batch_size rows each); rows ordered by window start, then position."""
    setup = PatchingSetup(
        model, tokenizer, clean, counterfactual, window, layer_starts, max_positions
    )
    jobs = setup.jobs()
    if len(setup.ids) < PREFIX_MIN_TOKENS:
        # Short prompt: a forward's fixed cost outweighs what skipping positions and blocks
        # saves, so all rows go in as few full-length forwards as possible.
        rows: list[dict] = []
        for i in range(0, len(jobs), batch_size):
            part = jobs[i : i + batch_size]
            rows.extend(setup.rows(part, setup.run(model, part, reuse_prefix=False)))
        return rows
    rows = [{}] * len(jobs)
    # One window start at a time (the blocks below it are replayed, not run); rows patched at
    # nearby positions share a forward over the cached clean prefix.
    for start in dict.fromkeys(setup.starts):
        idx = [i for i, (s, _) in enumerate(jobs) if s == start]
        for chunk in prefix_chunks([jobs[i][1] for i in idx], max_rows=batch_size):
            part = [jobs[idx[k]] for k in chunk]
            for k, row in zip(chunk, setup.rows(part, setup.run(model, part)), strict=True):
                rows[idx[k]] = row
    return rows


def naive_patching_rows(
    model,
    tokenizer,
    clean: Prompt,
    counterfactual: Prompt,
    *,
    window: int = 1,
    layer_starts: Sequence[int] | None = None,
    max_positions: int | None = None,
) -> list[dict]:
    """The same labels as patching_rows from one single-row patched forward per case (the
    reference for tests and the speed benchmark)."""
    setup = PatchingSetup(
        model, tokenizer, clean, counterfactual, window, layer_starts, max_positions
    )
    rows: list[dict] = []
    for job in setup.jobs():
        rows.extend(setup.rows([job], setup.run(model, [job], reuse_prefix=False)))
    return rows


def patching_labels(
    model,
    tokenizer,
    pairs: Iterable[tuple[Prompt, Prompt]],
    *,
    window: int = 1,
    layer_starts: Sequence[int] | None = None,
    batch_size: int = 64,
    max_positions: int | None = None,
) -> list[dict]:
    """Patching label rows for every pair (progress bar over pairs)."""
    pairs = list(pairs)
    rows: list[dict] = []
    for clean, cf in tqdm(pairs, desc="patching labels", unit="pair"):
        rows.extend(
            patching_rows(
                model,
                tokenizer,
                clean,
                cf,
                window=window,
                layer_starts=layer_starts,
                batch_size=batch_size,
                max_positions=max_positions,
            )
        )
    return rows


# --------------------------------------------------------------------------- examples


def _layers_words(row: dict) -> str:
    if row["layer_start"] == row["layer_end"]:
        return f"layer {row['layer_start']}"
    return f"layers {row['layer_start']} to {row['layer_end']}"


def patching_question(row: dict) -> str:
    """Natural-language question about one patch, in a fixed template. The line that names
    the position and layers comes last, so every question of a pair shares everything before
    it (packed training computes that part once: selfexplain.packing)."""
    return (
        f"Prompt: {json.dumps(row['clean'])}\n"
        f"Counterfactual prompt: {json.dumps(row['counterfactual'])}\n"
        f"The model's next token is {json.dumps(row['orig_token'])}.\n"
        "If one hidden state is replaced by its value from the counterfactual prompt, what is "
        'the model\'s next token? Answer "unchanged" or "changes to" the new token.\n'
        f"Replaced: the hidden state at token {row['position']} ({json.dumps(row['token'])}) "
        f"in {_layers_words(row)}."
    )


def held_out_layers(starts: Iterable[int], test_fraction: float, seed: int) -> set[int]:
    """A seeded choice of round(test_fraction * n) window starts (at least one, and never all
    when there are two or more) for the layer holdout."""
    return held_out(starts, test_fraction, seed, salt="layer")


def pair_groups(rows: Iterable[dict], holdout: str) -> dict[str, str]:
    """Each pair's split group (what the test split holds out whole): "entity", the connected
    component of the pairs linked by a shared subject, clean or counterfactual (a pair without
    subjects, a user pair, is its own); "relation", its relation (else itself); "prompt" and
    "layer", the pair itself."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {list(HOLDOUTS)}, got {holdout!r}")
    by_pair = {r["pair_id"]: r for r in rows}
    if holdout == "entity":
        subjects = {
            p: [s for s in (r.get("subject"), r.get("cf_subject")) if s] for p, r in by_pair.items()
        }
        return linked_groups(subjects)
    if holdout == "relation":
        return {p: str(r.get("relation") or p) for p, r in by_pair.items()}
    return {p: p for p in by_pair}


def held_out_pairs(groups: dict[str, str], holdout: str, test_fraction: float, seed: int) -> set:
    """The held-out pairs: exactly round(test_fraction * pairs) for "prompt", whole groups
    about as many for "entity" and "relation" (schema.held_out_groups)."""
    if holdout == "prompt":
        return held_out(groups, test_fraction, seed)
    chosen = held_out_groups(groups, test_fraction, seed)
    return {p for p, g in groups.items() if g in chosen}


def patching_examples(
    rows: Iterable[dict],
    target: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    holdout: str = "entity",
) -> list[ExplainerExample]:
    """Explainer examples from label rows, split train/test by whole groups of pairs (holdout:
    pair_groups) or by whole window starts ("layer"). Each row's meta gets its pair's group as
    "split_group" (the validation carve-out keeps it too: data.draws)."""
    rows = list(rows)
    groups = pair_groups(rows, holdout)
    test_layers = held_out_layers({r["layer_start"] for r in rows}, test_fraction, seed)
    held = held_out_pairs(groups, holdout, test_fraction, seed) if holdout != "layer" else set()
    out = []
    for row in rows:
        if holdout == "layer":
            split = "test" if row["layer_start"] in test_layers else "train"
        else:
            split = "test" if row["pair_id"] in held else "train"
        example_id = (
            f"patching/{target}/{row['pair_id']}/w{row['window']}"
            f"/l{row['layer_start']}/t{row['position']}"
        )
        question = patching_question(row)
        out.append(change_example(example_id, row, question, split, groups[row["pair_id"]]))
    return out


def label(
    model,
    tokenizer,
    pairs: Sequence[tuple[Prompt, Prompt]],
    target: str,
    *,
    window: int = 1,
    layer_stride: int | None = None,
    max_pairs: int | None = None,
    max_positions: int | None = None,
    batch_size: int = 64,
    test_fraction: float = 0.2,
    holdout: str = "entity",
    source: str = "pairs",
    advice: str | None = None,
) -> pl.DataFrame:
    """The patching labelling recipe (rule label_patching and ``selfexplain labels patching``):
    keep the usable pairs (equal length, different outputs; the first max_pairs), patch every
    layer window (``window`` layers, capped at the target's depth; starts every
    ``layer_stride``) at every position, then explainer examples (split by holdout:
    pair_groups, or layer windows) as a frame of the shared schema. ``source`` names the pairs
    (and ``advice`` says what to change) in the error raised when no pair is usable."""
    pair_groups([], holdout)  # refuse an unknown holdout before any forward
    kept = filter_pairs(model, tokenizer, pairs)[:max_pairs]
    print(f"{len(kept)} of {len(pairs)} pairs kept (equal length, different outputs)")
    if not kept:
        raise ValueError(
            f"{source}: 0 of {len(pairs)} pairs kept: a pair needs a clean and a "
            "counterfactual prompt of equal token length on which the target's next "
            "tokens differ" + (f"; {advice}" if advice else "")
        )
    n_layers = len(decoder_layers(model))
    window = min(window, n_layers)
    starts = window_starts(n_layers, window, layer_stride)
    rows = patching_labels(
        model,
        tokenizer,
        kept,
        window=window,
        layer_starts=starts,
        batch_size=batch_size,
        max_positions=max_positions,
    )
    print(f"{len(rows)} labels: window {window}, layer starts {starts}")
    examples = patching_examples(rows, target, test_fraction=test_fraction, holdout=holdout)
    n_test = len({e.meta["pair_id"] for e in examples if e.split == "test"})
    print(f"test split ({holdout} holdout): {n_test} of {len(kept)} pairs")
    return to_frame(examples)


def surface_features(meta: dict) -> dict[str, str]:
    """Features of a patching row that a non-LM baseline may use: only what the question states
    or what follows from its text (never the label: changed, new token, probabilities, the
    counterfactual's output). position_kind, end_distance (bucketed; 1 = the last token;
    "unknown" without n_tokens), layer_start, is_last ("yes"/"no"/"unknown") and token_class
    of the patched token."""
    n_tokens = meta.get("n_tokens")
    if n_tokens is None:
        distance, last = "unknown", "unknown"
    else:
        distance = end_distance_bucket(n_tokens - meta["position"])
        last = "yes" if meta["position"] == n_tokens - 1 else "no"
    return {
        "position_kind": str(meta["position_kind"]),
        "end_distance": distance,
        "layer_start": str(meta["layer_start"]),
        "is_last": last,
        "token_class": token_class(str(meta["token"])),
    }


def heatmap_rows(test: pl.DataFrame, n_pairs: int) -> pl.DataFrame:
    """Every test example of the first n_pairs test pairs (by pair id): a full layer x position
    grid per pair, for causal heatmaps."""
    pair_ids = [m["pair_id"] for m in meta(test)]
    keep = set(sorted(set(pair_ids))[:n_pairs])
    return test.filter(pl.Series([p in keep for p in pair_ids]))
