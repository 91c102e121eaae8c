"""Top-activating contexts, top tokens and logit effect of every live latent, and a description."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import write_parquet
from selfexplain.core.settings import FeatureSettings, GeneratorSettings
from selfexplain.features.describe import describe_records
from selfexplain.features.records import feature_records, records_frame
from selfexplain.features.sae import load_activations, load_sae
from selfexplain.models import load
from selfexplain.tasks.features import select_features

job(snakemake)

s = FeatureSettings.from_dict(snakemake.params.settings)
describer = GeneratorSettings.from_dict(snakemake.params.describer)  # model: its directory
model, tokenizer = load(Path(snakemake.input.model).parent)
windows, acts, _ = load_activations(snakemake.input.activations)
sae = load_sae(Path(snakemake.input.sae).parent)
records = feature_records(
    model, tokenizer, sae, windows, acts, n_examples=s.n_examples, min_count=s.min_count
)
print(f"{len(records)} live latents of {sae.n_latents}")
records = select_features(records, s.n_features)
del model
for record, text in zip(records, describe_records(records, describer), strict=True):
    record.description = text
write_parquet(records_frame(records), snakemake.output[0])
print(f"{len(records)} descriptions, e.g. {[r.description for r in records[:3]]}")
