import pytest
import torch

from selfexplain.core.formats import parse_change
from selfexplain.core.schema import held_out
from selfexplain.models import decoder_layers
from selfexplain.prompts import Prompt, counterfactual_pairs
from selfexplain.tasks import patching
from selfexplain.tasks.ablation import encode
from selfexplain.tasks.patching import (
    filter_pairs,
    naive_patching_rows,
    patching_examples,
    patching_labels,
    patching_question,
    patching_rows,
    position_kinds,
)

TEMPLATE = "Question: What is the capital of {}?\nA. Paris\nB. Tokyo\nRespond with A or B.\nAnswer:"
MODELS = ["tiny_llama", "tiny_gemma"]


def _pair(clean_subject="France", cf_subject="Japan", pid="p0"):
    return (
        Prompt(
            f"{pid}-clean", "mcq", TEMPLATE.format(clean_subject), None, {"subject": clean_subject}
        ),
        Prompt(
            f"{pid}-counterfactual",
            "mcq",
            TEMPLATE.format(cf_subject),
            None,
            {"subject": cf_subject},
        ),
    )


@pytest.fixture(params=MODELS)
def model_tok(request):
    return request.getfixturevalue(request.param)


def _last_logp(model, tok, text):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([encode(tok, text)])).logits[0, -1]
    return torch.log_softmax(logits, -1)


def _greedy(model, tok, text):
    logp = _last_logp(model, tok, text)
    logp[tok.all_special_ids] = float("-inf")
    return int(logp.argmax())


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("path", ["prefix_and_replay", "full_length"])
def test_batched_rows_equal_naive_loop(model_tok, window, path, monkeypatch):
    model, tok = model_tok
    clean, cf = _pair()
    # both batched paths: cached prefix + replayed blocks (long prompts), full length (short)
    monkeypatch.setattr(patching, "PREFIX_MIN_TOKENS", 0 if path == "prefix_and_replay" else 10**6)
    batched = patching_rows(model, tok, clean, cf, window=window, batch_size=16)
    naive = naive_patching_rows(model, tok, clean, cf, window=window)
    assert len(batched) == len(naive) > 0
    for b, n in zip(batched, naive, strict=True):
        assert (b["layer_start"], b["position"]) == (n["layer_start"], n["position"])
        assert b["new_token_id"] == n["new_token_id"]
        assert b["changed"] == n["changed"]
        assert b["p_orig"] == pytest.approx(n["p_orig"], abs=1e-5)
        assert b["p_cf"] == pytest.approx(n["p_cf"], abs=1e-5)
    assert any(r["p_orig"] != pytest.approx(batched[0]["p_orig"], abs=1e-6) for r in batched)


def test_window_bookkeeping(tiny_llama):
    model, tok = tiny_llama
    clean, cf = _pair()
    n_layers = len(decoder_layers(model))
    n_pos = len(encode(tok, clean.text))
    for window in (1, 2, n_layers):
        rows = patching_rows(model, tok, clean, cf, window=window)
        starts = sorted({r["layer_start"] for r in rows})
        assert starts == list(range(n_layers - window + 1))
        assert len(rows) == len(starts) * n_pos
        assert all(r["layer_end"] == r["layer_start"] + window - 1 for r in rows)
        assert all(r["window"] == window for r in rows)
        assert max(r["layer_end"] for r in rows) == n_layers - 1
    rows = patching_rows(model, tok, clean, cf, window=2, layer_starts=[1])
    assert {(r["layer_start"], r["layer_end"]) for r in rows} == {(1, 2)}
    assert [r["position"] for r in rows] == list(range(n_pos))
    with pytest.raises(ValueError, match="out of range"):
        patching_rows(model, tok, clean, cf, window=2, layer_starts=[n_layers - 1])
    with pytest.raises(ValueError, match="window"):
        patching_rows(model, tok, clean, cf, window=n_layers + 1)


def test_rows_match_direct_forwards(model_tok):
    model, tok = model_tok
    clean, cf = _pair()
    n_layers = len(decoder_layers(model))
    rows = patching_rows(model, tok, clean, cf)
    orig, cf_id = _greedy(model, tok, clean.text), _greedy(model, tok, cf.text)
    clean_p = _last_logp(model, tok, clean.text).exp()
    cf_p = _last_logp(model, tok, cf.text).exp()
    assert all(r["orig_token_id"] == orig and r["cf_token_id"] == cf_id for r in rows)
    first_diff = next(
        i
        for i, (a, b) in enumerate(zip(encode(tok, clean.text), encode(tok, cf.text), strict=True))
        if a != b
    )
    last = len(encode(tok, clean.text)) - 1
    for r in rows:
        if r["position"] < first_diff:
            # identical prefix: the counterfactual value equals the clean one
            assert not r["changed"]
            assert r["p_orig"] == pytest.approx(float(clean_p[orig]), abs=1e-5)
        if r["position"] == last and r["layer_start"] == n_layers - 1:
            # the last block's output at the last position is all the logits depend on
            assert r["new_token_id"] == cf_id
            assert r["p_cf"] == pytest.approx(float(cf_p[cf_id]), abs=1e-5)
            assert r["p_orig"] == pytest.approx(float(cf_p[orig]), abs=1e-5)
        assert r["changed"] == (r["new_token_id"] != orig)
        assert r["token"] == tok.decode([encode(tok, clean.text)[r["position"]]])


def test_unequal_lengths_are_rejected(tiny_llama):
    model, tok = tiny_llama
    clean, cf = _pair("France", "Germany")
    assert len(encode(tok, clean.text)) != len(encode(tok, cf.text))
    with pytest.raises(ValueError, match="equal lengths"):
        patching_rows(model, tok, clean, cf)


def test_position_kinds(tiny_llama):
    _, tok = tiny_llama
    clean, cf = _pair()
    kinds = position_kinds(tok, clean, cf)
    ids, cf_ids = encode(tok, clean.text), encode(tok, cf.text)
    assert len(kinds) == len(ids)
    for i, (a, b) in enumerate(zip(ids, cf_ids, strict=True)):
        if a != b:
            assert kinds[i] == "subject"
    offsets = tok(clean.text, return_offsets_mapping=True)["offset_mapping"]
    words = {
        k: "".join(clean.text[a:b] for (a, b), kk in zip(offsets, kinds, strict=True) if kk == k)
        for k in set(kinds)
    }
    assert "France" in words["subject"]
    assert "A. Paris" in words["option"] and "B. Tokyo" in words["option"]
    assert "capital of" in words["relation"] and "?" in words["relation"]
    assert "Answer:" in words["other"] and "Respond with" in words["other"]
    assert "Question" in words["other"]


def test_position_kinds_without_meta_use_differing_tokens(tiny_llama):
    _, tok = tiny_llama
    clean = Prompt("c", "custom", "The capital of France is")
    cf = Prompt("f", "custom", "The capital of Japan is")
    kinds = position_kinds(tok, clean, cf)
    ids, cf_ids = encode(tok, clean.text), encode(tok, cf.text)
    assert [k == "subject" for k in kinds] == [a != b for a, b in zip(ids, cf_ids, strict=True)]
    assert set(kinds) == {"subject", "relation"}


def test_filter_pairs_keeps_equal_length_pairs_with_different_answers(tiny_llama):
    model, tok = tiny_llama
    pairs = counterfactual_pairs(30, seed=0)
    kept = filter_pairs(model, tok, pairs)
    assert 0 < len(kept) < len(pairs)
    kept_ids = {c.id for c, _ in kept}
    for clean, cf in pairs:
        same_len = len(encode(tok, clean.text)) == len(encode(tok, cf.text))
        differ = same_len and _greedy(model, tok, clean.text) != _greedy(model, tok, cf.text)
        assert (clean.id in kept_ids) == differ


def test_question_states_prompts_layers_and_position(tiny_llama):
    model, tok = tiny_llama
    clean, cf = _pair()
    rows = patching_rows(model, tok, clean, cf, window=2, layer_starts=[1])
    q = patching_question(rows[4])
    assert '"Question: What is the capital of France?\\nA. Paris' in q
    assert "capital of Japan?" in q
    assert "layers 1 to 2" in q
    assert f'token 4 ("{rows[4]["token"]}")' in q
    assert rows[4]["orig_token"] in q
    single = patching_question(patching_rows(model, tok, clean, cf, layer_starts=[3])[0])
    assert single.endswith(" in layer 3.") and "layers" not in single


@pytest.mark.parametrize("holdout", ["prompt", "layer"])
def test_examples_split_and_answers_parse(tiny_llama, holdout):
    model, tok = tiny_llama
    subjects = ["France", "Japan", "Peru", "Chile", "Canada"]
    pairs = [
        _pair(a, b, pid=f"pair-{i}")
        for i, (a, b) in enumerate((a, b) for a in subjects for b in subjects if a != b)
    ]
    rows = patching_labels(model, tok, pairs, window=1, batch_size=32)
    examples = patching_examples(rows, "tiny", test_fraction=0.4, seed=0, holdout=holdout)
    assert len(examples) == len(rows) == len({ex.id for ex in examples})
    key = "pair_id" if holdout == "prompt" else "layer_start"
    splits: dict = {}
    for ex in examples:
        assert ex.task == "patching" and ex.target == "tiny"
        splits.setdefault(ex.meta[key], set()).add(ex.split)
        parsed = parse_change(ex.answer)
        assert parsed.valid and parsed.changed == ex.meta["changed"]
        if parsed.changed:
            assert parsed.new_token == ex.meta["new_token"]
    assert all(len(s) == 1 for s in splits.values())
    assert {"train", "test"} == set().union(*splits.values())
    n_test = sum(s == {"test"} for s in splits.values())
    assert n_test == max(1, round(0.4 * len(splits)))  # exactly the fraction of pairs / layers
    with pytest.raises(ValueError, match="holdout"):
        patching_examples(rows, "tiny", holdout="position")


def test_select_positions_keeps_subject_and_last_and_bounds_count():
    from selfexplain.tasks.patching import select_positions

    positions = list(range(20))
    kinds = ["other"] * 20
    kinds[5] = kinds[6] = "subject"
    picked = select_positions(positions, kinds, 8)
    assert len(picked) == 8 and {5, 6, 19} <= set(picked)
    assert picked == sorted(set(picked))
    assert select_positions(positions, kinds, None) == positions
    assert select_positions(positions, kinds, 50) == positions


def test_layer_holdout_always_has_both_splits():
    from selfexplain.tasks.patching import held_out_layers

    for seed in range(20):
        for n in (2, 3, 4, 7):
            test = held_out_layers(range(n), 0.2, seed)
            assert 1 <= len(test) < n
    assert held_out_layers([0], 0.2, 0) == set()
    assert held_out_layers(range(7), 0.2, 3) == held_out_layers(range(7), 0.2, 3)


def test_heatmap_rows_take_whole_pairs(tiny_llama):
    from selfexplain.core.schema import to_frame
    from selfexplain.tasks.patching import heatmap_rows

    model, tok = tiny_llama
    pairs = [_pair("France", "Japan", "pair-a"), _pair("Peru", "Chile", "pair-b")]
    rows = patching_labels(model, tok, pairs, window=1)
    df = to_frame(patching_examples(rows, "tiny", test_fraction=0.5))
    grid = heatmap_rows(df, 1)
    n_layers = len(decoder_layers(model))
    assert len(grid) == n_layers * len(encode(tok, pairs[0][0].text))
    assert all('"pair_id": "pair-a"' in m for m in grid["meta"])


def test_pairs_file_round_trip(tmp_path):
    from selfexplain.prompts import read_pairs_jsonl, write_pairs_jsonl

    pairs = counterfactual_pairs(5)
    write_pairs_jsonl(pairs, tmp_path / "pairs.jsonl")
    back = read_pairs_jsonl(tmp_path / "pairs.jsonl")
    assert [(a.text, b.text) for a, b in back] == [(a.text, b.text) for a, b in pairs]
    assert back[0][0].meta["subject"] == pairs[0][0].meta["subject"]
    assert back[0][1].meta["subject"] == pairs[0][1].meta["subject"]
    assert back[0][0].id == pairs[0][0].id


def test_held_out_takes_exactly_the_fraction_of_keys():
    """round(test_fraction * n) keys (at least one, never all), the same ones on every call,
    and a larger fraction holds out a superset."""
    keys = [f"p{i}" for i in range(40)]
    sizes = {f: len(held_out(keys, f, 0)) for f in (0.3, 0.35, 0.5)}
    assert sizes == {0.3: 12, 0.35: 14, 0.5: 20}
    assert held_out(keys, 0.3, 0) == held_out(reversed(keys), 0.3, 0)
    assert held_out(keys, 0.3, 0) <= held_out(keys, 0.5, 0)
    assert held_out(keys, 0.3, 0) != held_out(keys, 0.3, 1)
    assert held_out(["only"], 0.5, 0) == set() and len(held_out(["a", "b"], 0.99, 0)) == 1
