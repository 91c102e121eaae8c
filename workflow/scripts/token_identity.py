"""Token identity check: can the explainer name the target word whose embedding is injected?"""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.settings import TrainSettings
from selfexplain.token_identity import run_token_identity

job(snakemake)

p = snakemake.params
cfg = TrainSettings.from_dict(dict(p.train) | p.overrides).config(seed=0)
result = run_token_identity(
    Path(snakemake.input.target).parent,
    Path(snakemake.input.explainer).parent,
    p.workdir,
    json_path=snakemake.output[0],
    relation=p.relation,
    train_cfg=cfg,
    injection=p.injection,
    **p.check,
)
print(result)
