rule evaluate:
    input:
        unpack(evaluate_input),
    output:
        "results/eval/{task}/{target}/{explainer}/{variant}/s{seed}.parquet",
    params:
        settings=config["evaluate"],
        train=config["train"],
        heatmap_pairs=heatmap_pairs,
        features=config["features"],
    log:
        "logs/evaluate/{task}/{target}/{explainer}/{variant}/s{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{task}/{target}/{explainer}/{variant}/s{seed}.tsv"
    # one thread: two jobs at a time (see train_explainer)
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/evaluate.py"
