# selfexplain: train language models to explain their own computations.
# Run: snakemake --profile profiles/default   (see README.md)
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/released.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
