"""Input-ablation labels: how does the target's next token change when an input token is removed?

Attribution scores come from Captum (``LLMAttribution`` over ``FeatureAblation``) with a
*removal* baseline: an ablated token is deleted from the sequence, not replaced. The score of a
token is ``log p(y0 | prompt) - log p(y0 | prompt without the token)`` for the clean greedy token
``y0``. The top-1 token after each removal comes from one batched forward over all removals.
"Next token" means the greedy token among ordinary (non-special) tokens throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput
from tqdm.auto import tqdm

from selfexplain.examples import ExplainerExample, split_of
from selfexplain.forward import next_token_logprobs
from selfexplain.metrics import change_answer

if TYPE_CHECKING:
    from selfexplain.prompts import Prompt


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


def captum_removal_scores(model, tokenizer, text: str, target_id: int) -> torch.Tensor:
    """Captum FeatureAblation scores (log-prob drop of target_id) for removing each token."""
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


def prompt_ablation_rows(
    model, tokenizer, prompt: Prompt, *, batch_size: int = 32, captum: bool = True
) -> list[dict]:
    """Labels for removing each token (and the hint span, if any) of one prompt."""
    pad_id = tokenizer.pad_token_id
    ids = encode(tokenizer, prompt.text)
    positions = ablatable_positions(tokenizer, ids)
    variants = [ids] + [ids[:p] + ids[p + 1 :] for p in positions]
    hint_ids = None
    if prompt.hint:
        hint_ids = encode(tokenizer, prompt.text.replace(prompt.hint, "", 1))
        variants.append(hint_ids)
    logp = next_token_logprobs(model, variants, pad_id, batch_size=batch_size)
    top1 = greedy_content_tokens(logp, tokenizer)
    y0 = top1[0]
    scores = captum_removal_scores(model, tokenizer, prompt.text, y0) if captum else None
    base = {
        "prompt_id": prompt.id,
        "kind": prompt.kind,
        "prompt": prompt.text,
        "orig_token": _token_str(tokenizer, y0),
        "orig_token_id": y0,
        "logp_orig": float(logp[0, y0]),
    }
    rows = []
    for k, pos in enumerate(positions):
        new_id = top1[k + 1]
        rows.append(
            base
            | {
                "unit": "token",
                "position": k,
                "token_index": pos,
                "removed": _token_str(tokenizer, ids[pos]),
                "changed": new_id != y0,
                "new_token": _token_str(tokenizer, new_id),
                "new_token_id": new_id,
                "logp_ablated": float(logp[k + 1, y0]),
                "captum_score": None if scores is None else float(scores[k]),
            }
        )
    if hint_ids is not None:
        new_id = top1[-1]
        rows.append(
            base
            | {
                "unit": "hint",
                "position": None,
                "token_index": None,
                "removed": prompt.hint,
                "hint_positions": hint_token_positions(tokenizer, prompt.text, prompt.hint),
                "changed": new_id != y0,
                "new_token": _token_str(tokenizer, new_id),
                "new_token_id": new_id,
                "logp_ablated": float(logp[-1, y0]),
                "captum_score": None,
            }
        )
    return rows


def ablation_labels(
    model, tokenizer, prompts: Iterable[Prompt], *, batch_size: int = 32, captum: bool = True
) -> list[dict]:
    """Ablation label rows for every prompt (progress bar over prompts)."""
    prompts = list(prompts)
    rows: list[dict] = []
    for prompt in tqdm(prompts, desc="ablation labels", unit="prompt"):
        rows.extend(
            prompt_ablation_rows(model, tokenizer, prompt, batch_size=batch_size, captum=captum)
        )
    return rows


def ablation_question(row: dict) -> str:
    """Natural-language question about one removal, in a fixed template."""
    if row["unit"] == "hint":
        what = f"the hint {json.dumps(row['removed'])}"
    else:
        what = f"token {row['position']} ({json.dumps(row['removed'])})"
    return (
        f"Prompt: {json.dumps(row['prompt'])}\n"
        f"The model's next token is {json.dumps(row['orig_token'])}.\n"
        f"If {what} is removed from the prompt, what is the model's next token? "
        'Answer "unchanged" or "changes to" the new token.'
    )


def ablation_examples(
    rows: Iterable[dict], target: str, *, test_fraction: float = 0.2, seed: int = 0
) -> list[ExplainerExample]:
    """Explainer examples from label rows, split train/test by prompt."""
    out = []
    for row in rows:
        suffix = "hint" if row["unit"] == "hint" else f"t{row['token_index']}"
        out.append(
            ExplainerExample(
                id=f"ablation/{target}/{row['prompt_id']}/{suffix}",
                task="ablation",
                target=target,
                split=split_of(row["prompt_id"], test_fraction, seed),
                question=ablation_question(row),
                answer=change_answer(row["changed"], row["new_token"]),
                vector=None,
                meta=row,
            )
        )
    return out
