"""Answer the test questions with one explainer variant (or baseline) and score each answer."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import read_examples, write_parquet
from selfexplain.core.settings import EvaluateSettings, FeatureSettings, TrainSettings
from selfexplain.run import evaluate_run

job(snakemake)

adapter = snakemake.input.get("adapter")
rows = evaluate_run(
    read_examples(snakemake.input.labels),
    snakemake.wildcards,
    model_dir=Path(snakemake.input.model).parent,
    adapter_dir=Path(adapter).parent if adapter else None,
    settings=EvaluateSettings.from_dict(snakemake.params.settings),
    train_settings=TrainSettings.from_dict(snakemake.params.train),
    features=FeatureSettings.from_dict(snakemake.params.features),
    heatmap_pairs=snakemake.params.heatmap_pairs,
)
write_parquet(rows, snakemake.output[0])
print(rows.head())
