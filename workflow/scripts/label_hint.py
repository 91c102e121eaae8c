"""Hint-removal labels of one target model, as explainer examples (parquet):
selfexplain.tasks.hint.label, or, when hint.labels_from names a released label set for the
target, selfexplain.hub.released.import_labels."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import write_parquet
from selfexplain.core.settings import HintSettings

job(snakemake)

s = HintSettings.from_dict(snakemake.params.settings)
target = snakemake.wildcards.target
if target in s.labels_from:
    from selfexplain.hub.released import import_labels

    frame = import_labels("hint", s.labels_from[target], target)
else:
    from selfexplain.models import load
    from selfexplain.prompts import read_prompts_jsonl
    from selfexplain.tasks import hint

    model, tokenizer = load(Path(snakemake.input.model).parent)
    frame = hint.label(
        model,
        tokenizer,
        read_prompts_jsonl(snakemake.input.prompts),
        target,
        batch_size=s.batch_size,
        test_fraction=s.test_fraction,
        holdout=s.holdout,
        chat=s.chat,
    )
write_parquet(frame, snakemake.output[0])
