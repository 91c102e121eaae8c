rule evaluate:
    input:
        unpack(evaluate_input),
    output:
        RUN.eval_file(),
    params:
        settings=config["evaluate"],
        train=lambda wildcards: train_section(wildcards.task),
        heatmap_pairs=heatmap_pairs,
        features=features_settings(),
    log:
        RUN.log_file("evaluate"),
    benchmark:
        RUN.benchmark_file("evaluate")
    # one thread: two jobs at a time (see train_explainer)
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate.py"
