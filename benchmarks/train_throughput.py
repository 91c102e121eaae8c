"""Explainer training throughput (tokens/s, FLOP/s) vs the machine's fp32 matmul ceiling.

    python benchmarks/train_throughput.py --model resources/models/smollm2 --steps 4

Runs the pipeline's own trainer (``selfexplain.train.trainer.train_explainer``: HF Trainer + peft
LoRA) with the pipeline's TrainConfig defaults (LoRA r16/alpha 32 on all linear layers, batch 8,
max_length 256, AdamW lr 3e-4) on real explainer examples (the train split of --labels, drawn
as the pipeline draws them), one epoch over steps * batch examples, so every example is seen
once. Checkpointing is switched off (save_steps beyond the run) so that disk writes are not
timed. A callback times each optimizer step (forward + backward + optimizer) and a forward
hook counts the tokens of each step's batch: non-pad tokens (attention_mask) and padded
positions. The run is repeated at --scales (default 1, 2, 4) times --steps to show that time
grows linearly with the work.

The ceiling is a large fp32 torch.matmul (n x n, FLOP = 2 n^3) repeated with the same thread
count, measured before and after the training runs (the higher median is used). Achieved
FLOP/s is the usual 6 * params * tokens/s with params = ALL parameters of the model (the frozen
base, embeddings and the LoRA adapter). With a frozen base the backward pass skips the base
weights' gradients, so the matmul work actually done is nearer 4 * params per token: the
4N figure is reported as well. The trainer computes the output layer's logits only where an
answer token is predicted (selfexplain.train.loss.answer_loss), so both N-based figures count
work that is not done; the record's executed_flops counts what is: 4 x non-embedding params per
token + 4 x output-layer params per logit row. Writes results/benchmarks/train_throughput.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict

import torch
from _common import (
    body_params,
    environment,
    linear_fit,
    matmul_ceiling,
    parse_scales,
    print_table,
    write_record,
)
from transformers import TrainerCallback

from selfexplain.core.schema import read_examples, select, subsample
from selfexplain.core.settings import TrainConfig
from selfexplain.train.trainer import train_explainer


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and the tokens of its batch (one forward per step)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.params = self.trainable = self.body_params = self.head_params = 0
        self._batch: list[tuple[int, int]] = []
        self._logit_rows: list[int] = []
        self._start = 0.0
        self._hooks = []

    def _count(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self._batch.append((ids.numel(), ids.numel()))
        else:
            self._batch.append((int(mask.sum()), mask.numel()))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.params = sum(p.numel() for p in model.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        head = model.get_output_embeddings()
        self.head_params = head.weight.numel()
        tied = head.weight is model.get_input_embeddings().weight
        self.body_params = body_params(model) - (0 if tied else self.head_params)
        self._hooks = [
            model.register_forward_pre_hook(self._count, with_kwargs=True),
            head.register_forward_hook(  # after answer_loss's own pre-hook kept its rows
                lambda _m, _args, out: self._logit_rows.append(out.shape[:-1].numel())
            ),
        ]

    def on_step_begin(self, args, state, control, **kwargs):
        self._batch = []
        self._logit_rows = []
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._start
        self.steps.append(
            {
                "seconds": seconds,
                "tokens": sum(t for t, _ in self._batch),
                "padded_tokens": sum(p for _, p in self._batch),
                "forwards": len(self._batch),
                "logit_rows": sum(self._logit_rows),
            }
        )

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self._hooks:
            hook.remove()


def train_once(model: str, examples, cfg: TrainConfig) -> dict:
    """One train_explainer run in a scratch folder; its step timings and token counts."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="selfexplain-bench-") as tmp:
        summary = train_explainer(model, examples, f"{tmp}/adapter", cfg, callbacks=[timer])
    steps = timer.steps
    tokens = sum(s["tokens"] for s in steps)
    step_s = sum(s["seconds"] for s in steps)
    later = steps[1:] or steps
    return {
        "examples": len(examples),
        "steps": len(steps),
        "train_s": summary["seconds"],
        "step_s": step_s,
        "tokens": tokens,
        "padded_tokens": sum(s["padded_tokens"] for s in steps),
        "logit_rows": sum(s["logit_rows"] for s in steps),
        "summary_tokens": summary["n_tokens"],
        "tokens_per_s": tokens / summary["seconds"],
        "steady_tokens_per_s": sum(s["tokens"] for s in later) / sum(s["seconds"] for s in later),
        "first_step_s": steps[0]["seconds"],
        "train_loss": summary["train_loss"],
        "params": timer.params,
        "trainable_params": timer.trainable,
        "body_params": timer.body_params,
        "head_params": timer.head_params,
        "per_step": steps,
    }


def executed_flops(run: dict) -> float:
    """Matmul FLOPs a run's steps executed (see the record's executed_note)."""
    return 4 * run["body_params"] * run["tokens"] + 4 * run["head_params"] * run["logit_rows"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/smollm2")
    ap.add_argument("--labels", default="results/labels/ablation/smollm2.parquet")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps of the 1x run")
    ap.add_argument("--scales", default="1,2,4", help="runs at these multiples of --steps")
    ap.add_argument("--warmup-steps", type=int, default=1, help="untimed run first (0: none)")
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--matmul-repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/train_throughput.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = parse_scales(args.scales) or [1]
    base = TrainConfig()
    # One epoch over exactly steps * batch examples: each example is processed once. No
    # checkpoints inside the timed runs; everything else is the pipeline's default.
    # Unpacked (pack 1): this times tokens through the trainer; packing is
    # benchmarks/packed_training.py.
    cfg = TrainConfig(epochs=1, save_steps=10**9, pack=1)
    per_step = base.batch_size * base.grad_accum
    n_max = per_step * args.steps * max(scales)
    pool = subsample(select(read_examples(args.labels), "train"), n_max, 0, "changed")
    if len(pool) < n_max:
        raise SystemExit(f"{args.labels}: only {len(pool)} train examples, {n_max} needed")

    ceiling_before = matmul_ceiling(args.matmul_size, args.matmul_repeats)
    if args.warmup_steps:
        train_once(args.model, pool.head(per_step * args.warmup_steps), cfg)
    runs = []
    for scale in scales:
        run = train_once(args.model, pool.head(per_step * args.steps * scale), cfg)
        runs.append({"scale": scale, **run})
    ceiling_after = matmul_ceiling(args.matmul_size, args.matmul_repeats)
    ceiling = max(ceiling_before["median_flops"], ceiling_after["median_flops"])

    main_run = runs[-1]
    params = main_run["params"]
    achieved_6n = 6 * params * main_run["tokens_per_s"]
    achieved_4n = 4 * params * main_run["tokens_per_s"]
    steady_6n = 6 * params * main_run["steady_tokens_per_s"]
    executed = executed_flops(main_run) / main_run["train_s"]
    record = {
        "benchmark": "train_throughput",
        "model": args.model,
        "labels": args.labels,
        "train_config": asdict(cfg),
        "pipeline_defaults_changed": {
            "epochs": 1,
            "save_steps": "off (beyond the run)",
            "pack": "1 (unpacked; packed_training.py times packing)",
        },
        "steps": args.steps,
        "scales": scales,
        "threads": args.threads,
        "params": params,
        "trainable_params": main_run["trainable_params"],
        "params_note": "all parameters incl. the frozen base, embeddings and LoRA",
        "tokens_note": "non-pad tokens (attention_mask) of the batches of the timed steps",
        "tokens_per_s": main_run["tokens_per_s"],
        "steady_tokens_per_s": main_run["steady_tokens_per_s"],
        "padded_fraction": 1 - main_run["tokens"] / main_run["padded_tokens"],
        "achieved_flops_6n": achieved_6n,
        "achieved_flops_4n": achieved_4n,
        "steady_flops_6n": steady_6n,
        "matmul_ceiling_flops": ceiling,
        "matmul_before": ceiling_before,
        "matmul_after": ceiling_after,
        "executed_flops": executed,
        "executed_note": (
            "matmul FLOPs the step actually runs: 4 x non-embedding params per token (forward, "
            "and input gradients only: the base is frozen) + 4 x output-layer params per logit "
            "row (the trainer computes logits only where an answer token is predicted)"
        ),
        "ratio_executed": executed / ceiling,
        "ratio_6n": achieved_6n / ceiling,
        "ratio_4n": achieved_4n / ceiling,
        "steady_ratio_6n": steady_6n / ceiling,
        "scaling_fit_steps": (
            linear_fit([r["steps"] for r in runs], [r["train_s"] for r in runs])
            if len(runs) > 1
            else None
        ),
        "scaling_fit_tokens": (
            linear_fit([r["tokens"] for r in runs], [r["train_s"] for r in runs])
            if len(runs) > 1
            else None
        ),
        "runs": runs,
        **environment(args.threads),
    }
    write_record(args.out, record)
    print_table(
        ["run", "steps", "tokens", "pad %", "train s", "s/step", "tokens/s", "GFLOP/s (6N)"],
        [
            [
                f"{r['scale']}x",
                r["steps"],
                r["tokens"],
                f"{100 * (1 - r['tokens'] / r['padded_tokens']):.0f}",
                f"{r['train_s']:.1f}",
                f"{r['train_s'] / r['steps']:.2f}",
                f"{r['tokens_per_s']:.0f}",
                f"{6 * params * r['tokens_per_s'] / 1e9:.1f}",
            ]
            for r in runs
        ],
    )
    print(
        f"matmul ceiling ({args.matmul_size}^3 fp32, {args.threads} threads): "
        f"{ceiling / 1e9:.1f} GFLOP/s (before {ceiling_before['median_flops'] / 1e9:.1f}, "
        f"after {ceiling_after['median_flops'] / 1e9:.1f})"
    )
    print(
        f"training {main_run['tokens_per_s']:.0f} tokens/s = {achieved_6n / 1e9:.1f} GFLOP/s "
        f"(6 x {params / 1e6:.1f}M params incl. frozen base) = {100 * record['ratio_6n']:.0f}% "
        f"of the ceiling ({100 * record['ratio_4n']:.0f}% counting 4N)"
    )
    print(
        f"executed matmul work {executed / 1e9:.1f} GFLOP/s = "
        f"{100 * record['ratio_executed']:.0f}% of the ceiling (logits on "
        f"{main_run['logit_rows']} of {main_run['tokens']} tokens)"
    )
    return record


if __name__ == "__main__":
    main()
