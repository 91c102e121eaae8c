rule make_prompts:
    output:
        layout.prompts_file("ablation"),
    params:
        settings=config["ablation"],
        corpus_file=text_corpus(),
    log:
        layout.log_file("make_prompts", "ablation"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/make_prompts.py"


rule label_ablation:
    input:
        unpack(label_input("ablation", "prompts", rules.make_prompts.output[0])),
    output:
        layout.labels_file("ablation", "{target}"),
    params:
        settings=config["ablation"],
    log:
        layout.log_file("label_ablation", "{target}"),
    benchmark:
        layout.benchmark_file("label_ablation", "{target}")
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/label_ablation.py"


rule make_pairs:
    output:
        layout.prompts_file("patching_pairs"),
    params:
        settings=config["patching"],
    log:
        layout.log_file("make_pairs", "patching"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/make_pairs.py"


rule label_patching:
    input:
        unpack(label_input("patching", "pairs", rules.make_pairs.output[0])),
    output:
        layout.labels_file("patching", "{target}"),
    params:
        settings=config["patching"],
    log:
        layout.log_file("label_patching", "{target}"),
    benchmark:
        layout.benchmark_file("label_patching", "{target}")
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/label_patching.py"


rule make_hint_prompts:
    output:
        layout.prompts_file("hint"),
    params:
        settings=config["hint"],
    log:
        layout.log_file("make_prompts", "hint"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/make_hint_prompts.py"


rule label_hint:
    input:
        unpack(label_input("hint", "prompts", rules.make_hint_prompts.output[0])),
    output:
        layout.labels_file("hint", "{target}"),
    params:
        settings=config["hint"],
    log:
        layout.log_file("label_hint", "{target}"),
    benchmark:
        layout.benchmark_file("label_hint", "{target}")
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/label_hint.py"
