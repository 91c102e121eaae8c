rule train_explainer:
    input:
        unpack(train_input),
    output:
        adapter="results/explainers/{task}/{target}/{explainer}/{variant}/s{seed}/adapter_model.safetensors",
        summary="results/explainers/{task}/{target}/{explainer}/{variant}/s{seed}/train_summary.json",
    params:
        train=config["train"],
        features=config["features"],
        checkpoints=lambda wildcards: (
            f"results/checkpoints/{wildcards.task}/{wildcards.target}/"
            f"{wildcards.explainer}/{wildcards.variant}/s{wildcards.seed}"
        ),
    wildcard_constraints:
        variant="|".join(TRAINED),
    log:
        "logs/train_explainer/{task}/{target}/{explainer}/{variant}/s{seed}.log",
    benchmark:
        "results/benchmarks/train_explainer/{task}/{target}/{explainer}/{variant}/s{seed}.tsv"
    # one thread: on a laptop two jobs at a time keep both cores busier than one job on two
    # (Python start-up and model loading overlap; matmuls at batch 8 scale poorly past 1 core)
    threads: 1
    resources:
        mem_mb=12000,
        runtime=240,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/train_explainer.py"
