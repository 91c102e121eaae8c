import os

from snakemake.utils import validate

from selfexplain.config import check_config
from selfexplain.variants import TRAINED_VARIANTS, applies

# Readable errors first (naming key, value, allowed values), then snakemake fills defaults.
check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
validate(config, schema="../schemas/config.schema.yaml")

if config.get("offline", True):
    # Never reach for a model hub; jobs inherit this environment.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

MODELS = sorted(config["models"])
TASKS = config["tasks"]
SEEDS = config["seeds"]


wildcard_constraints:
    model="|".join(MODELS),
    target="|".join(config["targets"]),
    explainer="|".join(config["explainers"]),
    task="|".join(TASKS),
    variant="|".join(config["variants"]),
    seed=r"\d+",


def model_marker(name):
    return f"resources/models/{name}/selfexplain_model.json"


def train_input(wildcards):
    return {
        "labels": f"results/labels/{wildcards.task}/{wildcards.target}.parquet",
        "model": model_marker(wildcards.explainer),
    }


def adapter_path(task, target, explainer, variant, seed):
    return f"results/explainers/{task}/{target}/{explainer}/{variant}/s{seed}/adapter_model.safetensors"


def evaluate_input(wildcards):
    inputs = train_input(wildcards)
    if wildcards.variant in TRAINED_VARIANTS:
        inputs["adapter"] = adapter_path(
            wildcards.task, wildcards.target, wildcards.explainer, wildcards.variant, wildcards.seed
        )
    return inputs


def eval_runs():
    """(task, target, explainer, variant, seed) of every evaluation in the experiment."""
    runs = []
    for task in TASKS:
        for target in config["targets"]:
            for explainer in config["explainers"]:
                for variant in config["variants"]:
                    if not applies(task, variant):  # see selfexplain/variants.py
                        continue
                    seeds = SEEDS if variant in TRAINED_VARIANTS else SEEDS[:1]
                    runs.extend((task, target, explainer, variant, s) for s in seeds)
    return runs


def eval_files():
    return [f"results/eval/{t}/{tg}/{e}/{v}/s{s}.parquet" for t, tg, e, v, s in eval_runs()]


def all_outputs():
    outputs = [
        "results/tables/metrics.parquet",
        "results/tables/metrics.csv",
        *[f"results/figures/{task}_metrics.png" for task in TASKS],
    ]
    if "features" in TASKS:
        outputs += [f"results/features/{t}/sae_stats.json" for t in config["targets"]]
    if "patching" in TASKS:
        outputs += [
            "results/tables/patching_layers.csv",
            "results/figures/patching_layers.png",
            *[f"results/figures/patching_heatmaps_{t}.png" for t in config["targets"]],
        ]
    return outputs


def patching_eval_files(wildcards):
    return [f for f in eval_files() if f.startswith("results/eval/patching/")]


def heatmap_eval_files(wildcards):
    return [
        f
        for f in patching_eval_files(wildcards)
        if f.startswith(f"results/eval/patching/{wildcards.target}/")
    ]


def features_dir(wildcards):
    return f"results/features/{wildcards.target}"


def describe_input(wildcards):
    inputs = {
        "model": model_marker(wildcards.target),
        "activations": f"results/features/{wildcards.target}/activations.safetensors",
        "sae": f"results/features/{wildcards.target}/sae/sae.safetensors",
    }
    describer = config["features"].get("describer") or {}
    if describer.get("kind") == "hf" and describer.get("model") in config["models"]:
        inputs["describer"] = model_marker(describer["model"])
    return inputs


def describer_settings():
    """The describer settings, with a model named in config.models turned into its directory."""
    describer = dict(config["features"].get("describer") or {"kind": "deterministic"})
    if describer.get("kind") == "hf" and describer.get("model") in config["models"]:
        describer["model"] = f"resources/models/{describer['model']}"
    return describer
