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
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
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
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/plot.py"


rule patching_layers:
    input:
        patching_eval_files,
    output:
        table="results/tables/patching_layers.csv",
        figure=report(
            "results/figures/patching_layers.png",
            caption="../report/patching_layers.rst",
            category="Activation patching",
        ),
    log:
        "logs/plot/patching_layers.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/plot_patching_layers.py"


rule patching_heatmaps:
    input:
        heatmap_eval_files,
    output:
        report(
            "results/figures/patching_heatmaps_{target}.png",
            caption="../report/patching_heatmaps.rst",
            category="Activation patching",
        ),
    log:
        "logs/plot/patching_heatmaps_{target}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/plot_patching_heatmaps.py"
