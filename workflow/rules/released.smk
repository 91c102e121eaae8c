rule evaluate_released:
    input:
        labels=lambda wildcards: layout.labels_file(
            config["released"][wildcards.name]["task"], config["released"][wildcards.name]["target"]
        ),
    output:
        rows=layout.released_file("{name}", "parquet"),
        metrics=layout.released_file("{name}", "json"),
    params:
        spec=lambda wildcards: config["released"][wildcards.name],
    log:
        layout.log_file("evaluate_released", "{name}"),
    benchmark:
        layout.benchmark_file("evaluate_released", "{name}")
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate_released.py"


# every released explainer of config released: (not part of rule all: needs the hub)
rule released:
    localrule: True
    input:
        released_files(),
    conda:
        CONDA_ENV
