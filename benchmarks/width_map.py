"""How well the fitted width map carries held-out target tokens onto the explainer's, by ridge.

    python benchmarks/width_map.py --source resources/models/smollm2 \
        --model resources/models/gemma --ridges 1e-6 --epochs 0 1 3

The other explainer reads the target's vectors through injection.embedding_map, a ridge fit
between the two models' unit-normalised input embeddings over the tokens whose text is one token
in both vocabularies, then refined by --epochs contrastive passes (0: the ridge fit alone). This
leaves --n-test of those anchors out of the fit (a seeded draw), maps them, and records per
(ridge, epochs) how often the mapped vector's nearest explainer embedding (cosine,
over the whole vocabulary) is the token's own (top 1, top 5), and the mean cosine to it.
Writes results/benchmarks/width_map_<source>_<model>.json.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from pathlib import Path

import torch
from _common import environment, print_table, write_record

from selfexplain.features.injection import embedding_map, shared_tokens
from selfexplain.models import load


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="resources/models/smollm2", help="the target model")
    ap.add_argument("--model", default="resources/models/gemma", help="the explainer model")
    ap.add_argument("--ridges", type=float, nargs="+", default=[1e-6])
    ap.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source, source_tok = load(args.source)
    model, tok = load(args.model)
    src_emb = source.get_input_embeddings().weight.detach().float()
    dst_emb = model.get_input_embeddings().weight.detach().float()
    pairs = shared_tokens(source_tok, tok, src_emb.shape[0], dst_emb.shape[0])
    random.Random(args.seed).shuffle(pairs)
    test = pairs[: args.n_test]
    s_ids, d_ids = (torch.tensor(x) for x in zip(*test, strict=True))
    x = torch.nn.functional.normalize(src_emb[s_ids], dim=-1)
    vocab = torch.nn.functional.normalize(dst_emb, dim=-1)
    rows = []
    for ridge, epochs in itertools.product(args.ridges, args.epochs):
        start = time.perf_counter()
        weight, n_anchors = embedding_map(
            source, source_tok, model, tok, exclude=s_ids.tolist(), ridge=ridge, epochs=epochs
        )
        seconds = time.perf_counter() - start
        mapped = torch.nn.functional.normalize(x @ weight.T, dim=-1)
        top = (mapped @ vocab.T).topk(5, dim=-1).indices
        rows.append(
            {
                "ridge": ridge,
                "epochs": epochs,
                "seconds": seconds,
                "n_anchors": n_anchors,
                "top1": (top[:, 0] == d_ids).float().mean().item(),
                "top5": (top == d_ids[:, None]).any(-1).float().mean().item(),
                "cosine": (mapped * vocab[d_ids]).sum(-1).mean().item(),
            }
        )
    print_table(
        ["ridge", "epochs", "anchors", "top 1", "top 5", "cosine", "fit s"],
        [
            [
                f"{r['ridge']:g}",
                r["epochs"],
                r["n_anchors"],
                f"{r['top1']:.3f}",
                f"{r['top5']:.3f}",
                f"{r['cosine']:.3f}",
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    name = f"width_map_{Path(args.source).name}_{Path(args.model).name}.json"
    record = environment(args.threads) | {
        "source": args.source,
        "model": args.model,
        "n_test": len(test),
        "seed": args.seed,
        "rows": rows,
    }
    write_record(args.out or Path("results/benchmarks") / name, record)
    return record


if __name__ == "__main__":
    main()
