"""Our own patching explainer asked the paper's question (train.question_format: paper): the
labels keep each patch's vector, the question names layers, token and prompt but not the
counterfactual, and the vector goes in at the question's feature placeholder in training,
teacher-forced scoring, generation and the no_signal / prompt_only controls."""

from __future__ import annotations

import json
from types import SimpleNamespace

import polars as pl
import pytest
import torch
from test_patching import _pair

from selfexplain.core.formats import PATCHING_QUESTION, PLACEHOLDER, format_prompt
from selfexplain.core.schema import meta, with_question_format
from selfexplain.data.variants import apply_control
from selfexplain.evaluate.scoring import answer_forms, change_scores
from selfexplain.features.injection import Injector, inject_residual
from selfexplain.models import decoder_layers, resolve
from selfexplain.prompts import counterfactual_pairs
from selfexplain.run import evaluate_run, train_run
from selfexplain.tasks import patching
from selfexplain.tasks.ablation import encode


def _block_outputs(model, tok, text: str) -> list[torch.Tensor]:
    """The output of every block at every position, (seq, d) each, by plain forward hooks."""
    outs = []
    hooks = [
        layer.register_forward_hook(
            lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o)
        )
        for layer in decoder_layers(model)
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([encode(tok, text)]))
    finally:
        for h in hooks:
            h.remove()
    return [o[0] for o in outs]


@pytest.fixture(scope="module")
def paper_labels(tiny_llama):
    model, tok = tiny_llama
    pairs = counterfactual_pairs(40, seed=0)
    return patching.label(
        model, tok, pairs, "tiny", window=2, layer_stride=2, max_pairs=8, max_positions=6
    )


def test_labels_keep_the_vector_the_patch_writes(tiny_llama):
    model, tok = tiny_llama
    clean, cf = _pair()
    rows = patching.patching_rows(model, tok, clean, cf, window=2, layer_starts=[0, 1])
    outputs = _block_outputs(model, tok, cf.text)
    for r in rows:
        expected = outputs[r["layer_start"]][r["position"]]
        assert torch.allclose(torch.tensor(r["vector"]), expected, atol=1e-5)
    examples = patching.patching_examples(rows, "tiny")
    assert examples[0].vector == rows[0]["vector"] and "vector" not in examples[0].meta


def test_the_paper_question_names_layers_token_and_prompt_not_the_counterfactual(paper_labels):
    out = with_question_format(paper_labels, "patching", "paper")
    for question, m in zip(out["question"], meta(paper_labels), strict=True):
        layers = ", ".join(str(x) for x in range(m["layer_start"], m["layer_end"] + 1))
        assert question == PATCHING_QUESTION.format(
            vector=PLACEHOLDER, layers=layers, token=m["token"].strip(), prompt=m["clean"]
        )
        assert m["counterfactual"] not in question
    assert out["vector"].to_list() == paper_labels["vector"].to_list()


def test_controls_withhold_the_vector(paper_labels):
    """no_signal: another row's vector of the same pair (the questions' permutation);
    prompt_only: a zero vector. The paper question is rebuilt from the row's own meta."""
    shuffled = apply_control(paper_labels, "patching", "no_signal", 0)
    before, after = paper_labels["vector"].to_list(), shuffled["vector"].to_list()
    questions = paper_labels["question"].to_list()
    for i, (q, v) in enumerate(zip(shuffled["question"], after, strict=True)):
        j = questions.index(q)  # the row whose question (and so vector) this one shows
        assert j != i and v == before[j]
        assert meta(paper_labels)[j]["pair_id"] == meta(paper_labels)[i]["pair_id"]
    stripped = apply_control(paper_labels, "patching", "prompt_only", 0)
    assert all(set(v) == {0.0} for v in stripped["vector"].to_list())
    assert stripped["vector"].dtype == paper_labels["vector"].dtype
    rebuilt = with_question_format(shuffled, "patching", "paper")["question"]
    assert (
        rebuilt.to_list()
        == with_question_format(paper_labels, "patching", "paper")["question"].to_list()
    )


def test_teacher_forced_scores_read_the_injected_vector(tiny_llama, paper_labels):
    """Left-padded batches score each question as alone, with its vector at its placeholder;
    a different vector gives a different score."""
    model, tok = tiny_llama
    rows = with_question_format(paper_labels.head(5), "patching", "paper")
    injector = Injector.setup(model, tok, len(rows["vector"][0]))
    vectors = rows["vector"].to_list()
    scores = change_scores(
        model, tok, rows["question"].to_list(), vectors=vectors, injector=injector, batch_size=3
    )
    common, changed_id, unchanged_id = answer_forms(tok)
    for question, v, score in zip(injector.render(rows["question"]), vectors, scores, strict=True):
        ids = tok(format_prompt(question))["input_ids"] + common
        pos = ids.index(injector.spec.placeholder_id)
        value = injector.values(torch.tensor([v]))
        with (
            torch.no_grad(),
            inject_residual(model, 0, torch.tensor([0]), torch.tensor([pos]), value),
        ):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        assert score == pytest.approx(float(logp[changed_id] - logp[unchanged_id]), abs=1e-4)
    other = change_scores(
        model, tok, rows["question"].to_list(), vectors=vectors[::-1], injector=injector
    )
    assert not torch.allclose(torch.tensor(scores), torch.tensor(other))


def test_a_paper_format_run_trains_on_and_is_scored_with_the_vectors(
    tiny_llama, paper_labels, tmp_path
):
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    settings = {
        "n_train": None,
        "val_fraction": 0.25,
        "epochs": 1,
        "batch_size": 4,
        "lr": 1e-3,
        "eval_steps": 4,
        "question_format": "paper",
        "answer_format": "paper",
    }
    run = SimpleNamespace(
        task="patching", target="tiny", explainer="tiny", variant="trained", seed=0
    )
    adapter = tmp_path / "adapter"
    summary = train_run(
        paper_labels,
        run,
        model_dir=model_dir,
        out_dir=adapter,
        train_settings=settings,
        features={},
        checkpoint_dir=tmp_path / "ck",
    )
    assert summary["question_format"] == "paper" and summary["answer_format"] == "paper"
    assert summary["validation"] and "auc" in summary["validation"][0]
    assert json.loads((adapter / "injection.json").read_text())["d_in"] == 64
    rows = evaluate_run(
        paper_labels,
        run,
        model_dir=model_dir,
        adapter_dir=adapter,
        settings={"n_test": None, "batch_size": 4, "max_new_tokens": 4},
        train_settings=settings,
        features={},
    )
    assert len(rows) and rows["tf_score"].is_not_nan().all()
    assert rows["id"].to_list() == rows["id"].unique(maintain_order=True).to_list()


def test_paper_questions_without_vectors_are_refused(paper_labels, tmp_path):
    bare = paper_labels.with_columns(
        pl.lit(None, dtype=paper_labels["vector"].dtype).alias("vector")
    )
    run = SimpleNamespace(task="patching", variant="trained", seed=0, target="t", explainer="t")
    with pytest.raises(ValueError, match="no patched vector.*label_patching"):
        train_run(
            bare,
            run,
            model_dir=tmp_path,
            out_dir=tmp_path / "o",
            train_settings={"question_format": "paper", "val_fraction": 0.0},
            features={},
        )


def test_ask_patching_asks_a_paper_format_explainer_its_question_with_the_vector(
    tmp_path, monkeypatch, capsys
):
    """`selfexplain ask patching` reads the format from the run's summary: a paper-format
    explainer is asked the reference question, each cell's own patched vector injected."""
    import selfexplain.evaluate.generation
    from selfexplain.cli import main
    from selfexplain.core.schema import to_frame, write_parquet
    from selfexplain.core.settings import TrainConfig
    from selfexplain.models import load
    from selfexplain.train.trainer import train_explainer

    model_dir = resolve("tiny-random-llama", tmp_path / "resources/models/tiny")
    model, tok = load(model_dir)
    clean, cf = _pair()
    rows = patching.patching_rows(model, tok, clean, cf, window=2, layer_starts=[0, 2])
    labels = to_frame(patching.patching_examples(rows, "tiny", test_fraction=0.0))
    write_parquet(labels, tmp_path / "results/labels/patching/tiny.parquet")
    adapter = tmp_path / "results/explainers/patching/tiny/tiny/trained/s0"
    cfg = TrainConfig(epochs=1, batch_size=4, save_steps=1000, seed=0)
    train_explainer(
        model_dir,
        with_question_format(labels[:8], "patching", "paper"),
        adapter,
        cfg,
        tmp_path / "ckpt",
        question_format="paper",
    )
    seen = {}
    real = selfexplain.evaluate.generation.change_answers

    def spy(model, tokenizer, questions, **kwargs):
        seen["questions"], seen["vectors"] = questions, kwargs["vectors"]
        return real(model, tokenizer, questions, **kwargs)

    monkeypatch.setattr("selfexplain.cli.answers.change_answers", spy)
    args = ["ask", "patching", "--explainer", str(adapter.parent), "--clean", clean.text]
    args += ["--counterfactual", cf.text, "--layer", "2", "--position", "3"]
    assert main(args) == 0
    assert "has_changed_f1=" in capsys.readouterr().out.strip().splitlines()[-1]
    (question,) = seen["questions"]
    assert question.startswith("If feature <b><vector><e> at layer 2, 3 is added to tokens <")
    assert cf.text not in question
    (truth,) = [r for r in rows if (r["layer_start"], r["position"]) == (2, 3)]
    assert seen["vectors"] == [truth["vector"]]


def test_compact_questions_train_without_the_labels_vectors(paper_labels, tmp_path):
    """Patching labels keep each patch's vector, but a compact question names the patch in
    words: train_explainer called on such rows directly injects nothing."""
    from selfexplain.core.settings import TrainConfig
    from selfexplain.train.rows import vectors_asked
    from selfexplain.train.trainer import train_explainer

    assert paper_labels["vector"].null_count() == 0
    assert vectors_asked(paper_labels)["vector"].null_count() == len(paper_labels)
    paper = with_question_format(paper_labels, "patching", "paper")
    assert vectors_asked(paper) is paper
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    cfg = TrainConfig(epochs=1, batch_size=4, save_steps=1000, seed=0)
    summary = train_explainer(model_dir, paper_labels[:8], tmp_path / "a", cfg, tmp_path / "c")
    assert summary["answer_format"] == "compact" and summary["n_sequences"] < 8  # packed
    assert not (tmp_path / "a" / "injection.json").exists()
