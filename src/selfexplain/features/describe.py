"""Feature describers: turn a latent's top-activating contexts into a short description.

- ``deterministic`` (default, offline, no model): a template from the most frequent top tokens,
  the word that most often precedes them and the tokens the latent's decoder direction promotes
  through the unembedding.
- ``hf``: a local Hugging Face causal LM (a directory) prompted with the examples.
- ``openai``: an OpenAI-compatible ``/chat/completions`` endpoint at ``base_url``, with the key
  read from the environment variable ``api_key_env`` (sent only when set). Never required.

The two model-backed kinds share one interface (:class:`TextGenerator`), which the optional LM
judge (:func:`judge_scores`) uses too.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from selfexplain.core.settings import GeneratorSettings
from selfexplain.features.records import FeatureRecord
from selfexplain.forward import pad_left
from selfexplain.models import load

KINDS = ("deterministic", "hf", "openai")


_WHITESPACE = {" ": "space", "\n": "newline", "\t": "tab"}


def _clean(token: str) -> str:
    """A token as it appears in a description: stripped; whitespace-only tokens named."""
    return token.strip() or _WHITESPACE.get(token[:1], "space")


def _quoted(items: Sequence[str]) -> str:
    items = [json.dumps(i, ensure_ascii=False) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _distinct(tokens: Sequence[str], n: int) -> list[str]:
    out: list[str] = []
    for t in tokens:
        c = _clean(t)
        if "\ufffd" in c or not c.isprintable():  # partial UTF-8 bytes, control characters
            continue
        if c.lower() not in (o.lower() for o in out):
            out.append(c)
        if len(out) == n:
            break
    return out


def deterministic_description(record: FeatureRecord, n_tokens: int = 3, n_promoted: int = 2) -> str:
    """The template description of a record (a pure function of it)."""
    parts = []
    tokens = _distinct(record.top_tokens, n_tokens)
    if tokens:
        parts.append(f"the token{'s' if len(tokens) > 1 else ''} {_quoted(tokens)}")
    before = Counter(
        ex["left"].split()[-1] for ex in record.examples if ex["left"].split()
    ).most_common(1)
    if before and before[0][1] >= max(2, len(record.examples) / 3):
        parts.append(f'after "{before[0][0]}"')
    text = " ".join(parts) or "no clear tokens"
    promoted = [p for p in _distinct(record.promoted, n_promoted + 2) if p][:n_promoted]
    if promoted:
        text += f"; promotes {_quoted(promoted)}"
    return text


def describer_prompt(record: FeatureRecord, n_examples: int = 6) -> str:
    """The prompt an LM describer (or a human) sees for one record."""
    lines = [
        "These are text snippets where one feature of a language model is most active; the "
        "token where it fires is marked with << >>.",
    ]
    for i, ex in enumerate(record.examples[:n_examples], start=1):
        lines.append(f"{i}. {ex['left']}<<{ex['token']}>>{ex['right']}".replace("\n", " "))
    if record.promoted:
        lines.append("Tokens it makes more likely next: " + ", ".join(map(repr, record.promoted)))
    lines.append(
        "Describe in one short phrase (at most 12 words) what the feature responds to. "
        "Reply with the phrase only."
    )
    return "\n".join(lines)


def judge_prompt(prediction: str, reference: str) -> str:
    """The LM judge's question: how close in meaning are two feature descriptions (1-5)."""
    return (
        "Two descriptions of the same language-model feature.\n"
        f"Reference: {reference}\nCandidate: {prediction}\n"
        "How well does the candidate match the reference in meaning, from 1 (unrelated) to 5 "
        "(same meaning)? Reply with one digit."
    )


class TextGenerator(Protocol):
    """Anything that completes prompts (one short reply each)."""

    def complete(self, prompts: Sequence[str]) -> list[str]: ...


class LocalLM:
    """A local HF causal LM (directory), greedy, chat template when the tokenizer has one."""

    def __init__(self, path: str | Path, max_new_tokens: int = 32, batch_size: int = 8):

        self.model, self.tokenizer = load(path)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def complete(self, prompts: Sequence[str]) -> list[str]:
        import torch

        tok = self.tokenizer
        out = []
        for start in range(0, len(prompts), self.batch_size):
            seqs = []
            for p in prompts[start : start + self.batch_size]:
                if tok.chat_template:
                    msgs = [{"role": "user", "content": p}]
                    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                    ids = tok(text, add_special_tokens=False)["input_ids"]
                else:
                    ids = tok(p + "\n")["input_ids"]
                seqs.append(ids)
            ids, mask = pad_left(seqs, tok.pad_token_id)
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            for row in gen[:, ids.shape[1] :].tolist():
                text = tok.decode(row, skip_special_tokens=True).strip()
                out.append(text.split("\n")[0].strip())
        return out


class OpenAIEndpoint:
    """An OpenAI-compatible chat-completions endpoint (urllib; no SDK needed)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_new_tokens: int = 32,
        timeout: float = 60.0,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key = os.environ.get(api_key_env) if api_key_env else None
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout

    def complete(self, prompts: Sequence[str]) -> list[str]:
        out = []
        for prompt in prompts:
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_new_tokens,
                "temperature": 0,
            }
            headers = {"Content-Type": "application/json"}
            if self.key:
                headers["Authorization"] = f"Bearer {self.key}"
            req = urllib.request.Request(
                self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
            )
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode())
            try:
                text = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{self.url}: unexpected reply {str(reply)[:200]}") from err
            out.append(text.strip().split("\n")[0].strip())
        return out


def make_generator(settings: GeneratorSettings | dict | None) -> TextGenerator | None:
    """The generator named by a describer/judge setting (a dict: the describer's defaults for
    the keys it leaves out); None for kind "deterministic"/null."""
    if not settings:
        return None
    settings = GeneratorSettings.of(settings)
    kind = settings.kind
    if kind == "deterministic":
        return None
    if kind == "hf":
        if not settings.model:
            raise ValueError("describer kind 'hf' needs 'model' (a model directory)")
        return LocalLM(settings.model, max_new_tokens=settings.max_new_tokens)
    if kind == "openai":
        if not settings.base_url or not settings.model:
            raise ValueError("describer kind 'openai' needs 'base_url' and 'model'")
        return OpenAIEndpoint(
            settings.base_url, settings.model, settings.api_key_env, settings.max_new_tokens
        )
    raise ValueError(f"unknown describer kind {kind!r}; allowed: {list(KINDS)}")


def describe_records(
    records: Sequence[FeatureRecord], settings: GeneratorSettings | dict | None = None
) -> list[str]:
    """One description per record with the configured describer (deterministic by default)."""
    generator = make_generator(settings)
    if generator is None:
        return [deterministic_description(r) for r in records]
    replies = generator.complete([describer_prompt(r) for r in records])
    # an empty reply falls back on the template, so every feature has a description
    return [
        reply or deterministic_description(r) for reply, r in zip(replies, records, strict=True)
    ]


_DIGIT = re.compile(r"[1-5]")


def judge_scores(
    generator: TextGenerator, predictions: Sequence[str], references: Sequence[str]
) -> list[float | None]:
    """LM-judge score in [0, 1] per pair ((digit - 1) / 4); None when the reply has no digit."""
    replies = generator.complete(
        [judge_prompt(p, r) for p, r in zip(predictions, references, strict=True)]
    )
    out: list[float | None] = []
    for reply in replies:
        m = _DIGIT.search(reply)
        out.append((int(m.group()) - 1) / 4 if m else None)
    return out
