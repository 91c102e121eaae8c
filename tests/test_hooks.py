import pytest
import torch

from selfexplain.hooks import ResidualPatch, capture_residual, patch_residual, replay_blocks
from selfexplain.models import decoder_layers
from selfexplain.tasks.ablation import encode

CLEAN = "The capital of France is"
COUNTERFACTUAL = "The capital of Japan is"
MODELS = ["tiny_llama", "tiny_gemma"]


@pytest.fixture(params=MODELS)
def model_tok(request):
    return request.getfixturevalue(request.param)


def _ids(tok, *texts):
    seqs = [encode(tok, t) for t in texts]
    assert len({len(s) for s in seqs}) == 1, "test prompts must have equal token length"
    return torch.tensor(seqs)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _capture(model, ids):
    n = len(decoder_layers(model))
    with torch.no_grad(), capture_residual(model, range(n)) as resid:
        logits = model(input_ids=ids).logits
    return logits, dict(resid)


def _all_positions(layer, values, row=0):
    seq = values.shape[0]
    return ResidualPatch(
        layer=layer,
        rows=torch.full((seq,), row),
        positions=torch.arange(seq),
        values=values,
    )


def test_capture_records_block_outputs(model_tok):
    model, tok = model_tok
    ids = _ids(tok, CLEAN)
    n = len(decoder_layers(model))
    _, resid = _capture(model, ids)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert sorted(resid) == list(range(n))
    # hidden_states[L + 1] is block L's output, except the last, which is after the final norm.
    for layer in range(n - 1):
        torch.testing.assert_close(resid[layer], hidden[layer + 1], atol=1e-6, rtol=0)


def test_patching_a_position_with_its_own_clean_value_changes_nothing(model_tok):
    model, tok = model_tok
    ids = _ids(tok, CLEAN)
    clean_logits, resid = _capture(model, ids)
    patches = [_all_positions(layer, h[0]) for layer, h in resid.items()]
    with patch_residual(model, patches):
        patched = _logits(model, ids)
    torch.testing.assert_close(patched, clean_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("start", [0, 1])
def test_patching_every_position_reproduces_counterfactual_run(model_tok, start):
    model, tok = model_tok
    clean, cf = _ids(tok, CLEAN), _ids(tok, COUNTERFACTUAL)
    cf_logits, cf_resid = _capture(model, cf)
    assert not torch.allclose(_logits(model, clean), cf_logits, atol=1e-3)
    with patch_residual(model, [_all_positions(start, cf_resid[start][0])]):
        patched = _logits(model, clean)
    torch.testing.assert_close(patched, cf_logits, atol=1e-5, rtol=0)


def test_batched_patch_rows_equal_single_patched_forwards(model_tok):
    model, tok = model_tok
    clean, cf = _ids(tok, CLEAN), _ids(tok, COUNTERFACTUAL)
    _, cf_resid = _capture(model, cf)
    seq = clean.shape[1]
    layers = (0, 1)  # a two-layer window
    batch = clean.repeat(seq, 1)
    positions = torch.arange(seq)
    patches = [
        ResidualPatch(layer, torch.arange(seq), positions, cf_resid[layer][0, positions])
        for layer in layers
    ]
    with patch_residual(model, patches):
        batched = _logits(model, batch)
    for b in range(seq):
        pos = torch.tensor([b])
        single = [
            ResidualPatch(layer, torch.tensor([0]), pos, cf_resid[layer][0, pos])
            for layer in layers
        ]
        with patch_residual(model, single):
            one = _logits(model, clean)
        torch.testing.assert_close(batched[b], one[0], atol=1e-5, rtol=0)
    # the rows differ: each row patched a different position
    assert not torch.allclose(batched[0, -1], batched[-1, -1], atol=1e-4)


def test_patch_touches_only_its_rows_and_positions(tiny_llama):
    model, tok = tiny_llama
    clean = _ids(tok, CLEAN, CLEAN)
    _, resid = _capture(model, clean)
    value = torch.full((1, resid[1].shape[-1]), 3.0)
    with (
        capture_residual(model, [1]) as seen,
        patch_residual(model, [ResidualPatch(1, torch.tensor([1]), torch.tensor([2]), value)]),
    ):
        _logits(model, clean)
    expected = resid[1].clone()
    expected[1, 2] = 3.0
    # hooks run in registration order: the capture hook sees the unpatched output ...
    torch.testing.assert_close(seen[1], resid[1], atol=1e-6, rtol=0)
    # ... and a capture registered after the patch sees the patched one.
    with (
        patch_residual(model, [ResidualPatch(1, torch.tensor([1]), torch.tensor([2]), value)]),
        capture_residual(model, [1]) as seen,
    ):
        _logits(model, clean)
    torch.testing.assert_close(seen[1], expected, atol=1e-6, rtol=0)


def test_input_site_equals_previous_block_output(model_tok):
    model, tok = model_tok
    clean, cf = _ids(tok, CLEAN), _ids(tok, COUNTERFACTUAL)
    _, cf_resid = _capture(model, cf)
    seq = clean.shape[1]
    pos = torch.tensor([seq - 3, seq - 2])  # at and after the differing subject token
    rows = torch.tensor([0, 0])
    values = cf_resid[0][0, pos]
    with patch_residual(model, [ResidualPatch(0, rows, pos, values)]):
        after_output = _logits(model, clean)
    with patch_residual(model, [ResidualPatch(1, rows, pos, values, site="input")]):
        before_input = _logits(model, clean)
    torch.testing.assert_close(before_input, after_output, atol=1e-5, rtol=0)
    assert not torch.allclose(after_output, _logits(model, clean), atol=1e-4)


def test_input_site_at_block_zero_replaces_embeddings(tiny_llama):
    model, tok = tiny_llama  # Llama does not rescale its embeddings
    clean, cf = _ids(tok, CLEAN), _ids(tok, COUNTERFACTUAL)
    with torch.no_grad():
        emb = model.get_input_embeddings()(cf)[0]
    seq = len(emb)
    patch = ResidualPatch(0, torch.zeros(seq, dtype=torch.long), torch.arange(seq), emb, "input")
    with patch_residual(model, [patch]):
        patched = _logits(model, clean)
    torch.testing.assert_close(patched, _logits(model, cf), atol=1e-5, rtol=0)


def test_gradients_flow_into_patch_values(tiny_llama):
    model, tok = tiny_llama
    ids = _ids(tok, CLEAN)
    d = model.config.hidden_size
    values = torch.zeros(1, d, requires_grad=True)
    with patch_residual(
        model, [ResidualPatch(0, torch.tensor([0]), torch.tensor([2]), values, "input")]
    ):
        model(input_ids=ids).logits[0, -1].logsumexp(-1).backward()
    assert values.grad is not None and values.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_hooks_are_removed_on_exit_and_on_error(tiny_llama):
    model, tok = tiny_llama
    ids = _ids(tok, CLEAN)
    clean_logits = _logits(model, ids)
    blocks = decoder_layers(model)
    # transformers installs its own permanent output-capturing hooks: count ours only
    before = [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks]
    junk = torch.full((1, model.config.hidden_size), 5.0)
    patch = ResidualPatch(0, torch.tensor([0]), torch.tensor([0]), junk)
    with pytest.raises(RuntimeError, match="boom"), patch_residual(model, [patch]):
        raise RuntimeError("boom")
    with patch_residual(model, [patch]), capture_residual(model, [0]):
        pass
    assert [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks] == before
    torch.testing.assert_close(_logits(model, ids), clean_logits, atol=0, rtol=0)


def test_bad_patches_are_rejected(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="must be"):
        ResidualPatch(0, torch.tensor([0, 1]), torch.tensor([0]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="site"):
        ResidualPatch(0, torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 4), "middle")
    n = len(decoder_layers(model))
    patch = ResidualPatch(n, torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 4))
    with pytest.raises(IndexError, match="out of range"), patch_residual(model, [patch]):
        pass
    with pytest.raises(IndexError, match="out of range"), capture_residual(model, [-1]):
        pass


def test_replayed_blocks_give_the_run_they_were_recorded_from(model_tok):
    model, tok = model_tok
    ids = _ids(tok, CLEAN, CLEAN, CLEAN)
    clean_logits, resid = _capture(model, ids[:1])
    blocks = list(decoder_layers(model))
    replay = {layer: resid[layer][0] for layer in range(3)}
    with torch.no_grad(), replay_blocks(model, replay):
        assert list(decoder_layers(model))[3:] == blocks[3:]
        replayed = model(input_ids=ids).logits
    for row in replayed:
        torch.testing.assert_close(row, clean_logits[0], atol=1e-5, rtol=0)
    # replaying the wrong run changes the output: the blocks really were skipped
    _, cf = _capture(model, _ids(tok, COUNTERFACTUAL))
    with torch.no_grad(), replay_blocks(model, {1: cf[1][0]}):
        moved = model(input_ids=ids[:1]).logits
    assert not torch.allclose(moved, clean_logits, atol=1e-3)
    assert list(decoder_layers(model)) == blocks


def test_replay_rejects_shape_mismatch_and_restores_blocks(tiny_llama):
    model, tok = tiny_llama
    blocks = list(decoder_layers(model))
    ids = _ids(tok, CLEAN)
    wrong = torch.zeros(ids.shape[1] + 1, model.config.hidden_size)
    with pytest.raises(ValueError, match="replayed block"), replay_blocks(model, {0: wrong}):
        _logits(model, ids)
    assert list(decoder_layers(model)) == blocks
    with pytest.raises(IndexError, match="out of range"), replay_blocks(model, {99: wrong}):
        pass
