import json
import os
from pathlib import Path

import polars as pl
import pytest
import torch
from toy_data import toy_examples

from selfexplain.core.formats import format_prompt
from selfexplain.core.settings import TrainConfig
from selfexplain.evaluate.generation import evaluate_change_task, generate_answers, load_explainer
from selfexplain.models import resolve
from selfexplain.train.encode import IGNORE, RightPadCollator, encode_example
from selfexplain.train.loss import answer_loss
from selfexplain.train.trainer import train_explainer

REPO = Path(__file__).resolve().parents[1]


def test_loss_only_on_answer_tokens(tiny_llama):
    _, tok = tiny_llama
    enc = encode_example(tok, "Why?", "unchanged", max_length=64)
    n_prompt = len(tok(format_prompt("Why?"))["input_ids"])
    assert enc["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert enc["labels"][-1] == tok.eos_token_id


def test_a_question_may_bring_its_own_answer_cue(tiny_llama):
    """Every task's question gets a line "Answer: " after it; a question whose last line is
    "Answer:" (token identity) is used as is, so its answer follows with its own spacing."""
    _, tok = tiny_llama
    assert format_prompt("Why?") == "Why?\nAnswer: "
    assert format_prompt("Which word?\nAnswer:") == "Which word?\nAnswer:"
    enc = encode_example(tok, "Which word?\nAnswer:", " sent", max_length=64)
    assert tok.decode(enc["input_ids"][:-1]).endswith("\nAnswer: sent")


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_answer_loss_equals_the_models_loss_and_gradient(name, request):
    """Logits only at labelled positions give the model's own loss and the same gradients."""
    model, tok = request.getfixturevalue(name)
    qa = [("Is it so?", "unchanged"), ("What if the third token goes?", 'changes to "Paris"')]
    batch = RightPadCollator(tok.pad_token_id)([encode_example(tok, q, a, 64) for q, a in qa])
    assert (batch["attention_mask"] == 0).any()  # right padding is exercised
    grads = []
    for loss_of in (lambda: model(**batch).loss, lambda: answer_loss(model, batch)[0]):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        grads.append((loss.detach(), model.get_output_embeddings().weight.grad.clone()))
    (full, g_full), (ours, g_ours) = grads
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_full, rtol=1e-4, atol=1e-7)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    summed, _ = answer_loss(model, batch, num_items_in_batch=2 * n)  # as with 2 accumulated batches
    torch.testing.assert_close(summed, full / 2, rtol=1e-5, atol=1e-6)
    model.zero_grad()


def test_training_learns_and_resumes(tmp_path):
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    examples = toy_examples()
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-2, save_steps=8, logging_steps=2, seed=0)
    out = tmp_path / "adapter"
    summary = train_explainer(model_dir, examples, out, cfg, tmp_path / "ckpt")
    assert (out / "adapter_model.safetensors").exists()
    losses = [e["loss"] for e in summary["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] * 0.5  # it learns the two answers
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 24

    model, tok = load_explainer(model_dir, out)
    rows = evaluate_change_task(
        model, tok, examples, labels={"variant": "trained"}, max_new_tokens=16, batch_size=8
    )
    assert isinstance(rows, pl.DataFrame) and len(rows) == len(examples)
    assert rows["exact_match"].mean() >= 0.75

    # A second call with the finished checkpoints resumes at the last step instead of retraining.
    again = train_explainer(model_dir, examples, tmp_path / "adapter2", cfg, tmp_path / "ckpt")
    assert again["resumed_from"].endswith("checkpoint-24")


def test_bf16_training_keeps_trained_weights_in_fp32_and_learns(tmp_path):
    """train.precision bf16: the frozen base runs in bfloat16, the adapter is trained and saved
    in float32, validation scores under the same autocast, and the explainer, loaded in fp32
    for evaluation, answers as well as the fp32 one of test_training_learns_and_resumes."""
    from safetensors.torch import load_file

    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    examples = toy_examples()
    cfg = TrainConfig(
        epochs=6, batch_size=4, lr=1e-2, eval_steps=8, patience=0, seed=0, precision="bf16"
    )
    out = tmp_path / "adapter"
    summary = train_explainer(
        model_dir, examples, out, cfg, tmp_path / "ckpt", validation=examples.head(8)
    )
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and {w.dtype for w in weights.values()} == {torch.float32}
    losses = [e["loss"] for e in summary["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] * 0.5
    assert [v["step"] for v in summary["validation"]] == [0, 8, 16, 24]
    assert summary["config"]["precision"] == summary["precision"] == "bf16"
    model, tok = load_explainer(model_dir, out)
    assert next(model.parameters()).dtype == torch.float32
    rows = evaluate_change_task(
        model, tok, examples, labels={"variant": "trained"}, max_new_tokens=16, batch_size=8
    )
    assert rows["exact_match"].mean() >= 0.75
    # scored as validated (bf16 base, autocast), the saved explainer gives the best step's AUC
    from selfexplain.core.formats import parse_change
    from selfexplain.evaluate.generation import as_validated
    from selfexplain.evaluate.scoring import change_scores
    from selfexplain.metrics import auc

    val = examples.head(8)
    gold = [bool(parse_change(a).changed) for a in val["answer"]]
    with as_validated(model, out):
        scores = change_scores(model, tok, val["question"].to_list(), batch_size=8, pack=4)
        bf16_rows = evaluate_change_task(
            model, tok, examples, labels={"variant": "trained"}, max_new_tokens=16, batch_size=8
        )
    assert model.get_output_embeddings().weight.dtype == torch.float32
    assert (
        model.base_model.model.model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    )
    assert auc(gold, scores) == pytest.approx(summary["best"]["value"][0])
    assert bf16_rows["exact_match"].mean() >= 0.75
    for bad, match in (({"precision": "fp16"}, "train.precision"), ({"method": "full"}, "full")):
        with pytest.raises(ValueError, match=match):
            train_explainer(
                model_dir,
                examples,
                tmp_path / "x",
                TrainConfig(**({"precision": "bf16"} | bad)),
                tmp_path / "ckpt-x",
            )


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_bf16_base_keeps_embeddings_and_logits_in_fp32(name, request):
    """to_bf16 casts the blocks to bfloat16 and keeps the embeddings and the output layer in
    float32: under autocast the logits come out float32 and close to the float32 model's."""
    import copy

    from selfexplain.precision import to_bf16

    model, tok = request.getfixturevalue(name)
    ids = tok(["The capital of France is Paris"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        half = copy.deepcopy(model)
        to_bf16(half)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = half(input_ids=ids).logits
    assert half.get_input_embeddings().weight.dtype == torch.float32
    assert half.get_output_embeddings().weight.dtype == torch.float32
    assert half.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_auto_precision_is_bf16_only_for_lora_on_native_bf16(monkeypatch):
    from selfexplain import precision as train

    for native in (True, False):
        monkeypatch.setattr(train, "native_bf16", lambda native=native: native)
        assert train.resolve_precision("auto", "lora") == ("bf16" if native else "fp32")
        assert train.resolve_precision("auto", "full") == "fp32"
        assert train.resolve_precision("fp32", "lora") == "fp32"
        assert train.resolve_precision("bf16", "lora") == "bf16"
        assert train.resolve_precision("auto", "lora", deepspeed="zero2.json") == "fp32"
    with pytest.raises(ValueError, match="train.precision must be one of"):
        train.resolve_precision("fp16", "lora")


def test_batched_generation_matches_one_at_a_time(tiny_llama):
    model, tok = tiny_llama
    questions = ["short?", "a much longer question about the tokens here?", "mid length one?"]
    batched = generate_answers(model, tok, questions, max_new_tokens=6, batch_size=3)
    single = [generate_answers(model, tok, [q], max_new_tokens=6)[0] for q in questions]
    assert batched == single
    assert torch.get_num_threads() >= 1


@pytest.fixture()
def own_process_group():
    """DeepSpeed started without a launcher: train.single_process_env sets the launcher's
    variables and DeepSpeed starts a one-process group. Both are undone afterwards, or every
    later training in the same test process would run as rank 0 of that group."""
    import torch.distributed as dist

    saved = dict(os.environ)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_deepspeed_zero2_trains_on_cpu_single_process(tmp_path, own_process_group):
    pytest.importorskip("deepspeed")
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    cfg = TrainConfig(
        epochs=2,
        batch_size=4,
        lr=1e-2,
        save_steps=4,
        logging_steps=1,
        seed=0,
        deepspeed=str(REPO / "config/deepspeed/zero2.json"),
    )
    summary = train_explainer(model_dir, toy_examples(), tmp_path / "ds", cfg, tmp_path / "ckpt")
    assert summary["steps"] == 8
    losses = [e["loss"] for e in summary["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    # the LR schedule is the config's (constant after warm-up), not one from the ZeRO file
    lrs = [e["learning_rate"] for e in summary["log_history"] if "learning_rate" in e]
    assert lrs[-1] == pytest.approx(1e-2) and lrs[-2] == pytest.approx(1e-2)
    assert (tmp_path / "ds" / "adapter_model.safetensors").exists()
    # ZeRO checkpoints (optimizer state partitions) were written for resuming.
    assert list((tmp_path / "ckpt" / "checkpoint-8").glob("global_step*"))


def test_full_fine_tuning_learns_validates_and_reloads(tmp_path):
    """train.method full trains every weight: the output is a whole model directory (no
    adapter), the best validation step's weights are the ones saved, a rerun resumes, and
    load_explainer answers with it exactly as the trained model does."""
    from selfexplain.evaluate.generation import is_full_model
    from selfexplain.evaluate.scoring import change_scores

    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    examples = toy_examples(24)
    cfg = TrainConfig(
        epochs=4, batch_size=4, lr=2e-3, eval_steps=4, patience=0, seed=0, method="full"
    )
    out = tmp_path / "full"
    summary = train_explainer(
        model_dir, examples.head(16), out, cfg, tmp_path / "ckpt", validation=examples
    )
    assert is_full_model(out) and (out / "model.safetensors").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    assert summary["best"]["value"][0] > summary["validation"][0]["auc"]  # it learned
    model, tok = load_explainer(model_dir, out)
    best_auc = summary["best"]["value"][0]
    from selfexplain.core.formats import parse_change
    from selfexplain.metrics import auc

    gold = [bool(parse_change(a).changed) for a in examples["answer"]]
    scores = change_scores(model, tok, examples["question"].to_list())
    assert auc(gold, scores) == pytest.approx(best_auc)  # the saved model is the best step's
    again = train_explainer(
        model_dir,
        examples.head(16),
        tmp_path / "full2",
        cfg,
        tmp_path / "ckpt",
        validation=examples,
    )
    assert again["resumed_from"] and again["best"] == summary["best"]
    with pytest.raises(ValueError, match="train.method"):
        train_explainer(
            model_dir,
            examples,
            tmp_path / "x",
            TrainConfig(method="qlora"),
            tmp_path / "ckpt-x",
        )


def test_tokenized_rows_are_cached_by_what_they_depend_on(tiny_llama, tmp_path):
    """tokenize_rows is a datasets map: the same rows as encode_example, kept as an Arrow file
    named by the rows, tokenizer and max_length; a second call loads it (the file is not
    written again); other settings make a new file and remove the stale one."""
    import selfexplain.train.encode as train

    _, tok = tiny_llama
    qs, ans = ["Is it so?", "What if the third token goes?"], ["unchanged", 'changes to "x"']
    rows = train.tokenize_rows(tok, qs, ans, 64, tmp_path)
    assert rows == [encode_example(tok, q, a, 64) for q, a in zip(qs, ans, strict=True)]
    (cached,) = tmp_path.glob("tokenized-*.arrow")
    written = cached.stat().st_mtime_ns
    assert train.tokenize_rows(tok, qs, ans, 64, tmp_path) == rows  # from the cache:
    assert cached.stat().st_mtime_ns == written  # the file was not written again
    short = train.tokenize_rows(tok, qs, ans, 20, tmp_path)
    assert short != rows and len(short[1]["input_ids"]) == 20
    assert [p.name for p in tmp_path.glob("tokenized-*.arrow")] != [cached.name]
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 1
    assert train.tokenize_rows(tok, qs, ans, 64) == rows  # no cache dir: in memory
