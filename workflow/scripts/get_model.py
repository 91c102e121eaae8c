"""Materialise one model spec as an HF directory under resources/models/{model}/."""

import sys
from pathlib import Path

from selfexplain.models import resolve

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

out_dir = Path(snakemake.output.marker).parent
resolve(snakemake.params.spec, out_dir)
