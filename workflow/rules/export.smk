rule export_dataset:
    input:
        layout.labels_file("{task}", "{target}"),
    output:
        directory(layout.dataset_dir("{task}", "{target}")),
    params:
        model=lambda wildcards: config["models"][wildcards.target],
        settings=export_settings,
    log:
        layout.log_file("export_dataset", "{task}", "{target}"),
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/export_dataset.py"


# every task and target: snakemake export_datasets (not part of rule all)
rule export_datasets:
    localrule: True
    input:
        dataset_dirs(),
    conda:
        CONDA_ENV
