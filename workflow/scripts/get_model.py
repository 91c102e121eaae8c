"""Materialise one model spec as an HF directory under resources/models/{model}/."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.models import resolve

job(snakemake, torch_threads=False)

out_dir = Path(snakemake.output.marker).parent
resolve(snakemake.params.spec, out_dir)
