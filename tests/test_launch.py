"""One training job over several processes (selfexplain.train.launch): torchrun workers on CPU
(gloo), through run.train_run as the train_explainer rule calls it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from toy_data import toy_patching_rows

from selfexplain.core.settings import TrainConfig
from selfexplain.models import resolve
from selfexplain.run import train_run
from selfexplain.train.launch import SPEC, n_processes
from selfexplain.train.trainer import train_explainer

REPO = Path(__file__).resolve().parents[1]


def test_processes_per_job():
    assert n_processes(3) == 3
    assert n_processes(None) >= 1  # one per visible GPU; 1 on this CPU machine
    with pytest.raises(ValueError, match="train.processes must be at least 1"):
        n_processes(0)


def _train(tmp_path, processes, deepspeed=None):
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    settings = {
        "n_train": None,
        "val_fraction": 0.3,
        "n_val": None,
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-2,
        "eval_steps": 4,
        "patience": 0,
        "processes": processes,
        "deepspeed": deepspeed,
    }
    run = SimpleNamespace(task="patching", variant="trained", seed=0)
    out = tmp_path / f"p{processes}"
    summary = train_run(
        toy_patching_rows(n_pairs=10),
        run,
        model_dir=model_dir,
        out_dir=out / "adapter",
        train_settings=settings,
        features={},
        checkpoint_dir=out / "ckpt",
    )
    return summary, out


@pytest.mark.parametrize("zero", [None, "zero2"])
def test_a_job_trains_in_two_processes(tmp_path, zero, monkeypatch):
    """torchrun starts two workers; a step still takes batch_size questions (same steps as one
    process), both workers take the same validation scores and stops, rank 0 writes the
    outputs once, and the workers write into the job's log. With ZeRO-2 the optimizer state
    is sharded: one partition per process."""
    deepspeed = None if zero is None else str(REPO / f"config/deepspeed/{zero}.json")
    if zero is not None:
        pytest.importorskip("deepspeed")
    one, _ = _train(tmp_path, 1)
    log = tmp_path / "job.log"
    with log.open("w") as f:
        monkeypatch.setattr("sys.stdout", f)  # as workflow/scripts/train_explainer.py does
        two, out = _train(tmp_path, 2, deepspeed)
    assert "worker 0 of 2" in log.read_text()
    assert "validation step 14" in log.read_text()
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["steps"] == one["steps"] == 14  # 2 epochs x ceil(28 rows / 4)
    assert [p["step"] for p in two["validation"]] == [p["step"] for p in one["validation"]]
    assert two["n_validation"] == one["n_validation"] > 0
    written = json.loads((out / "adapter" / "train_summary.json").read_text())
    assert written["processes"] == 2 and written["steps"] == 14
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "ckpt" / SPEC).read_text())["run"]["task"] == "patching"
    losses = [e["loss"] for e in two["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    if zero is not None:
        shards = sorted(p.name for p in (out / "ckpt").glob("checkpoint-14/global_step14/*optim*"))
        assert len(shards) == 2 and "zero_pp_rank_1" in shards[1]


def test_a_batch_that_does_not_split_across_processes_is_refused(tmp_path, monkeypatch):
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"batch_size \(4\) must split evenly across the 3"):
        train_explainer(
            model_dir, toy_patching_rows(), tmp_path / "a", TrainConfig(batch_size=4, pack=1)
        )


def test_a_failed_launch_says_so(tmp_path):
    """A worker that fails (here: batch_size 3 across 2 processes) fails the job with a message
    naming the launch and the way back to one process."""
    model_dir = resolve("tiny-random-llama", tmp_path / "model")
    with pytest.raises(RuntimeError, match="torchrun with 2 processes failed.*train.processes: 1"):
        train_run(
            toy_patching_rows(),
            SimpleNamespace(task="patching", variant="trained", seed=0),
            model_dir=model_dir,
            out_dir=tmp_path / "out",
            train_settings={"processes": 2, "batch_size": 3, "pack": 1, "val_fraction": 0.0},
            features={},
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert not (tmp_path / "out" / "train_summary.json").exists()
