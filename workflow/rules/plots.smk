rule summarize:
    input:
        eval_files(),
    output:
        parquet="results/tables/metrics.parquet",
        csv="results/tables/metrics.csv",
    params:
        n_boot=config.get("plot", {}).get("n_boot", 1000),
    log:
        "logs/summarize.log",
    script:
        "../scripts/summarize.py"


rule plot:
    input:
        "results/tables/metrics.parquet",
    output:
        report(
            "results/figures/{task}_metrics.png",
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{task}",
        ),
    log:
        "logs/plot/{task}.log",
    script:
        "../scripts/plot.py"
