"""Feature explainer examples (shared schema): decoder vector, question, description, split."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet, to_frame, write_parquet
from selfexplain.core.settings import FeatureSettings
from selfexplain.features.records import records_from_frame
from selfexplain.features.sae import load_activations, load_sae
from selfexplain.tasks.features import feature_examples

job(snakemake, torch_threads=False)

s = FeatureSettings.from_dict(snakemake.params.settings)
records = records_from_frame(read_parquet(snakemake.input.descriptions))
sae = load_sae(Path(snakemake.input.sae).parent)
layer = load_activations(snakemake.input.activations, meta_only=True)
examples = feature_examples(
    records,
    sae.W_dec.detach(),
    snakemake.wildcards.target,
    layer,
    test_fraction=s.test_fraction,
    holdout=s.holdout,
    n_bands=s.n_bands,
)
write_parquet(to_frame(examples), snakemake.output[0])
n_test = sum(ex.split == "test" for ex in examples)
print(f"{len(examples)} feature examples ({len(examples) - n_test} train, {n_test} test)")
