"""Train a TopK SAE on one target's activations (or load an external one); report its quality."""

import json
from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.settings import FeatureSettings
from selfexplain.features.sae import (
    SAEConfig,
    evaluate_sae,
    load_activations,
    load_sae,
    sae_summary,
    save_sae,
    split_tokens,
    train_sae,
)

job(snakemake)

s = FeatureSettings.from_dict(snakemake.params.settings)
windows, acts, layer = load_activations(snakemake.input.activations)
train_x, heldout_x = split_tokens(windows, acts)
cfg, log = None, None
if s.sae_dir:
    sae = load_sae(s.sae_dir)
    print(f"external SAE {s.sae_dir}: {sae.n_latents} latents, activation {sae.activation}")
else:
    cfg = SAEConfig(
        d_model=acts.shape[-1],
        n_latents=s.n_latents,
        k=s.k,
        epochs=s.sae_epochs,
        batch_size=s.sae_batch_size,
        lr=s.sae_lr,
    )
    sae, log = train_sae(train_x, cfg)
summary = sae_summary(evaluate_sae(sae, heldout_x), cfg, log) | {
    "layer": layer,
    "external": s.sae_dir,
}
save_sae(sae, Path(snakemake.output.sae).parent, {"layer": layer})
Path(snakemake.output.stats).write_text(json.dumps(summary, indent=2) + "\n")
print({k: v for k, v in summary.items() if k != "log"})
