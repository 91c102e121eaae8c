"""Vector injection into the explainer: placeholder, scaled vector, linear map, training."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from selfexplain.core.formats import format_prompt
from selfexplain.core.settings import TrainConfig
from selfexplain.evaluate.generation import (
    explainer_injector,
    generate_answers,
    is_full_model,
    load_explainer,
)
from selfexplain.features.injection import (
    MAP_FIT,
    MAP_NAME,
    Injector,
    VectorMap,
    attach_map,
    contrastive_refine,
    embedding_map,
    fitted_map,
    inject_residual,
    placeholder_token,
    render_question,
    with_target_map,
)
from selfexplain.hooks import ResidualPatch, patch_residual
from selfexplain.models import decoder_layers, resolve, tiny_random
from selfexplain.tasks.features import feature_question
from selfexplain.train.encode import encode_example
from selfexplain.train.trainer import train_explainer


def block_input(model, ids, layer=0):
    """The hidden state entering block `layer` on ids (1, T)."""
    store = {}

    def hook(module, args, kwargs):
        store["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = decoder_layers(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return store["h"]


def question_ids(tokenizer, injector):
    text = format_prompt(injector.render([feature_question(3)])[0])
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_placeholder_is_one_existing_token(tiny_llama):
    _, tok = tiny_llama
    text, pid = placeholder_token(tok)
    assert tok(text, add_special_tokens=False)["input_ids"] == [pid]
    q = render_question(feature_question(3), text)
    assert "<vector>" not in q and q.startswith("At layer 3,")
    assert tok(q, add_special_tokens=False)["input_ids"].count(pid) == 1


@pytest.mark.parametrize("layer", [0, 2])
def test_injection_off_untouched_on_equals_scaled_vector(tiny_llama, layer):
    model, tok = tiny_llama
    torch.manual_seed(0)
    vec = torch.randn(1, 64) * 7.0
    inj = Injector.setup(model, tok, d_in=64, layer=layer, scale=3.5)
    ids = question_ids(tok, inj)
    pos = int((ids[0] == inj.spec.placeholder_id).nonzero()[0])
    clean = block_input(model, ids, layer)
    if layer == 0:  # off: the placeholder's own token embedding enters block 0
        emb = model.get_input_embeddings()(ids)[0, pos]
        assert torch.allclose(clean[0, pos], emb)
    with inj.inject(model, ids, vec):
        hot = block_input(model, ids, layer)
    expected = vec[0] / vec[0].norm() * 3.5
    assert torch.allclose(hot[0, pos], expected, atol=1e-5)
    assert torch.allclose(hot[0, pos].norm(), torch.tensor(3.5), atol=1e-5)
    # positions before the placeholder are unchanged (later ones see it through attention)
    assert torch.equal(hot[0, :pos], clean[0, :pos])
    # after the block, nothing is left behind
    assert torch.equal(block_input(model, ids, layer), clean)


def test_inject_residual_equals_patch_residual(tiny_llama):
    model, tok = tiny_llama
    ids = torch.tensor([tok("The capital of France is Paris")["input_ids"]] * 2)
    rows, positions = torch.tensor([0, 1]), torch.tensor([2, 4])
    values = torch.randn(2, 64)
    with torch.no_grad():
        with patch_residual(model, [ResidualPatch(1, rows, positions, values, site="input")]):
            ref = model(input_ids=ids).logits
        with inject_residual(model, 1, rows, positions, values):
            got = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    assert torch.equal(ref, got)
    assert not torch.allclose(got, plain)


def test_generation_injects_at_prefill_only(tiny_llama):
    model, tok = tiny_llama
    inj = Injector.setup(model, tok, d_in=64)
    vec = torch.randn(1, 64)
    ids = question_ids(tok, inj)
    with torch.no_grad(), inj.inject(model, ids, vec):
        first = int(model(input_ids=ids).logits[0, -1].argmax())
    (answer,) = generate_answers(
        model, tok, [feature_question(3)], max_new_tokens=4, vectors=vec.tolist(), injector=inj
    )
    with torch.no_grad(), inj.inject(model, ids, vec):
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert int(out[0, ids.shape[1]]) == first
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert answer == expected.split("\n")[0].strip()


def test_width_map_carries_vector_and_learns(tiny_gemma):
    model, tok = tiny_gemma  # width 48; vectors from the 64-wide llama
    inj = Injector.setup(model, tok, d_in=64, scale=2.0, seed=0)
    assert inj.spec.has_map and isinstance(getattr(model, MAP_NAME), VectorMap)
    vec = torch.randn(1, 64)
    mapped = getattr(model, MAP_NAME)(vec)[0]
    ids = question_ids(tok, inj)
    pos = int((ids[0] == inj.spec.placeholder_id).nonzero()[0])
    with inj.inject(model, ids, vec):
        hot = block_input(model, ids)
    assert hot.shape[-1] == 48
    assert torch.allclose(hot[0, pos], mapped / mapped.norm() * 2.0, atol=1e-5)
    # gradients reach the map through the injected forward
    with inj.inject(model, ids, vec):
        model(input_ids=ids).logits[0, -1].sum().backward()
    assert getattr(model, MAP_NAME).weight.grad.abs().sum() > 0
    delattr(model, MAP_NAME)
    model.zero_grad()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_with_vectors_saves_and_reloads_the_map(tmp_path, tiny_llama, method):
    """A gemma explainer learns on 64-d (llama-width) vectors; the map is saved with the adapter
    (or inside the fully fine-tuned model) and restored on load, and the trained explainer's
    injection differs from the initial one."""
    _, llama_tok = tiny_llama
    model_dir = resolve("tiny-random-gemma", tmp_path / "gemma")
    torch.manual_seed(0)
    n = 8
    vectors = torch.randn(n, 64)
    answers = ["the tokens Paris and Rome", "the tokens cat and dog"] * (n // 2)
    df = pl.DataFrame(
        {
            "id": [f"f{i}" for i in range(n)],
            "question": [feature_question(1)] * n,
            "answer": answers,
            "vector": vectors.tolist(),
        },
        schema_overrides={"vector": pl.List(pl.Float32)},
    )
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, save_steps=1000, seed=0, method=method)
    out = tmp_path / "adapter"
    summary = train_explainer(model_dir, df, out, cfg, tmp_path / "ckpt", injection={"layer": 0})
    assert summary["steps"] == 4 and (out / "injection.json").is_file()
    assert is_full_model(out) == (method == "full")
    model, tok = load_explainer(model_dir, out)
    inj = explainer_injector(model, tok, out, 64)
    assert inj.spec.d_in == 64 and inj.spec.d_out == 48 and inj.map is not None
    initial = VectorMap(64, 48, seed=0)
    with torch.no_grad():
        trained_values = inj.values(vectors[:2])
        init_values = initial(vectors[:2])
    assert not torch.allclose(
        trained_values / trained_values.norm(dim=-1, keepdim=True),
        init_values / init_values.norm(dim=-1, keepdim=True),
    )
    # the same explainer loaded again injects exactly the same values
    model2, tok2 = load_explainer(model_dir, out)
    with torch.no_grad():
        again = explainer_injector(model2, tok2, out, 64).values(vectors[:2])
    assert torch.equal(trained_values, again)
    # loss on the training examples is computed with the vector in place
    enc = encode_example(tok, inj.render([feature_question(1)])[0], answers[0], 64)
    assert enc["labels"].count(-100) < len(enc["labels"])


def test_embedding_map_fits_shared_tokens_and_leaves_out_excluded():
    """Where the explainer's embeddings are a linear image of the target's, the fitted map
    carries held-out (excluded) tokens onto their images; a random map does not."""
    src, src_tok = tiny_random("tiny-random-llama", seed=3)
    dst, dst_tok = tiny_random("tiny-random-gemma", seed=3)
    a = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    src_emb = src.get_input_embeddings().weight
    with torch.no_grad():  # same in-code vocabulary: ids match texts in both
        dst.get_input_embeddings().weight.copy_(torch.nn.functional.normalize(src_emb, dim=-1) @ a)
    held_out = list(range(100, 130))
    weight, n_anchors = embedding_map(src, src_tok, dst, dst_tok, exclude=held_out, epochs=0)
    shared = len(src_tok) - len(src_tok.all_special_ids)
    assert weight.shape == (48, 64) and 0 < n_anchors <= shared - len(held_out)
    x = src_emb[held_out].detach()
    want = dst.get_input_embeddings().weight[held_out].detach()
    cos = torch.nn.functional.cosine_similarity(x @ weight.T, want, dim=-1)
    random_cos = torch.nn.functional.cosine_similarity(VectorMap(64, 48)(x), want, dim=-1)
    assert cos.min() > 0.95 and random_cos.abs().mean() < 0.5


def _clustered_pair(seed: int = 3):
    """Tiny target and explainer whose embeddings are a linear image of each other. The
    target's tokens sit in four tight clusters, so (as in a real vocabulary) what tells
    neighbouring tokens apart lies in directions of low variance."""
    src, src_tok = tiny_random("tiny-random-llama", seed=seed)
    dst, dst_tok = tiny_random("tiny-random-gemma", seed=seed)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 48, generator=g)
    with torch.no_grad():
        emb = src.get_input_embeddings().weight
        centres = torch.randn(4, 64, generator=g)
        emb.copy_(
            centres[torch.arange(emb.shape[0]) % 4] + 0.05 * torch.randn(emb.shape, generator=g)
        )
        dst.get_input_embeddings().weight.copy_(torch.nn.functional.normalize(emb, dim=-1) @ a)
    return src, src_tok, dst, dst_tok


@pytest.mark.parametrize("ridge", [None, 1e-3])
def test_embedding_map_tells_held_out_neighbours_apart(ridge):
    """Mapped held-out target tokens land nearest their own explainer embeddings with the
    default ridge; a heavy ridge (the former 1e-3) erases the low-variance directions that
    tell neighbours apart. On SmolLM2 -> Gemma that ridge retrieved 54% of held-out tokens,
    the default 83% (docs/results.md, 2026-12-02)."""
    src, src_tok, dst, dst_tok = _clustered_pair()
    held_out = list(range(100, 160))
    kwargs = {"epochs": 0} if ridge is None else {"ridge": ridge, "epochs": 0}
    weight, _ = embedding_map(src, src_tok, dst, dst_tok, exclude=held_out, **kwargs)
    x = torch.nn.functional.normalize(src.get_input_embeddings().weight[held_out].detach(), dim=-1)
    vocab = torch.nn.functional.normalize(dst.get_input_embeddings().weight.detach(), dim=-1)
    nearest = (x @ weight.T @ vocab.T).argmax(-1)
    hits = int((nearest == torch.tensor(held_out)).sum())
    if ridge is None:
        assert hits == len(held_out)
    else:
        assert hits < len(held_out) // 2


def test_contrastive_refine_ranks_held_out_tokens_better_than_least_squares():
    """Explainer embeddings with a large common component (as real embedding tables have):
    least squares maps held-out vectors near their own token but not away from its neighbours;
    the contrastive passes rank the own token first more often (SmolLM2 -> Gemma: 83% -> 94%)."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(3000, 32, generator=g), dim=-1)
    dst = x @ torch.randn(32, 24, generator=g) + 3.0 + 0.3 * torch.randn(3000, 24, generator=g)
    train, test = torch.arange(2500), torch.arange(2500, 3000)
    y = torch.nn.functional.normalize(dst[train], dim=-1)
    ridge = torch.linalg.solve(x[train].T @ x[train] + 1e-3 * torch.eye(32), x[train].T @ y)
    vocab = torch.nn.functional.normalize(dst, dim=-1)

    def hits(w):
        return float(((x[test] @ w @ vocab.T).argmax(-1) == test).float().mean())

    refined = contrastive_refine(ridge, x[train], dst, train, epochs=10)
    assert hits(ridge) < 0.82 and hits(refined) > hits(ridge) + 0.05
    again = contrastive_refine(ridge, x[train], dst, train, epochs=10)
    assert torch.equal(refined, again)  # seeded


def test_embedding_map_keeps_the_pass_its_held_out_anchors_choose(capsys):
    """Where least squares is already exact, the contrastive passes drift (the clusters are
    tight); the anchors left out to choose the pass keep the ridge fit, so held-out tokens
    still land on their own."""
    src, src_tok, dst, dst_tok = _clustered_pair()
    held_out = list(range(100, 160))
    weight, n = embedding_map(src, src_tok, dst, dst_tok, exclude=held_out, epochs=30)
    assert "kept pass 0" in capsys.readouterr().out
    x = torch.nn.functional.normalize(src.get_input_embeddings().weight[held_out].detach(), dim=-1)
    vocab = torch.nn.functional.normalize(dst.get_input_embeddings().weight.detach(), dim=-1)
    assert bool(((x @ weight.T @ vocab.T).argmax(-1) == torch.tensor(held_out)).all())
    _, n_all = embedding_map(src, src_tok, dst, dst_tok, exclude=held_out, epochs=0)
    assert n == n_all - max(1, int(n_all * 0.05))  # the choosing anchors are not fitted


def test_setup_starts_the_map_from_the_target_embeddings(tmp_path):
    target_dir = resolve("tiny-random-llama", tmp_path / "models" / "llama")
    explainer_dir = resolve("tiny-random-gemma", tmp_path / "models" / "gemma")
    model, tok = tiny_random("tiny-random-gemma", seed=0)
    settings = with_target_map({"layer": 0}, explainer_dir, "llama", "gemma")
    assert settings == {"layer": 0, "map_from": str(target_dir)}
    assert with_target_map({"layer": 0}, explainer_dir, "gemma", "gemma") == {"layer": 0}
    assert "map_from" not in with_target_map(None, explainer_dir, "absent", "gemma")
    inj = Injector.setup(model, tok, 64, scale=2.0, map_from=settings["map_from"])
    want, n = fitted_map(target_dir, model, tok)
    assert inj.spec.map_init == f"embeddings ({n} anchors; {MAP_FIT})"
    assert torch.equal(getattr(model, MAP_NAME).weight.detach(), want)
    random_model, _ = tiny_random("tiny-random-gemma", seed=0)
    assert Injector.setup(random_model, tok, 64, scale=2.0).spec.map_init == "random"
    with pytest.raises(ValueError, match="vector_map init has shape"):
        attach_map(tiny_random("tiny-random-gemma", seed=0)[0], inj.spec, init=want.T)


def test_a_fitted_map_stays_fixed_in_training_and_is_saved(tmp_path):
    """A map started from the embeddings is not trained (the adapter learns to read through
    it, as a model reads its own vectors through the identity), and it is saved and restored
    with the adapter."""
    target_dir = resolve("tiny-random-llama", tmp_path / "models" / "llama")
    model_dir = resolve("tiny-random-gemma", tmp_path / "models" / "gemma")
    torch.manual_seed(0)
    df = pl.DataFrame(
        {
            "id": [f"f{i}" for i in range(8)],
            "question": [feature_question(1)] * 8,
            "answer": ["the tokens Paris and Rome", "the tokens cat and dog"] * 4,
            "vector": torch.randn(8, 64).tolist(),
        },
        schema_overrides={"vector": pl.List(pl.Float32)},
    )
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, save_steps=1000, seed=0)
    injection = {"layer": 0, "map_from": str(target_dir)}
    out = tmp_path / "adapter"
    train_explainer(model_dir, df, out, cfg, tmp_path / "ckpt", injection=injection)
    model, tok = load_explainer(model_dir, out)
    inj = explainer_injector(model, tok, out, 64)
    assert inj.spec.map_init.startswith("embeddings (")
    want, _ = fitted_map(target_dir, *load_explainer(model_dir))
    assert torch.allclose(inj.map(torch.eye(64)).T, want, atol=1e-6)


def test_a_new_map_fit_does_not_resume_old_checkpoints(tmp_path, monkeypatch):
    """A run that reads through a fitted map fingerprints how the map is fitted (MAP_FIT), so
    changing the fit starts afresh; runs without a map keep their fingerprints."""
    import selfexplain.train.checkpoints as checkpoints_module
    from selfexplain.train.checkpoints import run_fingerprint

    model_dir = resolve("tiny-random-gemma", tmp_path / "models" / "gemma")
    df = pl.DataFrame(
        {"question": [feature_question(1)] * 2, "answer": ["a", "b"], "vector": [[0.5] * 4] * 2},
        schema_overrides={"vector": pl.List(pl.Float32)},
    )
    cfg = TrainConfig()
    mapped, plain = {"layer": 0, "map_from": "models/llama"}, {"layer": 0}
    before = [run_fingerprint(model_dir, df, cfg, s) for s in (mapped, plain)]
    monkeypatch.setattr(checkpoints_module, "MAP_FIT", "another fit")
    after = [run_fingerprint(model_dir, df, cfg, s) for s in (mapped, plain)]
    assert before[0] != after[0] and before[1] == after[1]
