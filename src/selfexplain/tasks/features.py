"""Feature-description labels: SAE features of the target's residual stream, each described in
words from its top-activating contexts, become explainer examples whose vector is the
feature's decoder direction.

Pipeline: :func:`token_windows` cuts the corpus into equal-length token windows;
:func:`collect_activations` runs the target on them (batched, stopping after the read layer)
and keeps the residual stream at one layer; an SAE (``selfexplain.sae``) is trained on those
vectors; :func:`feature_records` finds each live latent's top-activating contexts, its most
frequent top tokens and its output-logit effect (decoder row through the final norm's weight
and the unembedding); a describer (``selfexplain.describe``) writes the description;
:func:`feature_examples` turns them into rows of the shared schema, split by held-out feature
or by held-out frequency band.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import polars as pl
import torch
from tqdm.auto import tqdm

from selfexplain.corpus import Document
from selfexplain.examples import ExplainerExample, split_of
from selfexplain.hooks import capture_residual
from selfexplain.models import decoder_layers

PLACEHOLDER = "<vector>"
QUESTION = "At layer {layer}, " + PLACEHOLDER + " encodes"
HOLDOUTS = ("feature", "frequency")


def feature_question(layer: int) -> str:
    """The question about a feature read at ``layer``; PLACEHOLDER marks where its vector goes."""
    return QUESTION.format(layer=layer)


# --------------------------------------------------------------------------- activations


def token_windows(
    tokenizer, docs: Sequence[Document], context_len: int, n_windows: int
) -> torch.Tensor:
    """(n, context_len) token ids: documents tokenised in order, joined by newlines and cut into
    consecutive windows; at most n_windows."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    need = context_len * n_windows
    for doc in docs:
        stream += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + newline
        if len(stream) >= need:
            break
    n = min(n_windows, len(stream) // context_len)
    if n == 0:
        raise ValueError(f"the corpus has fewer than context_len={context_len} tokens")
    return torch.tensor(stream[: n * context_len]).view(n, context_len)


class _Stop(Exception):
    """Raised by a hook after the read layer: the rest of the forward is not needed."""


@torch.no_grad()
def collect_activations(
    model, windows: torch.Tensor, layer: int, batch_size: int = 16
) -> torch.Tensor:
    """Residual stream (output of block ``layer``) on every window: (n, context_len, d)."""
    blocks = decoder_layers(model)

    def stop(module, args, output):
        raise _Stop

    out = []
    device = next(model.parameters()).device
    with capture_residual(model, [layer]) as store:
        handle = blocks[layer].register_forward_hook(stop)  # runs after the capture hook
        try:
            for start in tqdm(range(0, len(windows), batch_size), desc="activations", unit="batch"):
                ids = windows[start : start + batch_size].to(device)
                try:
                    model(input_ids=ids, attention_mask=torch.ones_like(ids))
                except _Stop:
                    pass
                out.append(store[layer].float().cpu())
        finally:
            handle.remove()
    return torch.cat(out)


OUTLIER_FACTOR = 10.0


def token_mask(
    windows: torch.Tensor, acts: torch.Tensor | None = None, skip_first: int = 1
) -> torch.Tensor:
    """Positions used for the SAE and for top contexts: all but the first ``skip_first`` of each
    window (the first position's residual is an outlier in most LMs: an attention sink) and,
    given the activations, all but those whose norm exceeds OUTLIER_FACTOR x the median (a few
    later tokens get sink-sized norms too; left in, they dominate the variance and the FVU)."""
    mask = torch.ones_like(windows, dtype=torch.bool)
    mask[:, :skip_first] = False
    if acts is not None:
        norms = acts.norm(dim=-1)
        mask &= norms <= OUTLIER_FACTOR * norms[mask].median()
    return mask


# --------------------------------------------------------------------------- records


@dataclass
class FeatureRecord:
    """What is known about one SAE latent: the describer's input and the label's meta."""

    feature: int
    frequency: float  # fraction of tokens on which the latent fires
    max_activation: float
    examples: list[dict]  # {"text", "token", "left", "activation"}, strongest first
    top_tokens: list[str]  # most frequent tokens among the top-activating positions
    promoted: list[str]  # tokens whose logits the decoder direction raises most
    suppressed: list[str] = field(default_factory=list)
    description: str = ""


@torch.no_grad()
def latent_stats(
    sae, windows: torch.Tensor, acts: torch.Tensor, batch_windows: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per latent: firing count over the used positions (see token_mask), and per window its
    strongest activation and that position: (n_latents,), (n, n_latents) x 2, n_positions."""
    mask = token_mask(windows, acts)
    counts = torch.zeros(sae.n_latents, dtype=torch.long)
    best, where = [], []
    for s in range(0, len(acts), batch_windows):
        a = acts[s : s + batch_windows]
        z = sae.encode(a.reshape(-1, a.shape[-1])).view(*a.shape[:2], -1)
        z[~mask[s : s + batch_windows]] = 0
        counts += (z > 0).sum((0, 1))
        m = z.max(1)
        best.append(m.values)
        where.append(m.indices)
    return counts, torch.cat(best), torch.cat(where), int(mask.sum())


@torch.no_grad()
def logit_effect(model, directions: torch.Tensor) -> torch.Tensor:
    """Direct effect of residual directions (n, d) on the output logits: unembedding applied to
    the direction scaled by the final norm's weight, shape (n, vocab)."""
    head = model.get_output_embeddings().weight.float()
    norm = getattr(getattr(model, "model", model), "norm", None)
    weight = getattr(norm, "weight", None)
    scaled = directions.float()
    if weight is not None:
        w = weight.float()
        if type(norm).__name__.startswith("Gemma"):  # Gemma RMSNorm multiplies by (1 + w)
            w = 1 + w
        scaled = scaled * w
    return scaled @ head.T


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def feature_records(
    model,
    tokenizer,
    sae,
    windows: torch.Tensor,
    acts: torch.Tensor,
    *,
    n_examples: int = 8,
    min_count: int = 8,
    left_context: int = 12,
    right_context: int = 3,
    n_logit_tokens: int = 5,
) -> list[FeatureRecord]:
    """A record for every live latent (fires on at least min_count tokens): its top
    n_examples contexts (at most one per window), top tokens and logit effect."""
    counts, best, where, total = latent_stats(sae, windows, acts)
    n = len(windows)
    live = [int(f) for f in torch.nonzero(counts >= min_count).flatten()]
    effects = logit_effect(model, sae.W_dec.detach()[live]) if live else None
    records = []
    special = set(tokenizer.all_special_ids)
    for i, f in enumerate(tqdm(live, desc="feature records", unit="latent")):
        vals, rows = best[:, f].topk(min(n_examples, n))
        examples = []
        for val, row in zip(vals.tolist(), rows.tolist(), strict=True):
            if val <= 0:
                break
            pos = int(where[row, f])
            ids = windows[row].tolist()
            examples.append(
                {
                    "window": row,
                    "position": pos,
                    "activation": round(float(val), 4),
                    "token": _decode(tokenizer, [ids[pos]]),
                    "left": _decode(tokenizer, ids[max(0, pos - left_context) : pos]),
                    "right": _decode(tokenizer, ids[pos + 1 : pos + 1 + right_context]),
                }
            )
        tokens = Counter(ex["token"] for ex in examples)
        top_tokens = [t for t, _ in tokens.most_common()]
        n_top = n_logit_tokens + len(special)  # enough candidates after dropping specials
        top = effects[i].topk(n_top).indices.tolist()
        bottom = (-effects[i]).topk(n_top).indices.tolist()
        promoted = [_decode(tokenizer, [t]) for t in top if t not in special][:n_logit_tokens]
        suppressed = [_decode(tokenizer, [t]) for t in bottom if t not in special]
        records.append(
            FeatureRecord(
                feature=f,
                frequency=float(counts[f]) / total,
                max_activation=float(vals[0]),
                examples=examples,
                top_tokens=top_tokens,
                promoted=promoted,
                suppressed=suppressed[:n_logit_tokens],
            )
        )
    return records


def records_frame(records: Sequence[FeatureRecord]) -> pl.DataFrame:
    """Records as a table (examples, tokens and logit effect as JSON strings)."""
    rows = []
    for r in records:
        d = asdict(r)
        for key in ("examples", "top_tokens", "promoted", "suppressed"):
            d[key] = json.dumps(d[key], ensure_ascii=False)
        rows.append(d)
    schema = {
        "feature": pl.Int64,
        "frequency": pl.Float64,
        "max_activation": pl.Float64,
        "examples": pl.String,
        "top_tokens": pl.String,
        "promoted": pl.String,
        "suppressed": pl.String,
        "description": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def records_from_frame(df: pl.DataFrame) -> list[FeatureRecord]:
    """Inverse of records_frame."""
    out = []
    for row in df.iter_rows(named=True):
        for key in ("examples", "top_tokens", "promoted", "suppressed"):
            row[key] = json.loads(row[key])
        out.append(FeatureRecord(**row))
    return out


# --------------------------------------------------------------------------- examples / splits


def frequency_bands(frequencies: Sequence[float], n_bands: int) -> list[int]:
    """Band index (0 = rarest) of each frequency: equal-count quantile bands of log frequency."""
    order = sorted(range(len(frequencies)), key=lambda i: (frequencies[i], i))
    bands = [0] * len(frequencies)
    for rank, i in enumerate(order):
        bands[i] = min(n_bands - 1, rank * n_bands // max(len(order), 1))
    return bands


def held_out_bands(n_bands: int, test_fraction: float, seed: int) -> set[int]:
    """A seeded choice of round(test_fraction * n_bands) bands (at least one, never all)."""
    if n_bands < 2:
        return set()
    k = min(max(1, round(test_fraction * n_bands)), n_bands - 1)
    order = sorted(
        range(n_bands), key=lambda b: hashlib.sha256(f"{seed}:band{b}".encode()).digest()
    )
    return set(order[:k])


def select_features(records: Sequence[FeatureRecord], n: int | None, seed: int = 0):
    """At most n records, a seeded choice (order by hash of the feature id), in feature order."""
    if n is None or len(records) <= n:
        return list(records)
    key = lambda r: hashlib.sha256(f"{seed}:f{r.feature}".encode()).digest()  # noqa: E731
    return sorted(sorted(records, key=key)[:n], key=lambda r: r.feature)


def feature_examples(
    records: Sequence[FeatureRecord],
    decoder: torch.Tensor,
    target: str,
    layer: int,
    *,
    test_fraction: float = 0.2,
    holdout: str = "feature",
    n_bands: int = 5,
    seed: int = 0,
) -> list[ExplainerExample]:
    """One explainer example per described feature; vector = the decoder row (target width).

    holdout="feature": a seeded test_fraction of features is held out; "frequency": whole
    frequency bands (quantiles of firing rate) are held out, so test features are rarer or
    more common than any training feature.
    """
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {list(HOLDOUTS)}, got {holdout!r}")
    bands = frequency_bands([r.frequency for r in records], n_bands)
    test_bands = held_out_bands(n_bands, test_fraction, seed)
    out = []
    for r, band in zip(records, bands, strict=True):
        if holdout == "feature":
            split = split_of(f"feature{r.feature}", test_fraction, seed)
        else:
            split = "test" if band in test_bands else "train"
        meta = {
            "feature": r.feature,
            "layer": layer,
            "frequency": r.frequency,
            "band": band,
            "max_activation": r.max_activation,
            "top_tokens": r.top_tokens,
            "promoted": r.promoted,
            "examples": r.examples,
        }
        out.append(
            ExplainerExample(
                id=f"features/{target}/l{layer}/f{r.feature}",
                task="features",
                target=target,
                split=split,
                question=feature_question(layer),
                answer=r.description,
                vector=[float(v) for v in decoder[r.feature].tolist()],
                meta=meta,
            )
        )
    return out


def example_snippet(example: dict) -> str:
    """A top-activating context as text: left context, the token, a little right context."""
    return (example["left"] + example["token"] + example["right"]).strip()


def default_layer(n_layers: int) -> int:
    """The middle layer (the read layer when features.layer is null)."""
    return max(0, math.ceil(n_layers / 2) - 1)
