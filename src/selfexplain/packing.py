"""Packed sequences: the questions of one prompt share one forward.

A patching or ablation question repeats its prompt (and counterfactual) before a short line
about one token / layer window, and a prompt has tens of such questions. A *pack* holds the
tokens the questions share once, then each question's own tokens (and answer), each attending
to the shared part and to itself only: a block attention mask (query q sees key k when k <= q
and k is in the shared part or in q's own question) and position ids that continue from the
shared part in every question. Each question's logits, and so its loss and gradients, equal
those of its unpacked sequence (tests/test_packing.py), while the shared tokens are computed
once per pack instead of once per question.

The mask reaches the model as a 4-D additive mask (batch, 1, length, length), which
transformers passes through unchanged to every attention layer (sliding-window ones included:
a pack is shorter than any sliding window of the supported models, so no window applies).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

IGNORE = -100
SHARED = 0  # segment id of the shared tokens; questions are 1, 2, ...; padding is -1


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading tokens two sequences share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _unlabelled(row: dict) -> int:
    """How many leading tokens of an encoded row carry no label (its question)."""
    labels = row.get("labels")
    if labels is None:
        return len(row["input_ids"])
    for i, label in enumerate(labels):
        if label != IGNORE:
            return i
    return len(labels)


def plan_packs(
    rows: Sequence[dict], max_questions: int, seed: int, min_shared: int = 16
) -> list[list[int]]:
    """Group encoded rows into packs of at most ``max_questions`` rows that share a prefix.

    Rows are sorted by their tokens, so rows of one prompt are neighbours; runs of neighbours
    sharing at least ``min_shared`` leading tokens form a group, whose rows are shuffled (by
    ``seed``) and cut into packs. Every pack's shared part stops at least one token before
    the first label of each of its rows, so no answer token is ever predicted from another
    question. Returns the packs as lists of row indices, in a seeded random order.
    """
    if max_questions < 1:
        raise ValueError(f"max_questions must be >= 1, got {max_questions}")
    order = sorted(range(len(rows)), key=lambda i: rows[i]["input_ids"])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            prev = rows[groups[-1][-1]]["input_ids"]
            if common_prefix(prev, rows[i]["input_ids"]) >= min_shared:
                groups[-1].append(i)
                continue
        groups.append([i])
    rng = random.Random(seed)
    packs = []
    for group in groups:
        rng.shuffle(group)
        packs += [group[k : k + max_questions] for k in range(0, len(group), max_questions)]
    rng.shuffle(packs)
    return packs


def shared_length(rows: Sequence[dict]) -> int:
    """Tokens a pack of rows shares: their common prefix, ending before any row's label (and
    before the last token of a row without labels, whose next-token logits are read)."""
    if len(rows) < 2:
        return 0
    n = min(_unlabelled(r) for r in rows) - 1
    first = rows[0]["input_ids"]
    for r in rows[1:]:
        n = min(n, common_prefix(first, r["input_ids"]))
    return max(n, 0)


def pack(rows: Sequence[dict]) -> dict:
    """One packed sequence of encoded rows (``input_ids`` and optionally ``labels``):
    ``input_ids``, ``labels`` (if the rows have them), ``position_ids``, ``segments`` (the
    segment id of every token) and ``ends`` (the index of each row's last token)."""
    s = shared_length(rows)
    first = rows[0]["input_ids"]
    ids, pos, seg, ends = list(first[:s]), list(range(s)), [SHARED] * s, []
    labels = [IGNORE] * s if "labels" in rows[0] else None
    for n, row in enumerate(rows, start=1):
        tail = row["input_ids"][s:]
        ids += tail
        pos += range(s, s + len(tail))
        seg += [n] * len(tail)
        if labels is not None:
            labels += row["labels"][s:]
        ends.append(len(ids) - 1)
    out = {"input_ids": ids, "position_ids": pos, "segments": seg, "ends": ends}
    if labels is not None:
        out["labels"] = labels
    return out


def pack_rows(rows: Sequence[dict], max_questions: int, seed: int) -> list[dict]:
    """Encoded training rows as packs (plan_packs then pack); each pack records ``n_rows``."""
    packs = []
    for idx in plan_packs(rows, max_questions, seed):
        p = pack([rows[i] for i in idx])
        p["n_rows"] = len(idx)
        packs.append(p)
    return packs


def batch_packs(packs: Sequence[dict], batch_size: int) -> list[dict]:
    """Packs grouped into batches of at most ``batch_size`` questions (rows), filled in the
    given (random) order, each batch one item ``{"packs": [...]}`` for PackCollator: a batch
    holds as many questions as an unpacked one, however many questions its packs have, so a
    packed run takes as many optimizer steps as an unpacked one (a pack larger than batch_size
    is a batch of its own)."""
    batches: list[list[dict]] = []
    open_: list[tuple[int, list[dict]]] = []  # (questions, packs) of batches not yet full
    for p in packs:
        for k, (n, members) in enumerate(open_):
            if n + p["n_rows"] <= batch_size:
                members.append(p)
                open_[k] = (n + p["n_rows"], members)
                break
        else:
            open_.append((p["n_rows"], [p]))
        full = [k for k, (n, _) in enumerate(open_) if n >= batch_size]
        for k in reversed(full):
            batches.append(open_.pop(k)[1])
    batches += [members for _, members in open_]
    return [{"packs": b, "n_rows": sum(p["n_rows"] for p in b)} for b in batches]


def block_mask(segments: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask (batch, 1, length, length) of packed sequences whose tokens
    have segment ids ``segments`` (batch, length): causal, and a question's tokens see the
    shared tokens and their own question; a padding token (-1) sees only itself."""
    length = segments.shape[-1]
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & ((k == SHARED) | (k == q)) & (q >= 0) & (k >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    return allowed[:, None]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive float mask attention implementations take (0 where
    attended, the dtype's most negative value elsewhere: finite, so no row becomes NaN)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)


class PackCollator:
    """Right-pad a batch of packs into input_ids, labels, position_ids and a boolean 4-D
    attention mask (answer_loss turns it into the model's additive mask). Items made by
    batch_packs (``{"packs": [...]}``) contribute all their packs."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        batch = [p for item in batch for p in item.get("packs", [item])]
        width = max(len(b["input_ids"]) for b in batch)
        out = {}
        fills = {"input_ids": self.pad_id, "labels": IGNORE, "position_ids": 0, "segments": -1}
        for key, fill in fills.items():
            if key in batch[0]:
                out[key] = torch.tensor([b[key] + [fill] * (width - len(b[key])) for b in batch])
        out["attention_mask"] = block_mask(out.pop("segments"))
        return out


def _window(config) -> tuple[int | None, bool]:
    """(sliding window, whether only some layers use it) of a model config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None) or []
    if not window or (types and "sliding_attention" not in types):
        return None, False
    if not types and getattr(text, "use_sliding_window", True) is False:
        return None, False
    return window, bool(types)


def model_inputs(inputs: dict, model) -> dict:
    """Model inputs with a packed batch's boolean 4-D mask made additive in the model's dtype;
    for a model with sliding-window layers the mask of those layers also drops keys a window
    or more positions back (as position ids count), given per layer type as transformers
    takes it."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.ndim != 4 or mask.dtype != torch.bool:
        return inputs
    dtype = next(model.parameters()).dtype
    window, mixed = _window(model.config)
    if window is None:
        return dict(inputs) | {"attention_mask": additive(mask, dtype)}
    pos = inputs["position_ids"]
    near = (pos[:, None, :, None] - pos[:, None, None, :]) < window
    sliding = additive(mask & near, dtype)
    if not mixed:
        return dict(inputs) | {"attention_mask": sliding}
    full = additive(mask, dtype)
    return dict(inputs) | {"attention_mask": {"full_attention": full, "sliding_attention": sliding}}


@torch.no_grad()
def last_logprobs(
    model,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    max_questions: int,
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """Next-token log-probabilities (n, vocab) after each sequence, with the sequences packed
    by shared prefix (at most max_questions per pack, batch_size packs per forward): the same
    values as one forward per sequence, computing each shared prefix once. float32 on the CPU,
    in the input order."""
    from selfexplain.train import logits_at

    rows = [{"input_ids": list(s)} for s in seqs]
    plan = plan_packs(rows, max_questions, seed=0)
    device = next(model.parameters()).device
    collate = PackCollator(pad_id)
    out = torch.empty(len(rows), 0)
    from tqdm.auto import tqdm

    starts = range(0, len(plan), batch_size)
    for start in tqdm(starts, desc="teacher-forced (packed)", unit="batch", disable=not progress):
        chunk = plan[start : start + batch_size]
        packs = [pack([rows[i] for i in idx]) for idx in chunk]
        batch = collate(packs)
        keep = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
        for b, p in enumerate(packs):
            keep[b, p["ends"]] = True
        inputs = model_inputs({k: v.to(device) for k, v in batch.items()}, model)
        with logits_at(model, keep.to(device)):
            logits = model(**inputs).logits
        logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1).cpu()
        if out.shape[1] == 0:
            out = torch.empty(len(rows), logp.shape[-1])
        out[torch.tensor([i for idx in chunk for i in idx])] = logp  # pack, then question order
    return out
