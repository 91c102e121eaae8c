"""train.per_task: a task's own fine-tuning settings over the train section's, in the typed
settings, the schema, the run's TrainConfig and config/paper.yaml (the reference
hyper-parameters)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from toy_data import toy_patching_rows

from selfexplain.config import load_schema
from selfexplain.core.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "workflow/schemas/config.schema.yaml")  # the registries filled in


def test_per_task_keys_override_the_section_for_their_task_only():
    settings = TrainSettings.from_dict(
        {
            "lr": 1e-3,
            "lora_r": 16,
            "epochs": 2,
            "per_task": {"patching": {"lr": 5e-5, "lora_r": 128}, "hint": {"method": "full"}},
        }
    )
    patching = settings.config(seed=3, task="patching")
    assert (patching.lr, patching.lora_r, patching.epochs, patching.seed) == (5e-5, 128, 2, 3)
    ablation = settings.config(seed=0, task="ablation")
    assert (ablation.lr, ablation.lora_r, ablation.method) == (1e-3, 16, "lora")
    assert settings.config(seed=0) == ablation  # no task: the section's keys alone
    assert settings.method("hint") == "full" and settings.config(0, "hint").method == "full"
    assert settings.method("patching") == "lora" and settings.method("features") == "lora"
    assert TrainSettings.from_dict({"method": "full"}).method("ablation") == "full"


def test_a_job_s_params_hold_only_its_own_task_s_per_task_keys():
    """Snakemake reruns a job whose params change: a patching job's params stay the same when
    only ablation's per-task keys are edited."""
    section = {"lr": 1e-3, "per_task": {"ablation": {"lr_scheduler": "cosine"}}}
    edited = section | {"per_task": {"ablation": {"lr_scheduler": "linear"}}}
    patching = TrainSettings.job_params(section, "patching")
    assert patching == {"lr": 1e-3, "per_task": {}}
    assert TrainSettings.job_params(edited, "patching") == patching
    assert TrainSettings.job_params(section, None) == patching  # token_identity
    ablation = TrainSettings.job_params(section, "ablation")
    assert ablation == section and TrainSettings.job_params(edited, "ablation") != ablation
    assert TrainSettings.job_params({"lr": 1e-3}, "hint") == patching  # per_task unset
    assert section["per_task"] == {"ablation": {"lr_scheduler": "cosine"}}  # not modified


def test_per_task_names_an_unknown_task_or_key():
    with pytest.raises(ValueError, match=r"'train.per_task.patchng'.*'patching'"):
        TrainSettings.from_dict({"per_task": {"patchng": {"lr": 1e-5}}})
    with pytest.raises(ValueError, match=r"\['n_train'\].*'train.per_task.hint'.*'lr'"):
        TrainSettings.from_dict({"per_task": {"hint": {"n_train": 10}}})


def test_per_task_schema_allows_exactly_the_train_fine_tuning_keys():
    """One list of fine-tuning keys: the schema's per-task entry has train's keys that are
    TrainConfig fields (TrainSettings.HYPER_KEYS), each with train's type and range, no default
    (a key left out falls back to the section's); its task names are the config's tasks."""
    from selfexplain.core.settings import TrainConfig

    train = SCHEMA["properties"]["train"]["properties"]
    per_task = train["per_task"]
    assert per_task["default"] == TrainSettings().per_task  # the default's own per-task keys
    assert per_task["propertyNames"]["enum"] == SCHEMA["properties"]["tasks"]["items"]["enum"]
    assert list(TrainSettings.TASKS) == per_task["propertyNames"]["enum"]
    entry = per_task["additionalProperties"]
    assert entry["additionalProperties"] is False
    expected = {
        key: {k: v for k, v in train[key].items() if k not in ("default", "description")}
        for key in TrainSettings.HYPER_KEYS
    }
    assert entry["properties"] == expected
    assert TrainSettings.DEFAULT_METHOD == TrainConfig().method == train["method"]["default"]


def test_train_run_trains_with_its_task_settings(monkeypatch, tmp_path):
    """experiment.train_run hands train_explainer the TrainConfig of the run's task."""
    import selfexplain.run
    from selfexplain.run import train_run

    seen = {}

    def fake_train_explainer(model_dir, train, out_dir, cfg, *args, **kwargs):
        seen["cfg"], seen["n"], seen["answers"] = cfg, len(train), train["answer"].to_list()
        seen["validation"] = kwargs["validation"]
        return {}

    monkeypatch.setattr(selfexplain.run, "train_explainer", fake_train_explainer)
    settings = {
        "n_train": None,
        "val_fraction": 0.0,
        "lr": 1e-3,
        "per_task": {"patching": {"lr": 5e-5, "method": "full", "epochs": 20}},
    }
    run = SimpleNamespace(task="patching", variant="trained", seed=1)
    train_run(
        toy_patching_rows(),
        run,
        model_dir=tmp_path,
        out_dir=tmp_path / "out",
        train_settings=settings,
        features={},
    )
    cfg = seen["cfg"]
    assert (cfg.lr, cfg.method, cfg.epochs, cfg.seed) == (5e-5, "full", 20, 1)
    assert seen["n"] > 0 and "unchanged" in seen["answers"]
    # train.answer_format: paper rewrites the training and validation rows (labels stay compact)
    settings |= {"answer_format": "paper", "val_fraction": 0.5}
    kwargs = {"model_dir": tmp_path, "out_dir": tmp_path / "out", "features": {}}
    train_run(toy_patching_rows(n_pairs=12), run, train_settings=settings, **kwargs)
    assert {a.split(" <<<")[0] for a in seen["answers"]} == {
        "The output would remain unchanged from",
        "The most likely output would change to",
    }
    assert all(a.startswith("The ") for a in seen["validation"]["answer"])


def _paper_train() -> TrainSettings:
    """config/paper.yaml's train section merged over config/config.yaml's as `--configfile`
    merges it: recursively, so a per-task key of the default that paper.yaml leaves out stays."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config/paper.yaml").read_text()))
    return TrainSettings.from_dict(config["train"])


def test_the_default_decays_only_input_ablation_s_lr():
    """config/config.yaml's per-task keys: input ablation (task ablation) decays its LR on a
    cosine after the warm-up and runs the whole cosine (no early stop while the LR is high);
    every other task keeps the section's constant LR and its early stopping."""
    default = yaml.safe_load((REPO / "config/config.yaml").read_text())["train"]
    train = TrainSettings.from_dict(default)
    ablation = train.config(seed=0, task="ablation")
    assert (ablation.lr_scheduler, ablation.patience) == ("cosine", 0)
    for task in ("patching", "hint", "features", None):
        cfg = train.config(seed=0, task=task)
        assert (cfg.lr_scheduler, cfg.patience) == ("constant_with_warmup", 3), task
    assert default["per_task"] == TrainSettings().per_task  # the typed default says the same


def test_paper_config_has_the_reference_hyper_parameters():
    """PAPER_DATA.md: constant LR, weight decay 0.01; patching LoRA r=128, alpha=16, dropout
    0.1, lr 5e-5, 20 epochs, batch 32; input ablation (ablation and hint) full, lr 1e-5, 30
    epochs, batch 8; features full, lr 5e-5, 10 epochs, batch 64."""
    train = _paper_train()
    assert (train.answer_format, train.question_format) == ("paper", "paper")
    expected = {
        "patching": ("lora", 5e-5, 20, 32),
        "ablation": ("full", 1e-5, 30, 8),
        "hint": ("full", 1e-5, 30, 8),
        "features": ("full", 5e-5, 10, 64),
    }
    for task, (method, lr, epochs, batch) in expected.items():
        cfg = train.config(seed=0, task=task)
        assert (cfg.method, cfg.lr, cfg.epochs) == (method, lr, epochs), task
        assert cfg.batch_size * cfg.grad_accum == batch, task
        assert (cfg.lr_scheduler, cfg.weight_decay) == ("constant", 0.01), task
        assert cfg.patience == 3, task  # a constant LR stops early (config.yaml's cosine: 0)
        if method == "full":
            assert cfg.deepspeed == "config/deepspeed/zero3.json", task
            assert (REPO / cfg.deepspeed).is_file()
    patching = train.config(seed=0, task="patching")
    assert (patching.lora_r, patching.lora_alpha, patching.lora_dropout) == (128, 16, 0.1)
