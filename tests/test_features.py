"""Feature-description task: corpus, activations, SAE, records, describers, splits, metrics."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import save_file

from selfexplain.config import config_problems
from selfexplain.core.registry import applies, task_variants
from selfexplain.core.schema import to_frame
from selfexplain.data.variants import withhold_signal
from selfexplain.features.activations import collect_activations, token_mask, token_windows
from selfexplain.features.corpus import (
    Document,
    clean_wikitext,
    corpus_documents,
    text_file_documents,
)
from selfexplain.features.describe import (
    OpenAIEndpoint,
    describe_records,
    describer_prompt,
    deterministic_description,
    judge_scores,
)
from selfexplain.features.metrics import (
    Embedder,
    feature_metrics,
    nearest_neighbour_answers,
    score_feature_rows,
    similarities,
)
from selfexplain.features.records import (
    FeatureRecord,
    feature_records,
    records_frame,
    records_from_frame,
)
from selfexplain.features.sae import (
    SAEConfig,
    TopKSAE,
    evaluate_sae,
    fvu,
    load_sae,
    save_sae,
    split_tokens,
    train_sae,
)
from selfexplain.hooks import capture_residual
from selfexplain.tasks.features import feature_examples, frequency_bands

REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome. The cat sat on the mat. "
    "The dog ran in the park with a red ball. Water boils at 100 degrees Celsius. "
) * 6


def synthetic(n=3000, d=16, n_dirs=32, k=2, seed=0):
    """Sparse data: each vector is a positive combination of k of n_dirs random directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=g), dim=-1)
    idx = torch.stack([torch.randperm(n_dirs, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) * 2 + 0.5
    return (coef.unsqueeze(-1) * dirs[idx]).sum(1)


# --------------------------------------------------------------------------- corpus


def test_clean_wikitext_keeps_prose_drops_markup():
    wiki = (
        "{{Infobox|name=x}}\n'''Paris''' is the [[capital city|capital]] of [[France]].<ref>A "
        "source.</ref> It has a population of about two million people in the city proper.\n\n"
        "== History ==\n* a list item that is dropped\n[[File:x.jpg|thumb|a picture]]"
    )
    (para,) = clean_wikitext(wiki)
    assert para.startswith("Paris is the capital of France. It has")
    for junk in ("[[", "{{", "<ref", "'''", "History", "list item", "picture"):
        assert junk not in para


def test_packaged_corpus_is_english_prose():
    docs = corpus_documents()
    assert len(docs) > 3000 and sum(len(d.text) for d in docs) > 2_000_000
    assert docs[0].id.startswith("Anarchism#")
    assert all("[[" not in d.text for d in docs[:200])


def test_text_file_corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("First paragraph\nwraps here.\n\nSecond one.\n")
    texts = [d.text for d in text_file_documents(path)]
    assert texts == ["First paragraph wraps here.", "Second one."]
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        text_file_documents(path)


# --------------------------------------------------------------------------- activations


def test_collect_activations_equal_full_forward(tiny_llama):
    model, tok = tiny_llama
    windows = token_windows(tok, [Document("d", TEXT)], context_len=16, n_windows=5)
    assert windows.shape == (5, 16)
    acts = collect_activations(model, windows, layer=1, batch_size=2)
    with torch.no_grad(), capture_residual(model, [1]) as store:
        model(input_ids=windows)
    assert torch.allclose(acts, store[1], atol=1e-5)


# --------------------------------------------------------------------------- SAE


def test_fvu_known_cases():
    x = torch.randn(100, 8)
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert fvu(x, 0.5 * x + 0.5 * x.mean(0)) == pytest.approx(0.25)


def test_sae_learns_sparse_data_and_roundtrips(tmp_path):
    x = synthetic()
    cfg = SAEConfig(d_model=16, n_latents=64, k=4, epochs=20, batch_size=256, lr=3e-3)
    untrained = TopKSAE(16, 64, 4)
    torch.nn.init.normal_(untrained.W_enc)
    torch.nn.init.normal_(untrained.W_dec)
    before = evaluate_sae(untrained, x)["fvu"]
    sae, log = train_sae(x, cfg)
    stats = evaluate_sae(sae, x)
    assert stats["fvu"] < 0.15 < before
    assert stats["l0"] <= 4 and 0 <= stats["dead_fraction"] < 0.5
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)
    assert stats["fvu"] == pytest.approx(fvu(x, sae(x).detach()), rel=1e-6)
    save_sae(sae, tmp_path / "ours")
    again = load_sae(tmp_path / "ours")
    assert torch.equal(again.encode(x[:10]), sae.encode(x[:10]))


def test_dead_fraction_counts_latents_that_never_fire():
    sae = TopKSAE(8, 10, None, activation="relu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(10, 8))
        sae.W_dec.copy_(torch.eye(10, 8))
        sae.b_enc[7:] = -1e6  # latents 7, 8, 9 can never fire
    stats = evaluate_sae(sae, torch.randn(200, 8).abs() + 0.1)
    assert stats["dead_fraction"] == pytest.approx(0.3)


def test_external_saelens_style_checkpoint(tmp_path):
    d, n = 8, 12
    w_enc, w_dec = torch.randn(d, n), torch.randn(n, d)
    b_enc, b_dec = torch.randn(n), torch.randn(d)
    save_file(
        {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec},
        str(tmp_path / "sae_weights.safetensors"),
    )
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": n}))
    sae = load_sae(tmp_path)
    x = torch.randn(5, d)
    z = torch.relu((x - b_dec) @ w_enc + b_enc)
    assert sae.activation == "relu"
    assert torch.allclose(sae.encode(x), z, atol=1e-5)
    assert torch.allclose(sae.decode(z), z @ w_dec + b_dec, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="exactly one"):
        load_sae(tmp_path / "nothing")


def test_split_tokens_holds_out_last_windows_and_first_positions():
    windows = torch.zeros(10, 4, dtype=torch.long)
    acts = torch.arange(10 * 4 * 2, dtype=torch.float32).view(10, 4, 2)
    train, held = split_tokens(windows, acts)
    assert train.shape == (9 * 3, 2) and held.shape == (3, 2)
    assert torch.equal(held, acts[9, 1:])


# --------------------------------------------------------------------------- records, describer


@pytest.fixture(scope="module")
def tiny_records(tiny_llama):
    model, tok = tiny_llama
    windows = token_windows(tok, [Document("d", TEXT)], context_len=16, n_windows=12)
    acts = collect_activations(model, windows, layer=1)
    sae, _ = train_sae(
        acts[:, 1:].reshape(-1, 64), SAEConfig(d_model=64, n_latents=32, k=4, epochs=2)
    )
    records = feature_records(model, tok, sae, windows, acts, n_examples=4, min_count=3)
    return windows, acts, sae, records


def test_records_hold_true_top_activations(tiny_llama, tiny_records):
    _, tok = tiny_llama
    windows, acts, sae, records = tiny_records
    assert records
    for r in records[:5]:
        vals = [ex["activation"] for ex in r.examples]
        assert vals == sorted(vals, reverse=True)
        assert len({ex["window"] for ex in r.examples}) == len(vals)  # one per window
        for ex in r.examples:
            z = sae.encode(acts[ex["window"], ex["position"]])[r.feature].detach()
            assert float(z) == pytest.approx(ex["activation"], abs=1e-3)
            assert ex["position"] > 0  # the first position of a window is never used
            assert ex["token"] == tok.decode([int(windows[ex["window"], ex["position"]])])
        # the strongest window's activation is the latent's max over every used position
        z_all = sae.encode(acts[:, 1:].reshape(-1, 64))[:, r.feature]
        assert r.max_activation == pytest.approx(float(z_all.max()), abs=1e-4)
    assert records_from_frame(records_frame(records)) == records


def test_deterministic_describer():
    rec = FeatureRecord(
        feature=3,
        frequency=0.01,
        max_activation=2.0,
        examples=[
            {"left": left, "token": t, "right": "", "activation": a}
            for left, t, a in (("the capital of", " Paris", 2.0), ("capital of", " Rome", 1.0))
        ]
        + [{"left": "capital of", "token": " Oslo", "right": "", "activation": 1.0}],
        top_tokens=[" Paris", " Rome", "paris", " Oslo", "\n"],
        promoted=[" is", "\ufffd", " city"],
    )
    text = deterministic_description(rec)
    assert text == 'the tokens "Paris", "Rome" and "Oslo" after "of"; promotes "is" and "city"'
    assert describe_records([rec, rec]) == [text, text]
    blank = FeatureRecord(4, 0.1, 1.0, [], ["\n"], [])
    assert deterministic_description(blank) == 'the token "newline"'


class _Stub(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append((self.path, self.headers.get("Authorization"), body))
        prompt = body["messages"][0]["content"]
        reply = "4" if "Reference:" in prompt else "capital cities\nignored second line"
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_compatible_describer_and_judge_against_local_stub(monkeypatch, tiny_records):
    *_, records = tiny_records
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        monkeypatch.setenv("STUB_KEY", "sk-test")
        settings = {"kind": "openai", "base_url": url, "model": "m", "api_key_env": "STUB_KEY"}
        assert describe_records(records[:2], settings) == ["capital cities"] * 2
        path, auth, body = _Stub.seen[0]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
        assert body["model"] == "m" and "<<" in body["messages"][0]["content"]
        judge = OpenAIEndpoint(url, "m", api_key_env="UNSET_VAR_FOR_TEST")
        assert judge_scores(judge, ["a"], ["b"]) == [0.75]
        assert _Stub.seen[-1][1] is None  # no key in the environment: no header
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- examples, splits


def _records(n=50):
    return [
        FeatureRecord(
            f,
            frequency=(f + 1) / 1000,
            max_activation=1.0,
            examples=[],
            top_tokens=[f"t{f}"],
            promoted=[],
            description=f"desc {f}",
        )
        for f in range(n)
    ]


def test_feature_holdout_splits_are_disjoint():
    decoder = torch.randn(50, 8)
    ex = feature_examples(_records(), decoder, "tiny", 2, test_fraction=0.3)
    train = {json.loads(to_frame([e])["meta"][0])["feature"] for e in ex if e.split == "train"}
    test = {e.meta["feature"] for e in ex if e.split == "test"}
    assert train and test and not train & test and len(train | test) == 50
    e = ex[7]
    assert e.vector == pytest.approx(decoder[7].tolist()) and e.answer == "desc 7"
    assert e.question == "At layer 2, <vector> encodes" and e.meta["layer"] == 2


def test_frequency_holdout_holds_out_whole_bands():
    assert frequency_bands([0.5, 0.1, 0.3, 0.2], 2) == [1, 0, 1, 0]
    ex = feature_examples(_records(), torch.randn(50, 8), "tiny", 2, holdout="frequency", n_bands=5)
    test_bands = {e.meta["band"] for e in ex if e.split == "test"}
    train_bands = {e.meta["band"] for e in ex if e.split == "train"}
    assert test_bands and train_bands and not test_bands & train_bands
    assert sum(e.split == "test" for e in ex) == 10 * len(test_bands)


# --------------------------------------------------------------------------- baselines, metrics


def test_nearest_neighbour_picks_the_most_similar_training_vector():
    train = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    answers = ["x feature", "y feature", "z feature"]
    preds, idx = nearest_neighbour_answers(train, answers, [[0.1, 5.0, 0.2], [-1, 0, 3]])
    assert preds == ["y feature", "z feature"] and idx == [1, 2]


def test_no_signal_replaces_vectors_deterministically():
    df = pl.DataFrame(
        {"id": ["a", "b"], "vector": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]},
        schema_overrides={"vector": pl.List(pl.Float32)},
    )
    out = withhold_signal(df, "features")
    assert out["vector"].to_list() == withhold_signal(df, "features")["vector"].to_list()
    vecs = out["vector"].to_list()
    assert [len(v) for v in vecs] == [3, 3] and vecs[0] != vecs[1]
    assert out["vector"].to_list() != df["vector"].to_list()
    assert applies("features", "nearest_neighbour") and applies("features", "no_signal")
    assert not applies("patching", "nearest_neighbour")
    assert task_variants("features") == (
        "trained",
        "untrained",
        "no_signal",
        "nearest_neighbour",
        "floor",
        "ceiling",
    )
    assert not applies("hint", "no_signal")  # one question per prompt: nothing to shuffle


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_similarity_metric(embedder):
    sims = similarities(
        embedder,
        ["capital cities of Europe", "capital cities of Europe"],
        ["capital cities of Europe", "integrals and derivatives"],
    )
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] < 0.5


def test_simulation_picks_own_contexts_out_of_distractors(embedder):
    def meta(f, snippets):
        exs = [{"left": s, "token": "", "right": "", "activation": 1.0} for s in snippets]
        return json.dumps({"feature": f, "examples": exs})

    cities = [
        "Paris is the capital of France",
        "Rome is the capital of Italy",
        "Berlin is the capital of Germany",
    ]
    maths = [
        "the integral of x squared",
        "take the derivative of the function",
        "solve the differential equation",
    ]
    food = ["bake the bread in the oven", "add salt to the soup", "fry the onions in butter"]
    examples = pl.DataFrame(
        {"answer": ["capital cities", "calculus"], "meta": [meta(0, cities), meta(1, maths)]}
    )
    pool = pl.DataFrame({"meta": [meta(0, cities), meta(1, maths), meta(2, food)]})
    rows = score_feature_rows(
        examples,
        ["capital cities of countries", "calculus: integrals and derivatives"],
        pool=pool,
        embedder=embedder,
        n_distractors=2,
    )
    assert rows["simulation"].to_list() == [1.0, 1.0]
    wrong = score_feature_rows(
        examples, ["calculus", "capital cities"], pool=pool, embedder=embedder, n_distractors=2
    )
    assert wrong["simulation"].to_list() == [0.0, 0.0]
    m = feature_metrics(rows)
    assert m["simulation"] == 1.0 and m["valid"] == 1.0 and 0 < m["similarity"] <= 1


# --------------------------------------------------------------------------- config


def _default_config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("holdout", "band", "'features.holdout'"),
        ("describer", {"kind": "gpt"}, "'features.describer.kind'"),
        ("n_latents", 1, "'features.n_latents'"),
        ("k", "32", "'features.k'"),
        ("sae_epochs", 0, "'features.sae_epochs'"),
    ],
)
def test_schema_errors_name_the_features_key(key, value, expected):
    config = _default_config()
    config["features"][key] = value
    problems = config_problems(config, REPO / "workflow/schemas/config.schema.yaml")
    assert any(expected in p for p in problems), problems


def test_default_config_is_valid_and_runs_features():
    config = _default_config()
    assert config_problems(config, REPO / "workflow/schemas/config.schema.yaml") == []
    assert "features" in config["tasks"]
    assert {"no_signal", "nearest_neighbour"} <= set(config["variants"])


def test_norm_outliers_are_left_out():
    windows = torch.zeros(2, 6, dtype=torch.long)
    acts = torch.ones(2, 6, 4)
    acts[1, 3] *= 500.0  # a sink-sized residual in the middle of a window
    mask = token_mask(windows, acts)
    assert not mask[:, 0].any() and not mask[1, 3] and int(mask.sum()) == 2 * 5 - 1
    train, held = split_tokens(windows, acts, heldout_fraction=0.5)
    assert len(train) == 5 and len(held) == 4 and float(held.norm(dim=-1).max()) == 2.0


def test_local_hf_describer_and_judge(tmp_path, tiny_records):
    """kind "hf": a local model directory is prompted (greedy, so deterministic); an empty reply
    falls back on the template, so every feature gets a description."""
    from selfexplain.features.describe import LocalLM
    from selfexplain.models import resolve

    *_, records = tiny_records
    model_dir = resolve("tiny-random-llama", tmp_path / "m")
    settings = {"kind": "hf", "model": str(model_dir), "max_new_tokens": 6}
    first = describe_records(records[:3], settings)
    assert first == describe_records(records[:3], settings)
    lm = LocalLM(model_dir, max_new_tokens=6)
    replies = lm.complete([describer_prompt(r) for r in records[:3]])
    for reply, text, r in zip(replies, first, records[:3], strict=True):
        assert text == (reply or deterministic_description(r))
    scores = judge_scores(lm, ["a", "b"], ["c", "d"])
    assert all(s is None or 0 <= s <= 1 for s in scores) and len(scores) == 2


def test_nearest_neighbour_looks_up_the_explainers_training_draw(embedder, monkeypatch):
    """The nearest_neighbour baseline's pool is exactly the trained explainers' training rows
    (experiment.training_rows: validation split carved off, n_train drawn), not a draw of its
    own."""
    import types

    from selfexplain.data.draws import training_rows
    from selfexplain.features import metrics as feature_metrics
    from selfexplain.run import evaluate_run

    monkeypatch.setattr(feature_metrics, "default_embedder", lambda: embedder)
    examples = to_frame(feature_examples(_records(), torch.randn(50, 8), "tiny", 2))
    train_settings = {"n_train": 12, "val_fraction": 0.25}
    run = types.SimpleNamespace(
        task="features", target="tiny", explainer="tiny", variant="nearest_neighbour", seed=0
    )
    rows = evaluate_run(
        examples,
        run,
        model_dir=None,
        adapter_dir=None,
        settings={"n_test": None, "batch_size": 4},
        train_settings=train_settings,
        features={"n_distractors": 2, "judge": None},
    )
    pool, _ = training_rows(
        examples, "features", "trained", 0, n_train=12, n_variant=None, val_fraction=0.25
    )
    assert len(pool) == 12
    test = examples.filter(pl.col("split") == "test")
    expected, _ = nearest_neighbour_answers(
        pool["vector"].to_list(), pool["answer"].to_list(), test["vector"].to_list()
    )
    by_id = dict(zip(test["id"], expected, strict=True))
    assert rows["prediction"].to_list() == [by_id[i] for i in rows["id"]]
    assert set(rows["prediction"]) <= set(pool["answer"])
