rule train_explainer:
    input:
        unpack(train_input),
    output:
        adapter=RUN.adapter_file("lora"),
        summary=RUN.summary_file(),
    params:
        train=lambda wildcards: train_section(wildcards.task),
        features=features_settings(),
        checkpoints=lambda wildcards: Run.of(wildcards).checkpoint_dir(),
    wildcard_constraints:
        variant="|".join(TRAINED),
        task=method_tasks("lora"),
    log:
        RUN.log_file("train_explainer"),
    benchmark:
        RUN.benchmark_file("train_explainer")
    threads: train_threads()  # 1, or every core when it is the only training job
    resources:
        mem_mb=12000,
        runtime=240,
    conda:
        CONDA_ENV
    script:
        "../scripts/train_explainer.py"


# the tasks whose train.method (per task: train.per_task) is full: the same job, whose output is
# the whole fine-tuned model
use rule train_explainer as train_explainer_full with:
    output:
        adapter=RUN.adapter_file("full"),
        summary=RUN.summary_file(),
    wildcard_constraints:
        variant="|".join(TRAINED),
        task=method_tasks("full"),
