"""Write the hint prompts: the user's file (validated, a hint on every line), hinted MMLU
questions (hint.source: mmlu) or the generator."""

from selfexplain.core.job import job
from selfexplain.core.settings import HintSettings
from selfexplain.prompts import hint_prompts, read_prompts_jsonl, write_prompts_jsonl

job(snakemake, torch_threads=False)

settings = HintSettings.from_dict(snakemake.params.settings)
if settings.prompts_file:
    prompts = read_prompts_jsonl(settings.prompts_file)
    missing = [p.id for p in prompts if not p.hint]
    if missing:
        raise ValueError(
            f'{settings.prompts_file}: the hint task needs a "hint" on every line; '
            f"missing for ids {missing[:10]}"
        )
elif settings.source == "mmlu":
    from selfexplain.hub.sources import mmlu_prompts_from

    prompts = mmlu_prompts_from(settings.dataset, settings.n_prompts, what="hint.source mmlu")
else:
    prompts = hint_prompts(n=settings.n_prompts, form=settings.form)
write_prompts_jsonl(prompts, snakemake.output[0])
print(f"{len(prompts)} prompts -> {snakemake.output[0]}")
