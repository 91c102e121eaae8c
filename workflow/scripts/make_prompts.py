"""Write the ablation prompts: the user's file (validated), hinted MMLU questions
(ablation.source: mmlu) or the built-in generators."""

from selfexplain.core.job import job
from selfexplain.core.settings import AblationSettings
from selfexplain.prompts import ablation_prompts, read_prompts_jsonl, write_prompts_jsonl

job(snakemake, torch_threads=False)

settings = AblationSettings.from_dict(snakemake.params.settings)
if settings.prompts_file:
    prompts = read_prompts_jsonl(settings.prompts_file)
elif settings.source == "mmlu":
    from selfexplain.hub.sources import mmlu_prompts_from

    prompts = mmlu_prompts_from(settings.dataset, settings.n_per_kind, what="ablation.source mmlu")
else:
    prompts = ablation_prompts(
        n_per_kind=settings.n_per_kind,
        kinds=settings.kinds,
        corpus_file=snakemake.params.corpus_file,  # kind "text": the features' corpus
    )
write_prompts_jsonl(prompts, snakemake.output[0])
print(f"{len(prompts)} prompts -> {snakemake.output[0]}")
