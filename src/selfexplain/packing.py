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

from selfexplain.forward import logits_at

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


def plan_batches(packs: Sequence[Sequence[int]], batch_size: int) -> list[list[list[int]]]:
    """Packs (lists of row indices, in their random order) cut into batches of exactly
    ``batch_size`` rows (the last may hold fewer): a pack that does not fit in what is left of
    a batch is split, its first rows finishing the batch and the rest starting the next. So a
    packed run takes exactly the optimizer steps of an unpacked one, each on as many
    questions."""
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    room = batch_size
    for p in packs:
        p = list(p)
        while p:
            take, p = p[:room], p[room:]
            current.append(take)
            room -= len(take)
            if room == 0:
                batches.append(current)
                current, room = [], batch_size
    if current:
        batches.append(current)
    return batches


def packed_batches(rows: Sequence[dict], max_questions: int, batch_size: int, seed: int):
    """Training items for PackCollator: one ``{"packs": [...]}`` per batch (plan_packs, then
    plan_batches), and the packs' total token count."""
    items, tokens = [], 0
    for batch in plan_batches(plan_packs(rows, max_questions, seed), batch_size):
        packs = [pack([rows[i] for i in idx]) for idx in batch]
        tokens += sum(len(p["input_ids"]) for p in packs)
        items.append({"packs": packs, "n_rows": sum(len(idx) for idx in batch)})
    return items, tokens


def block_mask(segments: torch.Tensor, packs: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask (batch, 1, length, length) of rows of packed sequences:
    ``packs`` (batch, length) numbers the pack each token belongs to (-1: padding),
    ``segments`` its question within the row (0: its pack's shared tokens). Causal; a token
    sees only tokens of its own pack, and of those the shared ones and its own question's; a
    padding token sees only itself."""
    length = segments.shape[-1]
    sq, sk = segments[:, :, None], segments[:, None, :]
    pq, pk = packs[:, :, None], packs[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (pq == pk) & (pq >= 0) & ((sk == SHARED) | (sk == sq))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    return allowed[:, None]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive float mask attention implementations take (0 where
    attended, the dtype's most negative value elsewhere: finite, so no row becomes NaN)."""
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)


def fill_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of sequences laid end to end into rows of at most ``budget`` tokens (or the
    longest sequence, if longer): first fit, longest first. Fewer, fuller rows than one row
    per sequence: no padding spent on packs of different lengths."""
    budget = max(budget, max(lengths, default=0))
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, u in enumerate(used):
            if u + lengths[i] <= budget:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


class PackCollator:
    """Lay a batch of packs end to end into rows of at most ``row_tokens`` tokens (fill_rows),
    right-pad the rows, and give input_ids, labels, position_ids (restarting in every pack) and
    a boolean 4-D block attention mask (answer_loss makes it the model's additive mask).
    Items made by packed_batches (``{"packs": [...]}``) contribute all their packs."""

    def __init__(self, pad_id: int, row_tokens: int = 512):
        self.pad_id = pad_id
        self.row_tokens = row_tokens

    def collate(self, batch: list[dict]) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
        """(the tensors, the (row, position) of every question's last token, in pack order
        then question order)."""
        packs = [p for item in batch for p in item.get("packs", [item])]
        layout = fill_rows([len(p["input_ids"]) for p in packs], self.row_tokens)
        keys = {"input_ids": self.pad_id, "labels": IGNORE, "position_ids": 0}
        keys = {k: v for k, v in keys.items() if k in packs[0]}
        rows = [{k: [] for k in [*keys, "segments", "packs"]} for _ in layout]
        where: dict[int, tuple[int, int, int]] = {}  # pack -> (row, offset, first segment)
        for r, members in enumerate(layout):
            row = rows[r]
            for j, i in enumerate(members):
                p = packs[i]
                first = max(row["segments"], default=0)
                where[i] = (r, len(row["input_ids"]), first)
                for k in keys:
                    row[k] += p[k]
                row["segments"] += [s + first if s != SHARED else SHARED for s in p["segments"]]
                row["packs"] += [j] * len(p["input_ids"])
        width = max(len(row["input_ids"]) for row in rows)
        fills = keys | {"segments": -1, "packs": -1}
        out = {
            k: torch.tensor([row[k] + [fill] * (width - len(row[k])) for row in rows])
            for k, fill in fills.items()
        }
        out["attention_mask"] = block_mask(out.pop("segments"), out.pop("packs"))
        ends = [(where[i][0], where[i][1] + e) for i, p in enumerate(packs) for e in p["ends"]]
        return out, ends

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        return self.collate(batch)[0]


def window_of(config) -> tuple[int | None, bool]:
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
    window, mixed = window_of(model.config)
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

    rows = [{"input_ids": list(s)} for s in seqs]
    plan = plan_packs(rows, max_questions, seed=0)
    device = next(model.parameters()).device
    collate = PackCollator(pad_id).collate
    out = torch.empty(len(rows), 0)
    from tqdm.auto import tqdm

    starts = range(0, len(plan), batch_size)
    for start in tqdm(starts, desc="teacher-forced (packed)", unit="batch", disable=not progress):
        chunk = plan[start : start + batch_size]
        batch, ends = collate([pack([rows[i] for i in idx]) for idx in chunk])
        keep = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
        for r, e in ends:
            keep[r, e] = True
        inputs = model_inputs({k: v.to(device) for k, v in batch.items()}, model)
        with logits_at(model, keep.to(device)):
            logits = model(**inputs).logits
        logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1).cpu()
        if out.shape[1] == 0:
            out = torch.empty(len(rows), logp.shape[-1])
        # logits_at returns rows in (row, position) order; ends are in pack, question order
        rank = {pos: n for n, pos in enumerate(sorted(ends))}
        questions = [i for idx in chunk for i in idx]
        out[torch.tensor(questions)] = logp[torch.tensor([rank[pos] for pos in ends])]
    return out
