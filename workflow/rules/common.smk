
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from selfexplain.config import apply_offline, check_config, coerce_config
from selfexplain.core import layout
from selfexplain.core.layout import Run, is_local, model_marker
from selfexplain.core.settings import TrainSettings, from_config
from selfexplain.data.matrix import all_variants, is_trained, runs, targets_for, trained_variants

# --config passes nested values as text: read them by the schema's types (in place). Then
# readable errors (naming key, value, allowed values), then snakemake fills defaults.
coerce_config(config, workflow.source_path("../schemas/config.schema.yaml"))
check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
validate(config, schema="../schemas/config.schema.yaml")

apply_offline(config)  # offline (default): HF_HUB_OFFLINE=1 for this run and every job

# every rule's environment for `snakemake --sdm conda` (relative to workflow/rules/)
CONDA_ENV = "../../envs/selfexplain.yaml"

MODELS = sorted(config["models"])
TASKS = config["tasks"]
VARIANTS = all_variants(config)  # config.variants + data-scaling variants n{N}
TRAINED = trained_variants(config)
TRAIN = from_config(config, "train")  # train.method and its per-task overrides


wildcard_constraints:
    model="|".join(MODELS),
    target="|".join(config["targets"]),
    explainer="|".join(config["explainers"]),
    task="|".join(TASKS),
    variant="|".join(VARIANTS),
    seed=r"\d+",


# every path comes from selfexplain.core.layout; RUN: the rules' run pattern ({task}/.../s{seed})
RUN = Run.pattern()


def train_input(wildcards):
    return {
        "labels": layout.labels_file(wildcards.task, wildcards.target),
        "model": model_marker(wildcards.explainer),
    }


def evaluate_input(wildcards):
    inputs = train_input(wildcards)
    if is_trained(wildcards.variant):
        inputs["adapter"] = Run.of(wildcards).adapter_file(TRAIN.method(wildcards.task))
    return inputs


def method_tasks(method):
    """The tasks trained with method "lora" (rule train_explainer) or "full" (rule
    train_explainer_full), as a wildcard constraint (train.method, train.per_task)."""
    return "|".join(t for t in TASKS if TRAIN.method(t) == method) or "(?!)"  # (?!): none


def labels_source(task, target):
    """The released label set a target's labels of task are imported from (<task>.labels_from),
    or None: then they are computed."""
    return from_config(config, task).labels_from.get(target)


def label_input(task, name, prompts):
    """Inputs of the label_<task> rule. Computed labels need the target model and its prompts
    (or pairs: name); imported ones (<task>.labels_from) only the dataset, when it is local (a
    hub id is no file)."""

    def inputs(wildcards):
        source = labels_source(task, wildcards.target)
        if source is None:
            return {"model": model_marker(wildcards.target), name: prompts}
        return {"released": source} if is_local(source) else {}

    return inputs


def export_settings(wildcards):
    """The config a dataset export records: the task's section and the target's model."""
    return {
        wildcards.task: config.get(wildcards.task, {}),
        "models": {wildcards.target: config["models"][wildcards.target]},
    }


def dataset_dirs():
    """Every (task, target) dataset export (rule export_datasets)."""
    return [layout.dataset_dir(task, t) for task in TASKS for t in targets_for(config, task)]


def released_files():
    """The scores of every released explainer in config released: (rule released)."""
    names = config.get("released") or {}
    return [layout.released_file(n, ext) for n in names for ext in ("parquet", "json")]


def train_runs():
    """The evaluations that need a trained adapter (selfexplain/matrix.py)."""
    return [r for r in runs(config) if is_trained(r.variant)]


def train_section(task=None):
    """config["train"] as a job's params, per_task narrowed to the job's task (token_identity:
    none, it reads the section's keys alone): TrainSettings.job_params."""
    return TrainSettings.job_params(config["train"], task)


def train_threads():
    """Threads of a training job: one when the matrix trains several explainers (two jobs at a
    time keep a laptop's cores busier than one job on two: model loading overlaps, and matmuls at
    batch 8 scale poorly past one core), every core of --cores when it trains one
    (config/quick.yaml), which then has no other job to share them with. Snakemake caps threads
    at --cores; profiles/slurm sets its own (set-threads)."""
    if len(train_runs()) != 1:
        return 1
    try:
        return workflow.cores
    except WorkflowError:  # no --cores (e.g. a dry run without a profile)
        return 1


def eval_files():
    return [r.eval_file() for r in runs(config)]


def all_outputs():
    table, figure = layout.table_file, layout.figure_file
    outputs = [
        table("all_metrics.parquet"),
        table("all_metrics.csv"),
        table("summary.csv"),
        table("compute.csv"),
        table("comparisons.csv"),
        figure("comparisons"),
        figure("privileged_access"),
        *[figure(name) for name in MATRIX_FIGURES],
        figure("compute"),
        *[figure(f"{task}_metrics") for task in TASKS],
    ]
    if train_runs():
        outputs += [table("learning_curves.csv"), figure("learning_curves")]
    if "features" in TASKS:
        outputs += [layout.sae_stats_file(t) for t in targets_for(config, "features")]
        outputs += token_identity_files()
    if "patching" in TASKS:
        outputs += [
            table("patching_layers.csv"),
            figure("patching_layers"),
            *[figure(f"patching_heatmaps_{t}") for t in targets_for(config, "patching")],
        ]
    return outputs


# figures drawn from the seed summary (rules <name>_figure; plots.MATRIX_FIGURES draws them)
MATRIX_FIGURES = ["self_vs_other", "baselines", "scaling"]


def benchmark_files():
    """The benchmark file of every job that declares one (the compute table reads them all)."""
    per_target = [(f"label_{task}", task) for task in TASKS if task != "features"]
    if "features" in TASKS:
        per_target += [
            (rule, "features")
            for rule in ("collect_activations", "train_sae", "describe_features", "label_features")
        ]
    used = set(config["targets"]) | set(config["explainers"])
    if "features" in TASKS:
        used |= {describer_model()} - {None}  # an hf describer's model is materialised too
    used = sorted(used)
    files = [layout.benchmark_file("get_model", m) for m in used]
    files += [
        layout.benchmark_file(r, t) for r, task in per_target for t in targets_for(config, task)
    ]
    if "features" in TASKS:  # the token identity check of every (target, explainer) pair
        files += [
            layout.benchmark_file("token_identity", t, e)
            for t in targets_for(config, "features")
            for e in config["explainers"]
        ]
    for run in runs(config):
        files.append(run.benchmark_file("evaluate"))
        if is_trained(run.variant):
            files.append(run.benchmark_file("train_explainer"))
    return files


def patching_eval_files(wildcards):
    """Patching evaluations of the configured variants (every seed; no scaling runs)."""
    return [
        r.eval_file()
        for r in runs(config)
        if r.task == "patching" and r.variant in config["variants"]
    ]


def heatmap_pairs(wildcards):
    """Test pairs whose every cell is evaluated: only in the runs the heatmap figure shows."""
    shown = Run.of(wildcards).eval_file()
    if wildcards.task != "patching" or shown not in heatmap_eval_files(wildcards):
        return 0
    return from_config(config, "patching").heatmap_pairs


def heatmap_eval_files(wildcards):
    """One evaluation per (explainer, variant) of the target: its first seed."""
    first = {}
    for r in runs(config):
        if r.task == "patching" and r.target == wildcards.target and r.variant in config["variants"]:
            first.setdefault((r.explainer, r.variant), r.eval_file())
    return list(first.values())


def describe_input(wildcards):
    inputs = {
        "model": model_marker(wildcards.target),
        "activations": layout.activations_file(wildcards.target),
        "sae": layout.sae_file(wildcards.target),
    }
    model = describer_model()
    if model:
        inputs["describer"] = model_marker(model)
    return inputs


def describer_model():
    """The hf describer's model when it is a name from config.models (materialised by
    get_model), else None."""
    describer = from_config(config, "features").describer
    if describer.kind == "hf" and describer.model in config["models"]:
        return describer.model
    return None


def describer_settings():
    """The describer settings, with a model named in config.models turned into its directory."""
    describer = dict(config["features"].get("describer") or {"kind": "deterministic"})
    model = describer_model()
    if model:
        describer["model"] = layout.model_dir(model)
    return describer


def text_corpus():
    """The corpus of the ablation prompt kind text (features.corpus_file), None when the kinds
    leave text out: a new corpus for the features then does not regenerate the ablation
    prompts and everything after them."""
    if "text" not in config["ablation"]["kinds"]:
        return None
    return config["features"]["corpus_file"]


def features_settings():
    """config["features"] without token_identity, for the rules that read features.*: the
    token-identity check is its rule's own params, so editing it reruns that rule only."""
    return {k: v for k, v in config["features"].items() if k != "token_identity"}


def token_identity_settings():
    """features.token_identity: run settings and the train.* overrides."""
    ti = from_config(config, "features").token_identity
    return ti.check(), ti.overrides()


def token_identity_files():
    """The token identity results of every (target, explainer) pair (for rule all)."""
    return [
        layout.token_identity_file(t, e)
        for t in targets_for(config, "features")
        for e in config["explainers"]
    ]
