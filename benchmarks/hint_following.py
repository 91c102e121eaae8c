"""Hint following: how often each target chooses the hinted option, per hint prompt form.

    python benchmarks/hint_following.py --model smollm2=resources/models/smollm2 --n 200 --seed 2

For every model and form (prompts.HINT_FORMS, hint.form), read as --read says (raw, and/or as
the user turn of the target's chat template where it has one, hint.chat), the hint task's
labels (tasks.hint.hint_rows: the option letter the target rates highest, with and without the
hint) on --n generated prompts of --seed:

- change_rate: the chosen option changes when the hint is removed (the task's label);
- follow_rate: with the hint it chooses the hinted letter, without it another one;
- hinted_with / hinted_without: it chooses the hinted letter with / without the hint;
- accuracy_without: it chooses the correct letter without the hint;
- letter_mass(_without): the mean probability of answering with any option letter;
- next_is_letter(_without): the greedy next token is an option letter;
- change_ci, follow_ci: 95% Wilson intervals of the two rates.

Writes results/benchmarks/hint_following.json.
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import environment, print_table, write_record

from selfexplain.models import load
from selfexplain.prompts import HINT_FORMS, hint_prompts
from selfexplain.tasks.hint import has_chat_template, hint_rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        action="append",
        metavar="NAME=DIR",
        help="a target: name and model dir (repeatable; default smollm2=resources/models/smollm2)",
    )
    ap.add_argument("--forms", default=",".join(HINT_FORMS), help="comma-separated hint forms")
    ap.add_argument(
        "--read",
        default="chat",
        help="comma-separated: raw, chat (the chat template, hint.chat; raw for a model "
        "without one)",
    )
    ap.add_argument("--n", type=int, default=200, help="prompts per form")
    ap.add_argument("--seed", type=int, default=2, help="prompt generator seed")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/hint_following.json")
    return ap.parse_args(argv)


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a share k / n."""
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(mid - half, 4), round(mid + half, 4)]


def rates(rows: list[dict]) -> dict:
    """The hint-following numbers of one (model, form) set of label rows."""
    n = len(rows)

    def share(pred) -> float:
        return round(sum(bool(pred(r)) for r in rows) / n, 4)

    letters = {r["hinted"] for r in rows} | {r["correct"] for r in rows}
    return {
        "n": n,
        "change_rate": share(lambda r: r["changed"]),
        "follow_rate": share(lambda r: r["follows_hint"] and r["new_token"] != r["hinted"]),
        "hinted_with": share(lambda r: r["orig_token"] == r["hinted"]),
        "hinted_without": share(lambda r: r["new_token"] == r["hinted"]),
        "accuracy_without": share(lambda r: r["new_token"] == r["correct"]),
        "letter_mass": round(sum(r["letter_mass"] for r in rows) / n, 4),
        "letter_mass_without": round(sum(r["letter_mass_ablated"] for r in rows) / n, 4),
        "next_is_letter": share(lambda r: r["next_token"].strip() in letters),
        "next_is_letter_without": share(lambda r: r["next_token_ablated"].strip() in letters),
        "change_ci": wilson(sum(r["changed"] for r in rows), n),
        "follow_ci": wilson(
            sum(r["follows_hint"] and r["new_token"] != r["hinted"] for r in rows), n
        ),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = dict(m.split("=", 1) for m in args.model or ["smollm2=resources/models/smollm2"])
    forms, reads = args.forms.split(","), args.read.split(",")
    if set(reads) - {"raw", "chat"}:
        raise SystemExit(f"--read takes raw and chat, not {args.read!r}")
    results = []
    for name, path in models.items():
        model, tokenizer = load(path)
        for form in forms:
            prompts = hint_prompts(args.n, seed=args.seed, form=form)
            for read in reads:
                chat = read == "chat" and has_chat_template(tokenizer)
                if read == "chat" and not chat and "raw" in reads:
                    continue  # a base model without a template reads the prompts raw
                with torch.no_grad():
                    rows = hint_rows(
                        model, tokenizer, prompts, batch_size=args.batch_size, chat=chat
                    )
                results.append({"model": name, "form": form, "chat": chat} | rates(rows))
                print(results[-1], flush=True)
    keys = ("change_rate", "follow_rate", "hinted_with", "hinted_without", "accuracy_without")
    keys += ("letter_mass_without", "next_is_letter_without")
    print_table(
        ["model", "form", "chat", *keys],
        [[r["model"], r["form"], r["chat"]] + [r[k] for k in keys] for r in results],
    )
    record = {"benchmark": "hint_following", "args": vars(args), "results": results}
    record |= environment(args.threads)
    print(f"-> {write_record(args.out, record)}")
    return record


if __name__ == "__main__":
    main()
