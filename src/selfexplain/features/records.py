"""What is known about each SAE latent (:class:`FeatureRecord`), the record type the describers,
the feature metrics and the feature label maker share.

:func:`feature_records` finds each live latent's top-activating contexts, its most frequent top
tokens and its output-logit effect (decoder row through the final norm's weight and the
unembedding); :func:`records_frame` / :func:`records_from_frame` store them as a table
(``descriptions.parquet``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import polars as pl
import torch
from tqdm.auto import tqdm

from selfexplain.features.activations import token_mask


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


def example_snippet(example: dict) -> str:
    """A top-activating context as text: left context, the token, a little right context."""
    return (example["left"] + example["token"] + example["right"]).strip()
