"""Residual-stream activations of one target on the corpus windows (safetensors)."""

from pathlib import Path

from selfexplain.core.job import job
from selfexplain.core.settings import FeatureSettings
from selfexplain.features.activations import collect_activations, default_layer, token_windows
from selfexplain.features.corpus import corpus_documents
from selfexplain.features.sae import save_activations
from selfexplain.models import decoder_layers, load

job(snakemake)

s = FeatureSettings.from_dict(snakemake.params.settings)
model, tokenizer = load(Path(snakemake.input.model).parent)
n_layers = len(decoder_layers(model))
layer = s.layer if s.layer is not None else default_layer(n_layers)
if layer >= n_layers:
    raise ValueError(f"features.layer {layer} out of range: the target has {n_layers} layers")
docs = corpus_documents(s.corpus_file)
windows = token_windows(tokenizer, docs, s.context_len, s.n_windows)
acts = collect_activations(model, windows, layer, s.batch_size)
print(
    f"{len(docs)} documents -> windows {tuple(windows.shape)} -> {tuple(acts.shape)}, layer {layer}"
)
save_activations(snakemake.output[0], windows, acts, layer)
