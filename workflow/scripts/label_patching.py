"""Activation-patching labels of one target model, as explainer examples (parquet):
selfexplain.tasks.patching.label, the recipe `selfexplain labels patching` runs too, or, when
patching.labels_from names a released label set for the target,
selfexplain.hub.released.import_labels."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import write_parquet
from selfexplain.core.settings import PatchingSettings

job(snakemake)

s = PatchingSettings.from_dict(snakemake.params.settings)
target = snakemake.wildcards.target
if target in s.labels_from:
    from selfexplain.hub.released import import_labels

    frame = import_labels("patching", s.labels_from[target], target)
else:
    from selfexplain.models import load
    from selfexplain.prompts import read_pairs_jsonl
    from selfexplain.tasks import patching

    model, tokenizer = load(Path(snakemake.input.model).parent)
    frame = patching.label(
        model,
        tokenizer,
        read_pairs_jsonl(snakemake.input.pairs),
        target,
        window=s.window,
        layer_stride=s.layer_stride,
        max_pairs=s.max_pairs,
        max_positions=s.max_positions,
        batch_size=s.batch_size,
        test_fraction=s.test_fraction,
        holdout=s.holdout,
        source=snakemake.input.pairs,
        advice="raise patching.n_pairs or check your pairs_file",
    )
write_parquet(frame, snakemake.output[0])
