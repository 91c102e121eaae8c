"""Input-ablation labels of one target model, as explainer examples (parquet):
selfexplain.tasks.ablation.label, the recipe `selfexplain labels ablation` runs too, or, when
ablation.labels_from names a released label set for the target, its hint removals
(selfexplain.hub.released.import_labels)."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import write_parquet
from selfexplain.core.settings import AblationSettings

job(snakemake)

s = AblationSettings.from_dict(snakemake.params.settings)
target = snakemake.wildcards.target
if target in s.labels_from:
    from selfexplain.hub.released import import_labels

    frame = import_labels("ablation", s.labels_from[target], target)
else:
    from selfexplain.models import load
    from selfexplain.prompts import read_prompts_jsonl
    from selfexplain.tasks import ablation

    model, tokenizer = load(Path(snakemake.input.model).parent)
    frame = ablation.label(
        model,
        tokenizer,
        read_prompts_jsonl(snakemake.input.prompts),
        target,
        batch_size=s.batch_size,
        engine=s.engine,
        drop_last=s.drop_last,
        test_fraction=s.test_fraction,
        holdout=s.holdout,
    )
write_parquet(frame, snakemake.output[0])
