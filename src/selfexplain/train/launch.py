"""One training job over several processes: torchrun around run.train_run.

Snakemake starts one job per training run. When the job sees more than one GPU, or
``train.processes`` asks for more than one process, ``run.train_run`` hands the job to
``torch.distributed.run`` (torchrun), which starts one worker per process; each worker runs
:func:`selfexplain.run.main`, which runs ``train_run`` again inside the process group. The HF
Trainer then
trains with DDP, or with DeepSpeed ZeRO sharding when ``train.deepspeed`` names a config; the
``batch_size`` questions of a step are split across the workers (same steps as one process),
and rank 0 writes the outputs. On CPU the process group uses gloo (how the tests run it).

    python -m selfexplain.run SPEC.json    # one worker (torchrun starts it; not by hand)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from selfexplain.core.settings import FeatureSettings, TrainSettings
from selfexplain.evaluate.summary import SUMMARY

SPEC = "selfexplain_launch.json"
EXAMPLES = "selfexplain_launch_examples.parquet"


def n_processes(requested: int | None) -> int:
    """Processes for one training job: ``requested`` (train.processes), or one per visible GPU
    when it is None (1 without a GPU)."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"train.processes must be at least 1 (or null), got {requested!r}")
        return int(requested)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def world_size() -> int:
    """Processes in this job's process group (1 outside a launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or no launch): the process that writes a job's outputs."""
    return os.environ.get("RANK", "0") == "0"


def launch_train(
    examples,
    run: dict,
    *,
    processes: int,
    work_dir: str | Path,
    threads: int | None = None,
    **kwargs,
) -> dict:
    """Run run.train_run(examples, run, **kwargs) in ``processes`` torchrun workers and
    return the summary rank 0 wrote. ``work_dir`` holds the spec and the examples the workers
    read (the run's checkpoint directory); kwargs are train_run's, the settings as config
    dicts or sections. ``threads``: CPU threads per worker (default: this process's torch
    threads, which the rule's script sets to the job's, divided among the workers)."""

    spec = write_spec(examples, run, Path(work_dir), **kwargs)
    if not threads:  # the job's threads (the rule's, set by its script) shared by the workers
        import torch

        threads = max(1, torch.get_num_threads() // processes)
    cmd = torchrun_command(processes, spec)
    print("launch:", " ".join(cmd), flush=True)
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, check=False, **_output_streams())
    if done.returncode:
        raise RuntimeError(
            f"torchrun with {processes} processes failed (exit {done.returncode}); the workers' "
            f"output is above. Spec: {spec}. To train in one process set "
            "train.processes: 1"
        )
    return json.loads((Path(kwargs["out_dir"]) / SUMMARY).read_text())


def write_spec(examples, run: dict, work_dir: Path, **kwargs) -> Path:
    """Write the examples and the spec of train_run's arguments that each worker reads (see
    selfexplain.run.main) into work_dir; the spec's path."""
    work_dir.mkdir(parents=True, exist_ok=True)
    examples.write_parquet(work_dir / EXAMPLES)
    spec = {
        "examples": str(work_dir / EXAMPLES),
        "run": {k: str(v) for k, v in run.items()},
        "model_dir": str(kwargs["model_dir"]),
        "out_dir": str(kwargs["out_dir"]),
        "checkpoint_dir": _str_or_none(kwargs.get("checkpoint_dir")),
        "train_settings": TrainSettings.of(kwargs["train_settings"]).as_config(),
        "features": FeatureSettings.of(kwargs["features"]).as_config(),
    }
    (work_dir / SPEC).write_text(json.dumps(spec, indent=1))
    return work_dir / SPEC


def torchrun_command(processes: int, spec: Path) -> list[str]:
    """The torchrun command line that starts ``processes`` workers of selfexplain.run."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "selfexplain.run",
        str(spec),
    ]


def _output_streams() -> dict[str, int]:
    """The file descriptors of this process's stdout and stderr, so that the workers write
    where this process does (the rule's log file); none where they have no descriptor."""
    streams = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            stream.flush()
            streams[name] = stream.fileno()
        except (AttributeError, OSError, ValueError):  # e.g. pytest's capture: inherit
            pass
    return streams


def single_process_env() -> None:
    """Set the torch.distributed variables DeepSpeed needs when not started by a launcher."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as sock:  # a free local port for the one-process process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    os.environ.update(defaults | {"MASTER_PORT": str(port)})


def _str_or_none(path) -> str | None:
    return None if path is None else str(path)
