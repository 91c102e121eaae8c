"""Export one task's explainer examples on one target as a Hugging Face dataset directory with
a dataset card (selfexplain.hub.export.export_dataset)."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_examples
from selfexplain.hub.export import export_dataset

job(snakemake, torch_threads=False)

out = export_dataset(
    read_examples(snakemake.input[0]),
    snakemake.output[0],
    task=snakemake.wildcards.task,
    target=snakemake.wildcards.target,
    model=snakemake.params.model,
    config=dict(snakemake.params.settings),
)
print(f"{snakemake.input[0]} -> {out}")
