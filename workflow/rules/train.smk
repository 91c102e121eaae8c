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
    threads: 2
    resources:
        mem_mb=12000,
        runtime=240,
    script:
        "../scripts/train_explainer.py"
