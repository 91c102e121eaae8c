"""Score one released explainer of the paper (config released:) on its target's test split."""

from selfexplain.core.formats import VECTOR_TOKEN
from selfexplain.core.job import job
from selfexplain.core.layout import eval_labels
from selfexplain.core.schema import read_examples
from selfexplain.hub.released_eval import evaluate_released, write_released

job(snakemake)

spec = snakemake.params.spec
name = snakemake.wildcards.name
rows, metrics = evaluate_released(
    read_examples(snakemake.input.labels),
    spec["task"],
    model=spec["model"],
    adapter=spec.get("adapter"),
    labels=eval_labels(spec["task"], spec["target"], name, "released", 0, 0),
    batch_size=spec.get("batch_size", 8),
    vector_token=spec.get("vector_token", VECTOR_TOKEN),
)
write_released(rows, metrics, snakemake.output.rows, snakemake.output.metrics)
print(metrics)
