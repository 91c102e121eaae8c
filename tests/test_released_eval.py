"""The paper's released explainers (selfexplain.hub.released_eval): asked in the reference chat and
answer strings about an imported label set's test rows, scored by our metrics and by the
reference definitions; tested with a tiny full checkpoint and the released-format fixtures.
Patching explainers read the row's patched vector at a reserved token: a tiny checkpoint whose
tokenizer has <b>, <v>, <e> added stands in for one."""

from __future__ import annotations

import contextlib
import json

import polars as pl
import pytest
import torch
from test_layout import dry_run_jobs
from test_pipeline import REPO, run_snakemake

from selfexplain.core.formats import (
    HINT_QUESTION,
    hint_answer,
    hint_messages,
    patching_answer,
    patching_question,
)
from selfexplain.core.schema import meta
from selfexplain.hub.released import import_labels
from selfexplain.hub.released_eval import (
    ReservedTokenInjector,
    chat_prompt,
    evaluate_released,
    load_released,
    reference_metrics,
)
from selfexplain.models import resolve, tiny_random

HINT_DIR = REPO / "tests/data/released/input_ablation"
PATCH_DIR = REPO / "tests/data/released/act_patch"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture()
def hint_rows(tmp_path):
    return import_labels("hint", str(HINT_DIR), "llama", cache_dir=str(tmp_path / "hf-cache"))


def test_reference_metrics_hand_computed():
    golds = [
        "The most likely output would change to <<<Answer: B>>>.",
        "The output would remain unchanged from <<<Answer: A>>>.",
        "The output would remain unchanged from <<<Answer: C>>>.",
        "The most likely output would change to <<<Answer: D>>>.",
    ]
    preds = [
        "the most likely output would change to <<<answer: b>>>.",  # case ignored: exact
        "The most likely output would change to <<<Answer: A>>>.",  # wrong change, same content
        "The output would remain unchanged from <<<Answer: C>>>.",  # exact
        "no idea",  # unparseable: wrong
    ]
    m = reference_metrics(golds, preds)
    assert m["exact_match"] == 0.5 and m["content_match"] == 0.75 and m["n"] == 4
    # changed: gold T F F T, pred T T F None -> F1(changed) = 2/3 (P 1/2, R 1/2 ... ) by hand:
    # changed class: tp 1, predicted 2, gold 2 -> P = R = 0.5 -> F1 0.5
    # unchanged class: tp 1, predicted 1, gold 2 -> P 1, R 0.5 -> F1 2/3
    assert m["has_changed_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="3 predictions for 4"):
        reference_metrics(golds, preds[:3])


def test_reference_chat_and_answers_of_an_imported_row(hint_rows):
    rows = meta(hint_rows.filter(hint_rows["split"] == "test"))
    first = rows[0]  # with the hint the model says A, without it B: changed
    messages = hint_messages(first)
    assert messages[0] == {"role": "system", "content": first["system_prompt"]}
    assert messages[1]["content"] == f"{first['prompt']}\n\n{HINT_QUESTION}"
    assert "Hint: I think the answer is (A)" in messages[1]["content"]
    assert hint_answer(first) == "The most likely output would change to <<<Answer: B>>>."
    assert hint_answer(rows[1]) == "The output would remain unchanged from <<<Answer: B>>>."
    _, tok = tiny_random("tiny-random-llama", seed=0)
    tok.chat_template = None
    plain = chat_prompt(tok, messages)
    assert plain.startswith(first["system_prompt"]) and plain.endswith(HINT_QUESTION + "\n\n")
    tok.chat_template = TEMPLATE
    chat = chat_prompt(tok, messages)
    assert chat.startswith(tok.bos_token + "<system>") and chat.endswith("</s><assistant>")
    assert tok(chat)["input_ids"].count(tok.bos_token_id) == 1

    class AddsBos:  # a tokenizer that puts BOS in front of every text (as Llama 3's does)
        chat_template, bos_token, bos_token_id = TEMPLATE, "<B>", 1

        def __call__(self, text):
            return {"input_ids": [1, 5]}

        def apply_chat_template(self, messages, **kwargs):
            return "<B>" + tok.apply_chat_template(messages, **kwargs)[len(tok.bos_token) :]

    # the template's BOS is dropped when the tokenizer adds its own: one BOS in the ids
    assert chat_prompt(AddsBos(), messages).startswith("<system>")


def test_a_released_full_checkpoint_answers_every_test_row(tmp_path, hint_rows):
    checkpoint = resolve("tiny-random-llama", tmp_path / "released")
    labels = {"task": "hint", "variant": "released", "explainer": "tiny-released"}
    rows, metrics = evaluate_released(
        hint_rows, "hint", model=str(checkpoint), labels=labels, max_new_tokens=6
    )
    n_test = hint_rows.filter(hint_rows["split"] == "test").height
    assert rows.height == n_test == metrics["n"]
    assert rows["variant"].unique().to_list() == ["released"]
    assert all(a.startswith("The ") and "<<<Answer: " in a for a in rows["answer"])
    assert set(rows["tf_score"].to_list()) <= {-1.0, 0.0, 1.0}
    for key in ("exact_match", "has_changed_f1", "content_match"):
        assert 0.0 <= metrics[key] <= 1.0 or metrics[key] != metrics[key]


def released_patching_explainer():
    """A tiny llama whose tokenizer has the reserved tokens <b>, <v>, <e> (as the released
    patching explainers' do), with its embeddings resized for them."""
    model, tok = tiny_random("tiny-random-llama", seed=0)
    tok.add_special_tokens({"additional_special_tokens": ["<b>", "<v>", "<e>"]})
    model.resize_token_embeddings(len(tok))
    return model.eval(), tok


def patching_rows(tmp_path, width: int):
    """The released patching fixture imported, its vectors of the explainer's width."""
    src = tmp_path / "act_patch"
    src.mkdir()
    for split in ("train", "test"):
        lines = (PATCH_DIR / f"{split}.jsonl").read_text().splitlines()
        recs = [json.loads(line) for line in lines]
        for i, rec in enumerate(recs):
            rec["patch_position"]["intervention_vector"] = [0.1 * (i + 1)] * width
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return import_labels("patching", str(src), "llama", cache_dir=str(tmp_path / "hf-cache"))


def test_reference_patching_question_and_answers_of_an_imported_row(tmp_path):
    rows = meta(patching_rows(tmp_path, 4))
    first = rows[0]  # " Eiffel" patched over layers 0-3, the output changes from " A" to " B"
    assert patching_question(first) == (
        "If feature <b><v><e> at layer 0, 1, 2, 3 is added to tokens <Eiffel> when processing "
        "the text <<<The Eiffel Tower is in\n\nAnswer:>>>, how would the output change?"
    )
    assert "Colosseum" not in patching_question(first)  # the counterfactual text is not shown
    assert patching_question(first, "<|reserved_special_token_3|>").startswith(
        "If feature <b><|reserved_special_token_3|><e> at layer 0, 1, 2, 3"
    )
    assert patching_answer(first) == "The most likely output would change to <<<B>>>."
    assert patching_answer(rows[1]) == "The output would remain unchanged from <<<A>>>."


def test_the_patched_vector_is_the_input_embedding_at_the_reserved_token():
    """Inside inject, the hidden state entering block 0 is the vector, raw, at <v> of each row
    (left padding included) and the embedding everywhere else."""
    model, tok = released_patching_explainer()
    injector = ReservedTokenInjector(model, tok)
    texts = ["If feature <b><v><e> at layer 0", "<b><v><e> at layer 1, 2, 3 the text"]
    enc = tok(texts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    vectors = torch.randn(2, model.config.hidden_size) * 7

    def entering_block_0(injected: bool) -> torch.Tensor:
        seen = {}
        with torch.no_grad(), contextlib.ExitStack() as stack:
            if injected:
                stack.enter_context(injector.inject(model, ids, vectors, allowed=mask))
            # registered after the injection's hook, so it sees what block 0 gets
            handle = model.model.layers[0].register_forward_pre_hook(
                lambda m, args, kwargs: seen.update(h=args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
            stack.callback(handle.remove)
            model(input_ids=ids, attention_mask=mask)
        return seen["h"]

    injected, plain = entering_block_0(True), entering_block_0(False)
    v_id = tok.convert_tokens_to_ids("<v>")
    for row in range(2):
        pos = int((ids[row] == v_id).nonzero())
        assert torch.allclose(injected[row, pos], vectors[row])  # raw: no rescaling
        others = [p for p in range(ids.shape[1]) if p != pos]
        assert torch.equal(injected[row, others], plain[row, others])
    with pytest.raises(ValueError, match="width 5, the released explainer 64"):
        with injector.inject(model, ids, torch.zeros(2, 5)):
            pass


def test_a_released_patching_explainer_answers_every_test_row(tmp_path):
    model, tok = released_patching_explainer()
    rows_in = patching_rows(tmp_path, model.config.hidden_size)
    labels = {"task": "patching", "variant": "released", "explainer": "tiny-released"}
    calls = []
    inject = ReservedTokenInjector.inject

    def counting(self, model, input_ids, vectors, allowed=None):
        calls.append((vectors.clone(), tok.batch_decode(input_ids)))
        return inject(self, model, input_ids, vectors, allowed)

    ReservedTokenInjector.inject = counting
    try:
        rows, metrics = evaluate_released(
            rows_in, "patching", model="x", labels=labels, max_new_tokens=4, explainer=(model, tok)
        )
    finally:
        ReservedTokenInjector.inject = inject
    test = rows_in.filter(rows_in["split"] == "test")
    assert rows.height == test.height == metrics["n"] == 2
    assert [a.split(" <<<")[0] for a in rows["answer"]] == [
        "The most likely output would change to",
        "The output would remain unchanged from",
    ]
    # one batch: every test row's own vector went in, with its reference question
    (vectors, asked), *_ = calls
    assert torch.allclose(vectors, torch.tensor(test["vector"].to_list()))
    assert ["<b><v><e> at layer" in q and "Federer" not in q for q in asked] == [True, True]


def test_released_patching_refuses_rows_without_vectors_and_a_missing_vector_token(tmp_path):
    model, tok = tiny_random("tiny-random-llama", seed=0)
    labels = {"task": "patching", "variant": "released"}
    rows = patching_rows(tmp_path, model.config.hidden_size)
    with pytest.raises(ValueError, match="2 of 2 patching test rows carry no patched vector"):
        evaluate_released(
            rows.with_columns(vector=None),
            "patching",
            model="x",
            labels=labels,
            explainer=(model, tok),
        )
    # the plain tiny tokenizer spells "<v>" in several tokens: name the setting that fixes it
    with pytest.raises(ValueError, match="'<v>' as [0-9]+ tokens.*released.<name>.vector_token"):
        evaluate_released(rows, "patching", model="x", labels=labels, explainer=(model, tok))


def test_unsupported_tasks_and_missing_explainers_are_named(tmp_path, hint_rows, monkeypatch):
    with pytest.raises(ValueError, match="supported for .*not 'features'"):
        evaluate_released(hint_rows, "features", model="x", labels={})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="cannot load the released explainer.*huggingface-cli"):
        load_released("nobody-here/no-such-explainer")


def test_dag_scores_a_configured_released_explainer(tmp_path):
    """snakemake -n released: one evaluate_released job per entry (hint, and patching with its
    vector token), reading its target's labels of the task; a task without released explainers
    is refused by the schema before any rule runs."""
    config = tmp_path / "released.yaml"
    config.write_text(
        f"hint:\n  labels_from:\n    tiny: {HINT_DIR}\n"
        f"patching:\n  labels_from:\n    tiny: {PATCH_DIR}\n"
        "released:\n  paper_hint:\n    task: hint\n    target: tiny\n"
        "    model: Transluce/input_ablation_qwen3_8b_qwen3_8b_hint\n"
        "  paper_patching:\n    task: patching\n    target: tiny\n"
        "    model: meta-llama/Llama-3.1-8B\n"
        "    adapter: Transluce/act_patch_llama3.1_8b_llama3.1_8b\n"
        "    vector_token: <|reserved_special_token_1|>\n"
    )
    base = ["-n", "released", "--configfile", str(REPO / "tests/data/tiny.yaml"), str(config)]
    proc = run_snakemake(tmp_path, *base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = [j for j in dry_run_jobs(out) if j["rule"] == "evaluate_released"]
    assert sorted(j["wildcards"]["name"] for j in jobs) == ["paper_hint", "paper_patching"]
    outputs = sorted(f for j in jobs for f in j["output"])
    assert outputs == [
        f"results/released/{name}.{ext}"
        for name in ("paper_hint", "paper_patching")
        for ext in ("json", "parquet")
    ]
    blocks = out.split("rule evaluate_released:\n")[1:]
    inputs = sorted(b.split("\n\n", 1)[0].split("input: ")[1].split("\n")[0] for b in blocks)
    assert inputs == ["results/labels/hint/tiny.parquet", "results/labels/patching/tiny.parquet"]
    config.write_text(
        "released:\n  bad:\n    task: features\n    target: tiny\n    model: some/id\n"
    )
    proc = run_snakemake(tmp_path, *base)
    assert proc.returncode != 0 and "features" in proc.stdout + proc.stderr


def test_question_format_paper_asks_our_explainer_the_reference_hint_turn(hint_rows):
    """train.question_format paper: hint questions become the released explainers' user turn
    (system prompt, hinted prompt, HINT_QUESTION); other tasks and compact keep ours."""
    from selfexplain.core.schema import with_question_format

    out = with_question_format(hint_rows, "hint", "paper")
    _, tok = tiny_random("tiny-random-llama", seed=0)
    tok.chat_template = None  # chat_prompt then writes the turns as plain paragraphs
    for question, row in zip(out["question"], meta(hint_rows), strict=True):
        assert question + "\n\n" == chat_prompt(tok, hint_messages(row))
    assert out["answer"].to_list() == hint_rows["answer"].to_list()
    assert with_question_format(hint_rows, "hint", "compact") is hint_rows
    assert with_question_format(hint_rows, "ablation", "paper") is hint_rows
    with pytest.raises(ValueError, match="unknown question format 'chat'"):
        with_question_format(hint_rows, "hint", "chat")


def test_a_run_trained_on_paper_questions_is_evaluated_on_them(hint_rows, tmp_path, monkeypatch):
    """train_run hands the trainer paper-format hint questions and records the format;
    evaluate_run asks the trained run in the format its summary records."""

    import selfexplain.run
    from selfexplain.run import evaluate_run, train_run

    seen = {}

    def fake_train(model_dir, train, out_dir, cfg, *args, **kwargs):
        seen["questions"], seen["format"] = train["question"].to_list(), kwargs["question_format"]
        return {}

    monkeypatch.setattr(selfexplain.run, "train_explainer", fake_train)
    run = {"task": "hint", "target": "llama", "explainer": "e", "variant": "trained", "seed": 0}
    settings = {"n_train": None, "val_fraction": 0.0, "question_format": "paper"}
    kwargs = {"model_dir": tmp_path, "features": {}}
    train_run(hint_rows, run, out_dir=tmp_path / "out", train_settings=settings, **kwargs)
    assert seen["format"] == "paper" and seen["questions"]
    assert all(q.endswith("\n\n" + HINT_QUESTION) for q in seen["questions"])

    def fake_evaluate(model, tokenizer, asked, **kw):
        seen["asked"] = asked["question"].to_list()
        return asked.select("id").with_columns(tf_threshold=pl.lit(0.0))

    monkeypatch.setattr(selfexplain.run, "load_explainer", lambda *a: (None, None))
    monkeypatch.setattr(selfexplain.run, "evaluate_change_task", fake_evaluate)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for fmt, ends_paper in (("paper", True), (None, False)):  # None: a run trained before
        (adapter / "train_summary.json").write_text(json.dumps({"question_format": fmt}))
        evaluate_run(
            hint_rows,
            run,
            adapter_dir=adapter,
            settings={},
            train_settings={},
            **kwargs,
        )
        assert seen["asked"] and {q.endswith(HINT_QUESTION) for q in seen["asked"]} == {ends_paper}
