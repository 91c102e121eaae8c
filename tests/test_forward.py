"""Reusing a clean prompt's cached prefix: same log-probs as full forwards, sound batching."""

import pytest
import torch

from selfexplain.forward import PrefixCache, prefix_chunks
from selfexplain.tasks.ablation import encode

# 27+ tokens: longer than the tiny Gemma's sliding window (16), so the cache must keep its past
TEXT = (
    "The capital of France is Paris , the capital of Spain is Madrid , and the capital of Peru is"
)


def _full_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_suffix_over_cached_prefix_equals_full_forward(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    ids = encode(tok, TEXT)
    assert len(ids) > 20
    prefix = PrefixCache(model, ids)
    torch.testing.assert_close(
        prefix.logprobs, torch.log_softmax(_full_logits(model, ids), -1), atol=1e-5, rtol=0
    )
    for start in (0, 3, 17, len(ids) - 1):
        # two different continuations of the same prefix in one batch
        tails = [ids[start:], [ids[0]] * (len(ids) - start)]
        with torch.no_grad():
            got = prefix.logits(tails, start)
        for row, tail in zip(got, tails, strict=True):
            torch.testing.assert_close(
                row, _full_logits(model, ids[:start] + tail), atol=1e-4, rtol=1e-4
            )


def test_cache_is_not_changed_by_use(tiny_llama):
    model, tok = tiny_llama
    ids = encode(tok, TEXT)
    prefix = PrefixCache(model, ids)
    with torch.no_grad():
        first = prefix.logits([ids[5:]], 5)
        prefix.logits([ids[2:]] * 3, 2)  # grows its own copy of the cache only
        again = prefix.logits([ids[5:]], 5)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert prefix.expand(0, 4) is None
    with pytest.raises(ValueError, match="prefix length"):
        prefix.expand(len(ids) + 1, 1)


def test_prefix_chunks_cover_rows_once_and_bound_batch_and_waste():
    first = [0, 9, 9, 9, 4, 30, 30, 31, 2, 9, 30, 5]
    chunks = prefix_chunks(first, max_rows=4, waste_tokens=6)
    flat = sorted(r for chunk in chunks for r in chunk)
    assert flat == list(range(len(first)))
    for chunk in chunks:
        assert 1 <= len(chunk) <= 4
        start = min(first[r] for r in chunk)
        # the tokens a chunk's rows recompute beyond what each needs stay within the bound
        assert sum(first[r] - start for r in chunk) <= 6
    # rows with the same first position and room in the batch share a forward
    assert [7, 5, 6, 10] in chunks


def test_prefix_chunks_one_row_per_forward_when_max_rows_is_one():
    assert prefix_chunks([3, 1, 2], max_rows=1) == [[0], [2], [1]]
