"""One figure of the experiment matrix, drawn from the seed summary table."""

import sys

from selfexplain.core.schema import read_parquet
from selfexplain.report.plots import MATRIX_FIGURES

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

MATRIX_FIGURES[snakemake.params.figure](read_parquet(snakemake.input[0]), snakemake.output[0])
