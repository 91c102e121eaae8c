"""One figure of the experiment matrix, drawn from the seed summary table."""

from selfexplain.core.job import job
from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import MATRIX_FIGURES

job(snakemake, torch_threads=False)

MATRIX_FIGURES[snakemake.params.figure](read_parquet(snakemake.input[0]), snakemake.output[0])
