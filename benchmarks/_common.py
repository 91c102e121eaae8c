"""Shared helpers of the benchmark scripts: environment record, JSON output, tables, timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import torch


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(threads: int) -> dict:
    """What a timing depends on besides the code: versions, date, CPU, threads."""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        # other work on the machine skews timings: 1/5/15-minute load averages at the end
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def write_record(path: str | Path, record: dict) -> Path:
    """Write one benchmark's record as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain fixed-width table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        first, *rest = row
        print(
            f"{first:<{widths[0]}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(rest, widths[1:], strict=True))
        )


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(fn(), wall seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Least-squares y = intercept + slope * x, with R^2 and the largest relative deviation of
    the per-unit cost y/x from its mean (0 for perfectly proportional growth)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    per_unit = [y / x for x, y in zip(xs, ys, strict=True)]
    mean_unit = sum(per_unit) / n
    return {
        "slope": slope,
        "intercept": intercept,
        "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
        "per_unit": per_unit,
        "per_unit_max_rel_dev": max(abs(u - mean_unit) / mean_unit for u in per_unit),
    }


def parse_scales(text: str) -> list[int]:
    """ "1,2,4" -> [1, 2, 4] (empty string: no scaling runs)."""
    return [int(s) for s in text.split(",") if s.strip()]


def matmul_ceiling(
    n: int, repeats: int, warmup: int = 2, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict:
    """FLOP/s of an n x n @ n x n torch.matmul (2 n^3 FLOP), per repeat (fp32 on the CPU by
    default; e.g. device="cuda", dtype=torch.bfloat16 for a GPU's bf16 ceiling)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return {
        "n": n,
        "repeats": repeats,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "median_flops": statistics.median(rates),
        "best_flops": max(rates),
        "min_flops": min(rates),
    }


def compute_floor(flop: float, ceiling_flops: float) -> float:
    """Seconds that flop floating-point operations take at the measured matmul ceiling: a lower
    bound for any implementation on this machine (attention and elementwise work ignored)."""
    return flop / ceiling_flops


def body_params(model) -> int:
    """Parameters used per token by a forward that computes logits for one position only: all
    parameters but the input embedding matrix (a lookup; with tied weights the output head
    then costs one position per sequence, ignored here)."""
    total = sum(p.numel() for p in model.parameters())
    return total - model.get_input_embeddings().weight.numel()


def overrides(items: Sequence[str]) -> dict:
    """--set KEY=VALUE items as a dict, each value parsed as JSON when it is JSON (numbers, null,
    lists), else kept as text."""
    out = {}
    for item in items:
        key, text = item.split("=", 1)
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def link_workdir(workdir: Path, repo: Path) -> None:
    """Prepare a snakemake --directory run: link the repository's config, profiles, workflow
    and envs into workdir. Models are not linked: get_model's benchmark file is one of its
    outputs, so a fresh results/ there re-runs it, and through a link it would rewrite the
    repository's converted models; each work directory converts its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("config", "profiles", "workflow", "envs"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(repo / name)


def run_workflow(
    repo: Path, workdir: Path, configfiles: Sequence[str | Path], cores: int, dry_run: bool
) -> tuple[str, str, float]:
    """Run the pipeline (snakemake --profile profiles/default, configfiles merged over the
    default) in workdir; dry_run plans it only. Returns the command, snakemake's output and the
    wall seconds; a failed run exits with the tail of that output."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--profile", "profiles/default"]
    cmd += ["--configfile", *map(str, configfiles), "--cores", str(cores)]
    cmd += ["--directory", str(workdir), "--snakefile", str(repo / "Snakefile")]
    cmd += ["-n", "--quiet", "rules"] if dry_run else []
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"snakemake failed in {workdir} with exit code {proc.returncode}")
    return " ".join(cmd), proc.stdout + proc.stderr, wall
