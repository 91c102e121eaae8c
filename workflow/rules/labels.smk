rule make_prompts:
    output:
        "results/prompts/ablation.jsonl",
    params:
        settings=config["ablation"],
    log:
        "logs/make_prompts/ablation.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/make_prompts.py"


rule label_ablation:
    input:
        model=lambda wildcards: model_marker(wildcards.target),
        prompts="results/prompts/ablation.jsonl",
    output:
        "results/labels/ablation/{target}.parquet",
    params:
        settings=config["ablation"],
    log:
        "logs/label_ablation/{target}.log",
    benchmark:
        "results/benchmarks/label_ablation/{target}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/label_ablation.py"


rule make_pairs:
    output:
        "results/prompts/patching_pairs.jsonl",
    params:
        settings=config["patching"],
    log:
        "logs/make_pairs/patching.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/make_pairs.py"


rule label_patching:
    input:
        model=lambda wildcards: model_marker(wildcards.target),
        pairs="results/prompts/patching_pairs.jsonl",
    output:
        "results/labels/patching/{target}.parquet",
    params:
        settings=config["patching"],
    log:
        "logs/label_patching/{target}.log",
    benchmark:
        "results/benchmarks/label_patching/{target}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/label_patching.py"


rule make_hint_prompts:
    output:
        "results/prompts/hint.jsonl",
    params:
        settings=config["hint"],
    log:
        "logs/make_prompts/hint.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/make_hint_prompts.py"


rule label_hint:
    input:
        model=lambda wildcards: model_marker(wildcards.target),
        prompts="results/prompts/hint.jsonl",
    output:
        "results/labels/hint/{target}.parquet",
    params:
        settings=config["hint"],
    log:
        "logs/label_hint/{target}.log",
    benchmark:
        "results/benchmarks/label_hint/{target}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/label_hint.py"
