"""Input-ablation labels: how does the target's next token change when an input token is removed?

Attribution scores come from Captum's ``FeatureAblation`` with a *removal* baseline: an
ablated token is deleted from the sequence, not replaced. The score of a token is
``log p(y0 | prompt) - log p(y0 | prompt without the token)`` for the clean greedy token ``y0``.
By default Captum drives a batched removal forward (``perturbations_per_eval`` removals per
forward) whose rows also give the top-1 token after each removal; Captum's ``LLMAttribution``
(one forward per token) is the reference engine and gives the same scores.
"Next token" means the greedy token among ordinary (non-special) tokens throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput
from tqdm.auto import tqdm

from selfexplain.core.schema import ExplainerExample, change_example, split_of, to_frame
from selfexplain.forward import PrefixCache, next_token_logprobs, prefix_chunks
from selfexplain.prompts import TEXT_WORDS, Prompt

if TYPE_CHECKING:
    import polars as pl


ENGINES = ("feature_ablation", "llm_attribution")
# the test split holds out whole facts (fact_key; prompts without one by prompt) or prompts
HOLDOUTS = ("fact", "prompt")


class TokenRemovalInput(TextTokenInput):
    """Captum text input whose ablation baseline is removal of the token from the sequence."""

    def to_model_input(self, perturbed_tensor: torch.Tensor | None = None) -> torch.Tensor:
        if perturbed_tensor is None:
            return self.inp_tensor
        if perturbed_tensor.size(0) != 1:
            raise ValueError("TokenRemovalInput supports one perturbation per forward")
        keep = torch.ones(self.inp_tensor.size(1), dtype=torch.bool)
        itp_positions = (
            torch.arange(keep.numel())
            if self.itp_mask is None
            else self.itp_mask[0].nonzero().flatten()
        )
        keep[itp_positions[perturbed_tensor[0].cpu() != 1]] = False
        return self.inp_tensor[:, keep.to(self.inp_tensor.device)]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt as the target sees it (with the tokenizer's special tokens)."""
    return tokenizer(text)["input_ids"]


def ablatable_positions(tokenizer, ids: Sequence[int]) -> list[int]:
    """Positions of ordinary tokens (special tokens such as BOS are never removed)."""
    special = set(tokenizer.all_special_ids)
    return [i for i, t in enumerate(ids) if t not in special]


def llm_attribution_scores(model, tokenizer, text: str, target_id: int) -> torch.Tensor:
    """Captum ``LLMAttribution(FeatureAblation)`` scores (log-prob drop of target_id) for
    removing each ordinary token: Captum's default path, one forward per token."""
    special = sorted(set(tokenizer.all_special_ids) & set(encode(tokenizer, text)))
    inp = TokenRemovalInput(text, tokenizer, skip_tokens=special or None)
    attr = LLMAttribution(FeatureAblation(model), tokenizer, attr_target="log_prob")
    target = torch.tensor([target_id])
    with torch.no_grad():
        try:
            result = attr.attribute(
                inp, target=target, forward_in_tokens=False, use_cached_outputs=False
            )
            return result.seq_attr.detach().float().cpu()
        except IndexError:
            # Captum's pretty-printing of the output token (after the attribution is computed)
            # fails on a lone partial-UTF-8 byte token; run the same FeatureAblation call directly.
            raw = attr.attr_method.attribute(
                inp.to_tensor(), additional_forward_args=(inp, target, False, None, False)
            )
            return raw.reshape(-1, inp.n_itp_features)[0].detach().float().cpu()


class RemovalForward:
    """Forward function for Captum's FeatureAblation over token presence: a (B, n) mask of the
    ordinary tokens (1 = kept, 0 = removed) gives the next-token log-probs (B, vocab) of the
    prompt with the absent tokens deleted. Every row computed is kept in ``rows`` (keyed by the
    removed indices into positions) so labels reuse it.

    A removal leaves the tokens before it, and so their keys and values, unchanged: each row is
    computed from its first removed position on, over the clean prompt's cached prefix
    (forward.PrefixCache), with rows batched by forward.prefix_chunks.
    """

    def __init__(self, model, ids: Sequence[int], positions: Sequence[int]):
        self.model, self.ids, self.positions = model, list(ids), list(positions)
        self.prefix = PrefixCache(model, self.ids)
        self.rows: dict[tuple[int, ...], torch.Tensor] = {(): self.prefix.logprobs}

    def sequence(self, removed: Sequence[int]) -> list[int]:
        """The prompt ids without the tokens at the given indices into positions."""
        drop = {self.positions[k] for k in removed}
        return [t for i, t in enumerate(self.ids) if i not in drop]

    @torch.no_grad()
    def _compute(self, keys: Sequence[tuple[int, ...]]) -> None:
        by_count: dict[int, list[tuple[int, ...]]] = {}
        for key in keys:  # rows removing as many tokens have suffixes of one length
            by_count.setdefault(len(key), []).append(key)
        for group in by_count.values():
            seqs = [self.sequence(k) for k in group]
            # the first changed position; at least one token must be left to run
            first = [
                min(min(self.positions[i] for i in k), len(s) - 1)
                for k, s in zip(group, seqs, strict=True)
            ]
            for chunk in prefix_chunks(first, max_rows=len(group)):
                start = min(first[r] for r in chunk)
                logits = self.prefix.logits([seqs[r][start:] for r in chunk], start)
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                self.rows.update(zip([group[r] for r in chunk], logp, strict=True))

    def __call__(self, presence: torch.Tensor) -> torch.Tensor:
        keys = [tuple((row == 0).nonzero().flatten().tolist()) for row in presence]
        todo = [k for k in dict.fromkeys(keys) if k not in self.rows]
        if todo:
            self._compute(todo)
        return torch.stack([self.rows[k] for k in keys])


def removal_scores(
    forward: RemovalForward, target_id: int, *, batch_size: int = 32
) -> torch.Tensor:
    """Captum FeatureAblation scores for removing each token, batch_size removals per forward."""
    presence = torch.ones(1, len(forward.positions))
    with torch.no_grad():
        scores = FeatureAblation(forward).attribute(
            presence, baselines=0.0, target=target_id, perturbations_per_eval=batch_size
        )
    return scores[0].float()


def hint_token_positions(tokenizer, text: str, hint: str) -> list[int]:
    """Token positions whose characters overlap the hint substring."""
    start = text.index(hint)
    end = start + len(hint)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]


def greedy_content_tokens(logp: torch.Tensor, tokenizer) -> list[int]:
    """Argmax of each row over ordinary tokens: special tokens (EOS, end-of-turn) never count as
    the output, since an instruct model would otherwise often just end its turn."""
    masked = logp.clone()
    masked[:, sorted(set(tokenizer.all_special_ids))] = float("-inf")
    return masked.argmax(-1).tolist()


def _token_str(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def token_class(token: str) -> str:
    """Coarse class of a token string: "space" (whitespace only), "digit", "punct" (no letter
    or digit), "capitalised" (starts with an upper-case letter) or "word"."""
    core = token.strip()
    if not core:
        return "space"
    if core.isdigit():
        return "digit"
    if not any(c.isalnum() for c in core):
        return "punct"
    return "capitalised" if core[0].isupper() else "word"


def end_distance_bucket(distance: int) -> str:
    """Bucket of a position's distance from the end of the prompt (1 = the last token)."""
    if distance < 1:
        raise ValueError(f"distance from the end counts from 1 (the last token), got {distance}")
    if distance <= 3:
        return str(distance)
    return "4-5" if distance <= 5 else "6+"


def _token_removal_logprobs(
    model, tokenizer, text: str, ids: list[int], positions: list[int], *, batch_size, engine
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """y0, attribution scores, and log-probs: the clean row, then one per removed token."""
    forward = RemovalForward(model, ids, positions)
    full = forward(torch.ones(1, len(positions)))
    y0 = greedy_content_tokens(full, tokenizer)[0]
    if engine == "feature_ablation":
        scores = removal_scores(forward, y0, batch_size=batch_size)
    else:
        scores = llm_attribution_scores(model, tokenizer, text, y0)
        forward(1 - torch.eye(len(positions)))  # removal rows for the top-1 labels
    removed = [forward.rows[(k,)] for k in range(len(positions))]
    return y0, scores, torch.stack([full[0], *removed])


def _hint_removal_logprobs(model, tokenizer, prompt: Prompt) -> torch.Tensor:
    """Next-token log-probs (one row) of the prompt without its hint."""
    hint_ids = encode(tokenizer, prompt.text.replace(prompt.hint, "", 1))
    return next_token_logprobs(model, [hint_ids], tokenizer.pad_token_id)


def _outcome(tokenizer, y0: int, new_id: int, logp_row: torch.Tensor) -> dict:
    """What a removal did: whether the top-1 token changed, the new token, log p(y0)."""
    return {
        "changed": new_id != y0,
        "new_token": _token_str(tokenizer, new_id),
        "new_token_id": new_id,
        "logp_ablated": float(logp_row[y0]),
    }


def _token_rows(tokenizer, base, ids, positions, logp, top1, scores, *, drop_last) -> list[dict]:
    """One row per removed token (the last one left out with drop_last)."""
    y0 = base["orig_token_id"]
    rows = []
    for k, pos in enumerate(positions):
        if drop_last and k == len(positions) - 1:
            continue
        where = {
            "unit": "token",
            "position": k,
            "token_index": pos,
            "removed": _token_str(tokenizer, ids[pos]),
        }
        outcome = _outcome(tokenizer, y0, top1[k + 1], logp[k + 1])
        rows.append(base | where | outcome | {"captum_score": float(scores[k])})
    return rows


def _hint_row(tokenizer, base: dict, prompt: Prompt, logp, top1) -> dict:
    """The row for removing the prompt's hint (the last log-prob row)."""
    where = {
        "unit": "hint",
        "position": None,
        "token_index": None,
        "removed": prompt.hint,
        "hint_positions": hint_token_positions(tokenizer, prompt.text, prompt.hint),
    }
    outcome = _outcome(tokenizer, base["orig_token_id"], top1[-1], logp[-1])
    return base | where | outcome | {"captum_score": None}


def prompt_ablation_rows(
    model,
    tokenizer,
    prompt: Prompt,
    *,
    batch_size: int = 32,
    engine: str = "feature_ablation",
    drop_last: bool = False,
) -> list[dict]:
    """Labels for removing each token (and the hint span, if any) of one prompt.

    engine "feature_ablation": Captum FeatureAblation over a batched removal forward (scores
    and top-1 tokens from the same forwards); "llm_attribution": Captum's LLMAttribution, one
    forward per token, for the scores (top-1 tokens still from the batched forward).
    drop_last: emit no row for removing the prompt's last token (it is still ablated for the
    attribution scores), whose removal changes the output format rather than the computation.
    Every row has n_positions, the number of removable tokens (row "position" counts them)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown ablation engine {engine!r}; use one of {list(ENGINES)}")
    ids = encode(tokenizer, prompt.text)
    positions = ablatable_positions(tokenizer, ids)
    y0, scores, logp = _token_removal_logprobs(
        model, tokenizer, prompt.text, ids, positions, batch_size=batch_size, engine=engine
    )
    if prompt.hint:
        logp = torch.cat([logp, _hint_removal_logprobs(model, tokenizer, prompt)])
    top1 = greedy_content_tokens(logp, tokenizer)
    base = {
        "prompt_id": prompt.id,
        "kind": prompt.kind,
        "fact": fact_key(prompt),
        "prompt": prompt.text,
        "orig_token": _token_str(tokenizer, y0),
        "orig_token_id": y0,
        "logp_orig": float(logp[0, y0]),
        "n_positions": len(positions),
    }
    rows = _token_rows(tokenizer, base, ids, positions, logp, top1, scores, drop_last=drop_last)
    if prompt.hint:
        rows.append(_hint_row(tokenizer, base, prompt, logp, top1))
    return rows


def ablation_labels(
    model,
    tokenizer,
    prompts: Iterable[Prompt],
    *,
    batch_size: int = 32,
    engine: str = "feature_ablation",
    drop_last: bool = False,
) -> list[dict]:
    """Ablation label rows for every prompt (progress bar over prompts); drop_last as in
    prompt_ablation_rows."""
    prompts = list(prompts)
    rows: list[dict] = []
    for prompt in tqdm(prompts, desc="ablation labels", unit="prompt"):
        rows.extend(
            prompt_ablation_rows(
                model,
                tokenizer,
                prompt,
                batch_size=batch_size,
                engine=engine,
                drop_last=drop_last,
            )
        )
    return rows


def _arithmetic_fact(meta: dict) -> str:
    a, b, op = meta["a"], meta["b"], meta["op"]
    if op in ("+", "*"):  # 3 + 4 and four plus three are one fact
        a, b = sorted((a, b))
    return f"arithmetic:{a} {op} {b} = {meta['answer']}"


# kind -> (the meta keys its fact needs, the fact)
_FACTS = {
    "fact": (("relation", "subject"), lambda m: f"fact:{m['relation']}:{m['subject']}"),
    "hint_mcq": (("relation", "subject"), lambda m: f"fact:{m['relation']}:{m['subject']}"),
    "arithmetic": (("op", "a", "b", "answer"), _arithmetic_fact),
    "agreement": (("subject",), lambda m: f"agreement:{m['subject']}"),
    "copying": (("form", "answer"), lambda m: f"copying:{m['form']}:{m['answer']}"),
}


def fact_key(prompt: Prompt) -> str | None:
    """The fact a generated prompt states, the unit the fact holdout keeps on one side of the
    split (prompts.py's generators write the meta it reads):
    fact, hint_mcq: "fact:<relation>:<subject>" (one fact, as a completion or a question);
    arithmetic: "arithmetic:<a> <op> <b> = <answer>" (operands sorted for + and *; one fact in
    digits, words or a question; count: a = the start, b = the step);
    agreement: "agreement:<subject>" (the inflected head noun, which fixes the verb);
    copying: "copying:<form>:<answer>" (the copied word in one layout);
    text: "text:<the first words>" (the start of the sentence every such prefix is cut from).
    None where the meta does not name it (user prompts: they are held out by prompt id)."""
    meta = prompt.meta or {}
    if prompt.kind == "text" and "next_word" in meta:
        return "text:" + " ".join(prompt.text.split()[: TEXT_WORDS[0]])
    keys, fact = _FACTS.get(prompt.kind, ((), None))
    if fact is None or any(meta.get(k) is None for k in keys):
        return None
    return fact(meta)


def split_group(row: dict, holdout: str = "fact") -> str:
    """What an ablation row's split holds out: its prompt's fact (holdout "fact"; its prompt
    when it has none) or its prompt (holdout "prompt")."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"ablation holdout must be one of {list(HOLDOUTS)}, got {holdout!r}")
    if holdout == "fact" and row.get("fact"):
        return str(row["fact"])
    return str(row["prompt_id"])


def ablation_question(row: dict) -> str:
    """Natural-language question about one removal, in a fixed template. The line that names
    the removal comes last, so every question of a prompt shares everything before it (packed
    training computes that part once: selfexplain.packing)."""
    if row["unit"] == "hint":
        what = f"the hint {json.dumps(row['removed'])}"
    else:
        what = f"token {row['position']} ({json.dumps(row['removed'])})"
    return (
        f"Prompt: {json.dumps(row['prompt'])}\n"
        f"The model's next token is {json.dumps(row['orig_token'])}.\n"
        "If one part is removed from the prompt, what is the model's next token? "
        'Answer "unchanged" or "changes to" the new token.\n'
        f"Removed: {what}."
    )


def ablation_examples(
    rows: Iterable[dict],
    target: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    holdout: str = "fact",
) -> list[ExplainerExample]:
    """Explainer examples from label rows, split train/test by fact (holdout "fact": no test
    prompt states a fact of a training prompt) or by prompt; each row's meta gets the unit held
    out as "split_group" (the validation carve-out keeps it too: data.draws)."""
    out = []
    for row in rows:
        suffix = "hint" if row["unit"] == "hint" else f"t{row['token_index']}"
        group = split_group(row, holdout)
        example_id = f"ablation/{target}/{row['prompt_id']}/{suffix}"
        split = split_of(group, test_fraction, seed)
        out.append(change_example(example_id, row, ablation_question(row), split, group))
    return out


def label(
    model,
    tokenizer,
    prompts: Iterable[Prompt],
    target: str,
    *,
    batch_size: int = 32,
    engine: str = "feature_ablation",
    drop_last: bool = False,
    test_fraction: float = 0.2,
    holdout: str = "fact",
) -> pl.DataFrame:
    """The ablation labelling recipe (rule label_ablation and ``selfexplain labels ablation``):
    label rows of every prompt on the target, then explainer examples (split by fact or by
    prompt: holdout) as a frame of the shared schema."""
    prompts = list(prompts)
    split_group({"prompt_id": ""}, holdout)  # refuse an unknown holdout before any forward
    rows = ablation_labels(
        model, tokenizer, prompts, batch_size=batch_size, engine=engine, drop_last=drop_last
    )
    print(f"{len(rows)} labels from {len(prompts)} prompts")
    examples = ablation_examples(rows, target, test_fraction=test_fraction, holdout=holdout)
    return to_frame(examples)


def surface_features(meta: dict) -> dict[str, str]:
    """Features of an ablation row that a non-LM baseline may use: only what the question
    states or what follows from its text (never the label: changed, new token, log-probs).
    kind, unit, end_distance (bucketed; 1 = the last token; "hint" for the hint row, "unknown"
    without n_positions), token_class of the removed token ("hint" for the hint row) and
    removed_is_output (the removed token, stripped, equals the model's next token)."""
    hint = meta["unit"] == "hint"
    if hint:
        distance = "hint"
    elif meta.get("n_positions") is None:
        distance = "unknown"
    else:
        distance = end_distance_bucket(meta["n_positions"] - meta["position"])
    removed, orig = str(meta["removed"]).strip(), str(meta["orig_token"]).strip()
    return {
        "kind": str(meta["kind"]),
        "unit": str(meta["unit"]),
        "end_distance": distance,
        "token_class": "hint" if hint else token_class(str(meta["removed"])),
        "removed_is_output": "yes" if removed and removed == orig else "no",
    }
