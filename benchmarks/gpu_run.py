"""The default science matrix on one GPU, timed: the whole pipeline with 3 seeds in bf16
(DeepSpeed ZeRO-2 through the train_explainer rule), training tokens/s and the fraction of the
GPU's measured bf16 matmul ceiling.

    python benchmarks/gpu_run.py              # on a GPU machine (target: <= 8 minutes)
    python benchmarks/gpu_run.py --dry-run    # anywhere: the planned jobs, a CPU ceiling

Runs ``snakemake --profile profiles/default --configfile config/gpu.yaml`` in --workdir
(default results/gpu_run, so results/ of a laptop run stays as it is), with --cores parallel
jobs sharing the GPU. Afterwards it reads every train_summary.json: tokens trained (steps x
batch x the mean example length), training seconds per job, and model FLOPs 6 x parameters x
tokens (the usual count; LoRA skips the frozen weights' gradients, so it executes about 2/3 of
that). Writes results/benchmarks/gpu_<device>.json (gpu_dry-run.json with --dry-run), labelled
with the device name.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from _common import environment, link_workdir, matmul_ceiling, run_workflow, write_record

REPO = Path(__file__).resolve().parents[1]


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts per rule from snakemake's job stats table."""
    counts = {}
    for line in output.splitlines():
        m = re.fullmatch(r"\s*([A-Za-z_]+)\s+(\d+)\s*", line)
        if m and m.group(1) not in ("job", "count"):
            counts[m.group(1)] = int(m.group(2))
    return counts


def training_record(workdir: Path) -> dict:
    """Tokens, seconds and model FLOPs of every training run under workdir."""
    from selfexplain.models import load

    runs, params = [], {}
    for path in sorted(workdir.glob("results/explainers/*/*/*/*/s*/train_summary.json")):
        s = json.loads(path.read_text())
        explainer = path.parts[-4]
        if explainer not in params:
            model, _ = load(workdir / "resources/models" / explainer)
            params[explainer] = sum(p.numel() for p in model.parameters())
            del model
        tokens = s["steps"] * s["config"]["batch_size"] * s["n_tokens"] / max(1, s["n_examples"])
        runs.append(
            {
                "run": str(path.parent.relative_to(workdir)),
                "tokens": tokens,
                "seconds": s["seconds"],
                "model_flops": 6 * params[explainer] * tokens,
            }
        )
    return {"runs": runs, "params": params}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="plan only, CPU ceiling")
    parser.add_argument("--workdir", default=str(REPO / "results/gpu_run"))
    parser.add_argument("--cores", type=int, default=16, help="parallel jobs on the GPU")
    parser.add_argument("--out", default=str(REPO / "results/benchmarks"))
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    ceiling = (
        matmul_ceiling(8192, 10, device="cuda", dtype=torch.bfloat16)
        if cuda
        else matmul_ceiling(256, 3)
    )
    workdir = Path(args.workdir)
    link_workdir(workdir, REPO)
    # the default config with config/gpu.yaml merged over it
    command, output, wall = run_workflow(
        REPO, workdir, ["config/gpu.yaml"], args.cores, args.dry_run
    )
    record = {
        "device": device,
        "dry_run": args.dry_run,
        "command": command,
        "wall_seconds": wall,
        "matmul_ceiling": ceiling,
        "planned_jobs": planned_jobs(output),
    } | environment(torch.get_num_threads())
    if not args.dry_run:
        train = training_record(workdir)
        tokens = sum(r["tokens"] for r in train["runs"])
        flops = sum(r["model_flops"] for r in train["runs"])
        record |= train | {
            "tokens": tokens,
            "tokens_per_second_wall": tokens / wall,
            "tokens_per_second_per_job": tokens
            / max(1e-9, sum(r["seconds"] for r in train["runs"])),
            "ceiling_fraction_wall": flops / wall / ceiling["median_flops"],
        }
        print(
            f"{device}: {tokens:,.0f} training tokens in {wall:.0f} s wall "
            f"({record['tokens_per_second_wall']:,.0f} tokens/s), model FLOP/s "
            f"{record['ceiling_fraction_wall']:.1%} of the measured bf16 matmul ceiling "
            f"({ceiling['median_flops'] / 1e12:.0f} TFLOP/s)"
        )
    slug = "dry-run" if args.dry_run else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    print(write_record(Path(args.out) / f"gpu_{slug}.json", record))
    return record


if __name__ == "__main__":
    main()
