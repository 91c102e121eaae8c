"""Token identity check runs with settings of your own, and paired comparisons of two runs.

    python benchmarks/token_identity_runs.py run --name gemma_n4000 \
        --target resources/models/smollm2 --explainer resources/models/gemma \
        --set n_train=4000 --set epochs=1 --set lr=1e-4
    python benchmarks/token_identity_runs.py compare gemma_n4000 gemma_n1000

`run` calls the pipeline's own token_identity.run_token_identity with config/config.yaml's
settings (features.token_identity, train, the feature injection) and --set KEY=VALUE over
them: keys of features.token_identity (n_train, n_test, n_val, scales, epochs, lr) go there,
any other key to train.*. --map-epochs adds contrastive passes to the width map (an other
explainer; injection.embedding_map's `epochs`; the training checkpoints' fingerprint does
not see it, so give such a run a name of its own). One thread by default, as the pipeline's job,
so a run reproduces the pipeline's answers. The adapter goes under --out/<name>/, the result
(the check's JSON, the settings and the environment) to results/benchmarks/token_identity_runs/
<name>.json. The held-out words depend on the target and n_test only, so runs of one target
with any n_train, n_val, lr or map pair word by word.

`compare A B` reads two such records and prints A − B exact match on the same words with a 95%
bootstrap CI over the words (token_identity.paired_hits); it refuses records whose words differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import torch
import yaml
from _common import environment, overrides, write_record

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results/benchmarks/token_identity_runs"


def settings(sets: dict) -> tuple[dict, dict, dict]:
    """(check, train, injection) of the default config with sets over them."""
    from selfexplain.core.settings import from_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    features = from_config(config, "features")
    own_keys = {f.name for f in dataclasses.fields(features.token_identity)}
    identity = dataclasses.replace(
        features.token_identity, **{k: sets[k] for k in own_keys & set(sets)}
    )
    train = dict(config["train"]) | identity.overrides()
    train |= {k: v for k, v in sets.items() if k not in own_keys}
    return identity.check(), train, dict(features.injection)


def run(args: argparse.Namespace) -> dict:
    import selfexplain.features.injection as injection_module
    from selfexplain.core.settings import TrainSettings
    from selfexplain.token_identity import run_token_identity

    torch.set_num_threads(args.threads)
    sets = overrides(args.set)
    check, train, injection = settings(sets)
    fit = injection_module.embedding_map
    if args.map_epochs:  # fitted_map looks the function up in its module at call time
        injection_module.embedding_map = functools.partial(fit, epochs=args.map_epochs)
    try:
        result = run_token_identity(
            args.target,
            args.explainer,
            Path(args.out) / args.name,
            train_cfg=TrainSettings.from_dict(train).config(seed=0),
            injection=injection,
            **check,
        )
    finally:
        injection_module.embedding_map = fit
    record = {"name": args.name, "set": sets, "map_epochs": args.map_epochs, "check": check}
    record |= {"result": result} | environment(args.threads)
    write_record(args.record or RECORDS / f"{args.name}.json", record)
    r = result
    print(
        f"{args.name}: held-out {r['accuracy']:.3f} (training words {r['train_accuracy']:.3f}), "
        f"untrained {r['untrained_by_scale']}, kept step {r['best']['step']} of {r['steps']}"
    )
    return record


def compare(args: argparse.Namespace) -> dict:
    from selfexplain.token_identity import paired_hits

    def load(name: str) -> dict:
        path = Path(name) if name.endswith(".json") else RECORDS / f"{name}.json"
        return json.loads(path.read_text())["result"]

    a, b = load(args.a), load(args.b)
    words = [w["token"] for w in a["per_word"]]
    if words != [w["token"] for w in b["per_word"]]:
        raise SystemExit(
            f"{args.a} and {args.b} were scored on different words (another target or "
            "n_test): they cannot be paired"
        )
    diff = paired_hits(
        [w["prediction"] for w in a["per_word"]], [w["prediction"] for w in b["per_word"]], words
    )
    print(
        f"{args.a} ({a['accuracy']:.3f}) − {args.b} ({b['accuracy']:.3f}): "
        f"{diff['diff']:+.3f} [{diff['ci_lo']:+.3f}, {diff['ci_hi']:+.3f}], "
        f"{diff['n_words']} words"
    )
    return diff


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="one token identity run")
    one.add_argument("--name", required=True)
    one.add_argument("--target", required=True, help="target model directory")
    one.add_argument("--explainer", required=True, help="explainer model directory")
    one.add_argument("--set", action="append", default=[], help="KEY=VALUE override")
    one.add_argument("--map-epochs", type=int, default=0, help="contrastive width-map passes")
    one.add_argument("--threads", type=int, default=1)
    one.add_argument("--out", default="results/token_identity_runs", help="adapters go here")
    one.add_argument("--record", default=None, help="JSON path (default: results/benchmarks/)")
    two = sub.add_parser("compare", help="A − B on the same words, paired")
    two.add_argument("a", help="a record name (or its JSON path)")
    two.add_argument("b")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
