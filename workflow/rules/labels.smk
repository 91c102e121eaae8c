rule make_prompts:
    output:
        "results/prompts/ablation.jsonl",
    params:
        settings=config["ablation"],
    log:
        "logs/make_prompts/ablation.log",
    script:
        "../scripts/make_prompts.py"


rule label_ablation:
    input:
        unpack(labels_input),
    output:
        "results/labels/{task}/{target}.parquet",
    params:
        settings=config["ablation"],
    wildcard_constraints:
        task="ablation",
    log:
        "logs/label_ablation/{task}/{target}.log",
    benchmark:
        "results/benchmarks/label_ablation/{task}/{target}.tsv"
    threads: 2
    script:
        "../scripts/label_ablation.py"
