"""Token identity check: examples from input embeddings, scoring, and the end-to-end run."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from selfexplain.core.formats import PLACEHOLDER
from selfexplain.core.schema import SCHEMA, meta
from selfexplain.core.settings import TrainConfig
from selfexplain.features.injection import Injector
from selfexplain.models import load, resolve
from selfexplain.token_identity import (
    IDENTITY_PROMPT,
    generate_raw,
    paired_hits,
    run_token_identity,
    score_token_identity,
    token_identity_examples,
)
from selfexplain.train.encode import encode_example


def test_examples_disjoint_and_vectors_are_embedding_rows(tiny_llama):
    model, tok = tiny_llama
    df = token_identity_examples(model, tok, n_train=20, n_test=10, seed=3, target="llama")
    assert dict(df.schema) == SCHEMA
    assert df["split"].value_counts().sort("split").rows() == [("test", 10), ("train", 20)]
    assert set(df["task"]) == {"token_identity"} and set(df["target"]) == {"llama"}
    assert all(PLACEHOLDER in q for q in df["question"])
    words = {
        s: {a.lower() for a in df.filter(df["split"] == s)["answer"]} for s in ("train", "test")
    }
    assert len(words["train"]) == 20 and len(words["test"]) == 10
    assert not words["train"] & words["test"]
    emb = model.get_input_embeddings().weight.detach()
    special = set(tok.all_special_ids)
    for answer, vector, m in zip(df["answer"], df["vector"], meta(df), strict=True):
        token_id = m["token_id"]
        assert token_id not in special
        assert tok.decode([token_id]) == answer  # the token's own text, leading space kept
        assert len(answer.strip()) >= 3 and answer.strip().isalpha()
        assert torch.equal(torch.tensor(vector, dtype=torch.float32), emb[token_id].float())
    # seeded: the same seed gives the same words, another seed another choice
    again = token_identity_examples(model, tok, n_train=20, n_test=10, seed=3, target="llama")
    assert again.equals(df)
    other = token_identity_examples(model, tok, n_train=20, n_test=10, seed=4, target="llama")
    assert other["answer"].to_list() != df["answer"].to_list()


def test_the_answer_is_the_injected_token_itself(tiny_llama):
    """The question ends with the answer cue, so the trained answer is the injected token's own
    id (then EOS), not the word spelt out in other tokens (" house" vs "house")."""
    model, tok = tiny_llama
    df = token_identity_examples(model, tok, n_train=20, n_test=10, seed=3)
    assert any(a.startswith(" ") for a in df["answer"])  # the case that used to be re-spelt
    for question, answer, m in zip(df["question"], df["answer"], meta(df), strict=True):
        enc = encode_example(tok, question, answer, max_length=64)
        assert tok.decode(enc["input_ids"][:-2]).endswith("\nAnswer:")
        assert enc["input_ids"][-2:] == [m["token_id"], tok.eos_token_id]
        assert enc["labels"][-2:] == enc["input_ids"][-2:]


def test_test_words_do_not_depend_on_n_train(tiny_llama):
    """More training words leave the test words as they are, so runs of different sizes can be
    paired word by word."""
    model, tok = tiny_llama

    def words(n_train: int, split: str) -> list[str]:
        df = token_identity_examples(model, tok, n_train=n_train, n_test=10, seed=3)
        return df.filter(pl.col("split") == split)["answer"].to_list()

    assert words(5, "test") == words(30, "test")
    assert set(words(5, "train")) < set(words(30, "train"))


def test_examples_need_enough_words(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="distinct word tokens"):
        token_identity_examples(model, tok, n_train=1000, n_test=200)


def test_injecting_a_token_embedding_equals_writing_the_token(tiny_llama):
    """At layer 0, a space-initial word's own embedding (at its own norm) injected at the
    placeholder gives the logits and continuation of the identity prompt with the word
    written out (and not those of the bare placeholder)."""
    model, tok = tiny_llama
    df = token_identity_examples(model, tok, n_train=30, n_test=10, seed=0)
    rows = [i for i, m in enumerate(meta(df)) if m["token"].startswith(" ")][:3]
    assert rows
    for i in rows:
        word, vector = meta(df)[i]["token"], df["vector"][i].to_list()
        inj = Injector.setup(model, tok, 64, 0, scale=float(torch.tensor(vector).norm()))
        text = IDENTITY_PROMPT.replace(PLACEHOLDER, word.lstrip())
        ids_text = torch.tensor([tok(text)["input_ids"]])
        ids_ph = torch.tensor([tok(inj.render([IDENTITY_PROMPT])[0])["input_ids"]])
        assert ids_text.shape == ids_ph.shape
        with torch.no_grad():
            written = model(input_ids=ids_text).logits
            bare = model(input_ids=ids_ph).logits
            with inj.inject(model, ids_ph, torch.tensor([vector])):
                injected = model(input_ids=ids_ph).logits
        assert torch.allclose(injected, written, atol=1e-5)
        assert not torch.allclose(bare, written, atol=1e-3)
        assert generate_raw(model, tok, [IDENTITY_PROMPT], vectors=[vector], injector=inj) == (
            generate_raw(model, tok, [text])
        )


def test_score_token_identity():
    assert score_token_identity([" Paris", "rome", "cat"], ["paris", "Rome ", "dog"]) == 2 / 3
    assert score_token_identity(["the cat"], ["cat"]) == 0.0
    assert score_token_identity([], []) == 0.0
    with pytest.raises(ValueError):
        score_token_identity(["a"], [])


def test_paired_hits_by_hand():
    """Words 1-2 only the trained explainer names, word 3 only the untrained one, word 4
    neither: diff (2 - 1) / 4; the CI spans the bootstrap draws and holds the difference."""
    answers = ["cat", "dog", "sun", "sea"]
    paired = paired_hits(["cat", "Dog", "x", "y"], ["a", "b", "sun", "z"], answers)
    assert paired["diff"] == 0.25 and paired["n_words"] == 4
    assert -1 <= paired["ci_lo"] < 0.25 < paired["ci_hi"] <= 1
    assert paired_hits(answers, answers, answers) == {
        "diff": 0.0,
        "ci_lo": 0.0,
        "ci_hi": 0.0,
        "n_words": 4,
    }


def test_run_token_identity_across_widths(tmp_path):
    """A tiny Llama target (64-d) explained by a tiny Gemma (48-d): the width map starts from
    the shared-token embeddings and is trained with the adapter; the result JSON has every
    key; validation words keep the best step and leave the test words as they were."""
    target = resolve("tiny-random-llama", tmp_path / "models" / "llama")
    explainer = resolve("tiny-random-gemma", tmp_path / "models" / "gemma")
    cfg = TrainConfig(
        epochs=1, batch_size=4, lr=1e-2, save_steps=1000, logging_steps=1, eval_steps=1
    )
    out = tmp_path / "work"
    result = run_token_identity(
        target,
        explainer,
        out,
        n_train=8,
        n_test=4,
        n_val=4,
        train_cfg=cfg,
        injection={"layer": 0, "scale": None},
        scales=[1.0, 2.0],
        relation="other",
        json_path=tmp_path / "result.json",
        batch_size=4,
    )
    written = json.loads((tmp_path / "result.json").read_text())
    assert written == result
    for key in (
        "target",
        "explainer",
        "relation",
        "n_train",
        "n_test",
        "accuracy",
        "train_accuracy",
        "untrained_by_scale",
        "untrained_question_by_scale",
        "untrained_text_ceiling",
        "samples",
        "errors",
        "steps",
        "train_loss",
        "seconds",
    ):
        assert key in result, key
    assert (result["target"], result["explainer"], result["relation"]) == (
        "llama",
        "gemma",
        "other",
    )
    assert (result["n_train"], result["n_test"], result["n_val"], result["steps"]) == (8, 4, 4, 2)
    # the answer loss on the validation words before training and after each step; the best kept
    assert [v["step"] for v in result["validation"]] == [0, 1, 2]
    trained = [(-v["loss"], v["step"]) for v in result["validation"] if v["step"]]
    assert result["best"]["step"] == max(trained)[1]  # lowest loss after training, ties: later
    model, tok = load(target)
    words = token_identity_examples(model, tok, n_train=8, n_test=4, target="llama")
    test_words = words.filter(pl.col("split") == "test")["answer"].str.strip_chars().to_list()
    assert [s["token"] for s in result["samples"]] == test_words  # as scored: stripped
    assert set(result["untrained_by_scale"]) == {"1.0", "2.0"}
    assert all(0 <= v <= 1 for v in result["untrained_by_scale"].values())
    assert 0 <= result["accuracy"] <= 1 and len(result["samples"]) == 4
    # every held-out word's answers, and the paired difference they give
    per_word = result["per_word"]
    assert [w["token"] for w in per_word] == [s["token"] for s in result["samples"]]
    assert set(per_word[0]) == {"token", "prediction", "untrained_1.0", "untrained_2.0"}
    paired = result["trained_minus_untrained"]
    best = max(result["untrained_by_scale"], key=result["untrained_by_scale"].get)
    assert paired["scale"] == float(best) and paired["n_words"] == 4
    want = result["accuracy"] - result["untrained_by_scale"][best]
    assert paired["diff"] == pytest.approx(want) and paired["ci_lo"] <= want <= paired["ci_hi"]
    spec = json.loads((out / "adapter" / "injection.json").read_text())
    assert (spec["d_in"], spec["d_out"]) == (64, 48)
    # the map started from the shared-token embeddings, fitted without the held-out words
    assert spec["map_init"] == result["injection"]["map_init"]
    assert spec["map_init"].startswith("embeddings (")
    assert not list(tmp_path.glob(".result.json.tmp-*"))
