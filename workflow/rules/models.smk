rule get_model:
    output:
        marker=model_marker("{model}"),
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
    log:
        layout.log_file("get_model", "{model}"),
    benchmark:
        layout.benchmark_file("get_model", "{model}")
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/get_model.py"
