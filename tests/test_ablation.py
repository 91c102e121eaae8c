import pytest
import torch

from selfexplain.core.formats import parse_change
from selfexplain.forward import next_token_logprobs, pad_left
from selfexplain.prompts import Prompt
from selfexplain.tasks.ablation import (
    RemovalForward,
    ablation_examples,
    ablation_labels,
    encode,
    hint_token_positions,
    llm_attribution_scores,
    prompt_ablation_rows,
    removal_scores,
)


def _logp_next(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits, -1)


def _greedy(model, tok, ids):
    """Greedy next token among non-special tokens, by a plain single forward."""
    logp = _logp_next(model, ids)
    logp[tok.all_special_ids] = float("-inf")
    return int(logp.argmax())


def test_padded_batch_equals_single_forwards(tiny_llama):
    model, tok = tiny_llama
    seqs = [encode(tok, t) for t in ["The capital of France is", "3 + 4 =", "Hello"]]
    batched = next_token_logprobs(model, seqs, tok.pad_token_id)
    for row, ids in zip(batched, seqs, strict=True):
        torch.testing.assert_close(row, _logp_next(model, ids), atol=1e-5, rtol=0)


def test_pad_left_layout():
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_tokens_the_output_ignores_leave_it_unchanged(last_token_llama):
    model, tok = last_token_llama
    prompt = Prompt(id="p0", kind="custom", text="The capital of France is")
    rows = prompt_ablation_rows(model, tok, prompt)
    ids = encode(tok, prompt.text)
    assert len(rows) == len(ids)
    for row in rows[:-1]:  # every token but the last: the output cannot depend on it
        assert row["changed"] is False
        assert row["new_token_id"] == row["orig_token_id"]
        assert row["captum_score"] == pytest.approx(0.0, abs=1e-5)
    last = rows[-1]
    # Removing the last token makes the previous token the last one: its prediction is the output.
    expected = _greedy(model, tok, ids[:-1])
    assert last["new_token_id"] == expected
    assert last["changed"] == (expected != last["orig_token_id"])


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_captum_scores_equal_hand_computed_logprob_difference(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    text = "People in Brazil speak"
    ids = encode(tok, text)
    y0 = _greedy(model, tok, ids)
    reference = llm_attribution_scores(model, tok, text, y0)  # Captum's one-forward-per-token
    forward = RemovalForward(model, ids, list(range(len(ids))))
    batched = removal_scores(forward, y0, batch_size=4)  # Captum over batched removals
    assert reference.shape == batched.shape == (len(ids),)
    for i in range(len(ids)):
        ablated = ids[:i] + ids[i + 1 :]
        hand = float(_logp_next(model, ids)[y0] - _logp_next(model, ablated)[y0])
        assert float(reference[i]) == pytest.approx(hand, abs=1e-5)
        assert float(batched[i]) == pytest.approx(hand, abs=1e-5)


def test_engines_give_identical_labels(tiny_llama):
    model, tok = tiny_llama
    prompt = Prompt(id="p", kind="custom", text="The keys to the cabinet", hint="to the")
    a = prompt_ablation_rows(model, tok, prompt, engine="feature_ablation", batch_size=3)
    b = prompt_ablation_rows(model, tok, prompt, engine="llm_attribution")
    assert [r["new_token_id"] for r in a] == [r["new_token_id"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        if ra["captum_score"] is not None:
            assert ra["captum_score"] == pytest.approx(rb["captum_score"], abs=1e-5)
    with pytest.raises(ValueError, match="unknown ablation engine"):
        prompt_ablation_rows(model, tok, prompt, engine="magic")


def test_rows_agree_with_captum_and_batched_logprobs(tiny_gemma):
    model, tok = tiny_gemma
    prompt = Prompt(id="p1", kind="custom", text="Two plus three equals")
    for row in prompt_ablation_rows(model, tok, prompt):
        assert row["captum_score"] == pytest.approx(
            row["logp_orig"] - row["logp_ablated"], abs=1e-4
        )


def test_hint_span_label_uses_prompt_without_hint(tiny_llama):
    model, tok = tiny_llama
    hint = "Hint: the answer is C. "
    text = f"Question: 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\n{hint}Answer:"
    prompt = Prompt(id="h0", kind="hint_mcq", text=text, hint=hint)
    rows = prompt_ablation_rows(model, tok, prompt)
    hint_row = rows[-1]
    assert hint_row["unit"] == "hint"
    expected = _greedy(model, tok, encode(tok, text.replace(hint, "")))
    assert hint_row["new_token_id"] == expected
    positions = hint_row["hint_positions"]
    covered = tok.decode([encode(tok, text)[i] for i in positions])
    assert hint.strip() in covered


def test_hint_token_positions_cover_span(tiny_llama):
    _, tok = tiny_llama
    text = "Q? Hint: pick B. Answer:"
    pos = hint_token_positions(tok, text, "Hint: pick B.")
    assert pos == sorted(pos) and len(pos) >= 3


def test_examples_split_by_prompt_and_answers_parse(tiny_llama):
    model, tok = tiny_llama
    prompts = [
        Prompt(id=f"p{i}", kind="custom", text=f"Number {i} comes before") for i in range(12)
    ]
    rows = ablation_labels(model, tok, prompts)
    examples = ablation_examples(rows, "tiny", test_fraction=0.3, seed=0)
    split_by_prompt = {}
    for ex in examples:
        split_by_prompt.setdefault(ex.meta["prompt_id"], set()).add(ex.split)
        parsed = parse_change(ex.answer)
        assert parsed.valid and parsed.changed == ex.meta["changed"]
        if parsed.changed:
            assert parsed.new_token == ex.meta["new_token"]
    assert all(len(s) == 1 for s in split_by_prompt.values())
    assert {"train", "test"} == set().union(*split_by_prompt.values())


def test_captum_scores_when_target_is_partial_utf8_byte(tiny_llama):
    model, tok = tiny_llama
    text = "The capital of France is"
    ids = encode(tok, text)
    byte_token = next(i for i in range(len(tok)) if tok.decode([i]).strip() == "\ufffd")
    scores = llm_attribution_scores(model, tok, text, byte_token)
    hand = float(_logp_next(model, ids)[byte_token] - _logp_next(model, ids[1:])[byte_token])
    assert float(scores[0]) == pytest.approx(hand, abs=1e-5)
