
from snakemake.utils import validate

from selfexplain.config import apply_offline, check_config
from selfexplain.matrix import all_variants, is_trained, runs, trained_variants

# Readable errors first (naming key, value, allowed values), then snakemake fills defaults.
check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
validate(config, schema="../schemas/config.schema.yaml")

apply_offline(config)  # offline (default): HF_HUB_OFFLINE=1 for this run and every job

MODELS = sorted(config["models"])
TASKS = config["tasks"]
VARIANTS = all_variants(config)  # config.variants + data-scaling variants n{N}
TRAINED = trained_variants(config)


wildcard_constraints:
    model="|".join(MODELS),
    target="|".join(config["targets"]),
    explainer="|".join(config["explainers"]),
    task="|".join(TASKS),
    variant="|".join(VARIANTS),
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
    if is_trained(wildcards.variant):
        inputs["adapter"] = adapter_path(
            wildcards.task, wildcards.target, wildcards.explainer, wildcards.variant, wildcards.seed
        )
    return inputs


def eval_runs():
    """(task, target, explainer, variant, seed) of every evaluation (selfexplain/matrix.py)."""
    return [(r.task, r.target, r.explainer, r.variant, r.seed) for r in runs(config)]


def train_runs():
    """The evaluations that need a trained adapter."""
    return [r for r in eval_runs() if is_trained(r[3])]


def eval_files():
    return [f"results/eval/{t}/{tg}/{e}/{v}/s{s}.parquet" for t, tg, e, v, s in eval_runs()]


def all_outputs():
    outputs = [
        "results/tables/all_metrics.parquet",
        "results/tables/all_metrics.csv",
        "results/tables/summary.csv",
        "results/tables/compute.csv",
        "results/tables/comparisons.csv",
        "results/figures/comparisons.png",
        *[f"results/figures/{name}.png" for name in MATRIX_FIGURES],
        "results/figures/compute.png",
        *[f"results/figures/{task}_metrics.png" for task in TASKS],
    ]
    if train_runs():
        outputs += ["results/tables/learning_curves.csv", "results/figures/learning_curves.png"]
    if "features" in TASKS:
        outputs += [f"results/features/{t}/sae_stats.json" for t in config["targets"]]
        outputs += token_identity_files()
    if "patching" in TASKS:
        outputs += [
            "results/tables/patching_layers.csv",
            "results/figures/patching_layers.png",
            *[f"results/figures/patching_heatmaps_{t}.png" for t in config["targets"]],
        ]
    return outputs


# figures drawn from the tidy table (rule matrix_figure; plots.MATRIX_FIGURES draws them)
MATRIX_FIGURES = ["self_vs_other", "baselines", "scaling"]


def benchmark_files():
    """The benchmark file of every job that declares one (the compute table reads them all)."""
    per_target = [f"label_{task}" for task in TASKS if task != "features"]
    if "features" in TASKS:
        per_target += ["collect_activations", "train_sae", "describe_features", "label_features"]
    used = set(config["targets"]) | set(config["explainers"])
    describer = (config.get("features") or {}).get("describer") or {}
    if "features" in TASKS and describer.get("kind") == "hf":
        used |= {describer.get("model")} & set(config["models"])
    used = sorted(used)
    files = [f"results/benchmarks/get_model/{m}.tsv" for m in used]
    files += [f"results/benchmarks/{r}/{t}.tsv" for r in per_target for t in config["targets"]]
    for task, target, explainer, variant, seed in eval_runs():
        run = f"{task}/{target}/{explainer}/{variant}/s{seed}.tsv"
        files.append(f"results/benchmarks/evaluate/{run}")
        if is_trained(variant):
            files.append(f"results/benchmarks/train_explainer/{run}")
    return files


def patching_eval_files(wildcards):
    """Patching evaluations of the configured variants (every seed; no scaling runs)."""
    return [
        f"results/eval/{t}/{tg}/{e}/{v}/s{s}.parquet"
        for t, tg, e, v, s in eval_runs()
        if t == "patching" and v in config["variants"]
    ]


def heatmap_pairs(wildcards):
    """Test pairs whose every cell is evaluated: only in the runs the heatmap figure shows."""
    shown = f"results/eval/{wildcards.task}/{wildcards.target}/{wildcards.explainer}/"
    shown += f"{wildcards.variant}/s{wildcards.seed}.parquet"
    if wildcards.task != "patching" or shown not in heatmap_eval_files(wildcards):
        return 0
    return config["patching"]["heatmap_pairs"]


def heatmap_eval_files(wildcards):
    """One evaluation per (explainer, variant) of the target: its first seed."""
    first = {}
    for t, tg, e, v, s in eval_runs():
        if t == "patching" and tg == wildcards.target and v in config["variants"]:
            first.setdefault((e, v), f"results/eval/{t}/{tg}/{e}/{v}/s{s}.parquet")
    return list(first.values())


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


def token_identity_settings():
    """features.token_identity (validate() filled in the schema defaults): run settings and
    the train.* overrides."""
    ti = config["features"]["token_identity"]
    check = {k: ti[k] for k in ("n_train", "n_test", "scales")}
    return check, {k: ti[k] for k in ("epochs", "lr")}


def token_identity_files():
    """The token identity results of every (target, explainer) pair (for rule all)."""
    return [
        f"results/features/token_identity/{t}/{e}.json"
        for t in config["targets"]
        for e in config["explainers"]
    ]
