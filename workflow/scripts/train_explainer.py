"""Fine-tune one explainer (LoRA) on the train split of one task's labels, validating as it
goes (selfexplain.run.train_run: the draw, the validation split, the controls)."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.schema import read_examples
from selfexplain.core.settings import FeatureSettings, TrainSettings
from selfexplain.run import train_run

job(snakemake)

summary = train_run(
    read_examples(snakemake.input.labels),
    snakemake.wildcards,
    model_dir=Path(snakemake.input.model).parent,
    out_dir=Path(snakemake.output.adapter).parent,
    train_settings=TrainSettings.from_dict(snakemake.params.train),
    features=FeatureSettings.from_dict(snakemake.params.features),
    checkpoint_dir=snakemake.params.checkpoints,
)
print({k: v for k, v in summary.items() if k not in ("log_history", "validation")})
