rule get_model:
    output:
        marker="resources/models/{model}/selfexplain_model.json",
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
    log:
        "logs/get_model/{model}.log",
    benchmark:
        "results/benchmarks/get_model/{model}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/get_model.py"
