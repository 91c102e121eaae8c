"""Write the patching prompt pairs: the user's file (validated), multiple-choice pairs from
CounterFact (patching.source: counterfact) or the built-in generator."""

from selfexplain.core.job import job
from selfexplain.core.settings import PatchingSettings
from selfexplain.prompts import counterfactual_pairs, read_pairs_jsonl, write_pairs_jsonl

job(snakemake, torch_threads=False)

settings = PatchingSettings.from_dict(snakemake.params.settings)
if settings.pairs_file:
    pairs = read_pairs_jsonl(settings.pairs_file)
elif settings.source == "counterfact":
    from selfexplain.hub.sources import counterfact_pairs_from

    pairs = counterfact_pairs_from(
        settings.dataset, settings.n_pairs, what="patching.source counterfact"
    )
else:
    pairs = counterfactual_pairs(settings.n_pairs, formats=settings.formats)
write_pairs_jsonl(pairs, snakemake.output[0])
print(f"{len(pairs)} pairs -> {snakemake.output[0]}")
