rule summarize:
    input:
        eval_files(),
    output:
        parquet="results/tables/all_metrics.parquet",
        csv="results/tables/all_metrics.csv",
    params:
        n_boot=config.get("plot", {}).get("n_boot", 1000),
    log:
        "logs/summarize.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/summarize.py"


rule comparisons:
    input:
        eval_files(),
    output:
        parquet="results/tables/comparisons.parquet",
        csv=report(
            "results/tables/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Tables",
        ),
        figure=report(
            "results/figures/comparisons.png",
            caption="../report/comparisons.rst",
            category="Matrix",
        ),
    params:
        n_boot=config.get("plot", {}).get("n_boot", 1000),
    log:
        "logs/comparisons.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/comparisons.py"


rule learning_curves:
    input:
        [
            f"results/explainers/{t}/{tg}/{e}/{v}/s{s}/train_summary.json"
            for t, tg, e, v, s in train_runs()
        ],
    output:
        table="results/tables/learning_curves.csv",
        figure=report(
            "results/figures/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Training",
        ),
    log:
        "logs/plot/learning_curves.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/learning_curves.py"


rule summary_table:
    input:
        "results/tables/all_metrics.parquet",
    output:
        parquet="results/tables/summary.parquet",
        csv=report(
            "results/tables/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        "logs/summary_table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/summary_table.py"


rule self_vs_other_figure:
    input:
        "results/tables/summary.parquet",
    output:
        report(
            "results/figures/self_vs_other.png",
            caption="../report/self_vs_other.rst",
            category="Matrix",
        ),
    params:
        figure="self_vs_other",
    log:
        "logs/plot/self_vs_other.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/plot_matrix.py"


rule baselines_figure:
    input:
        "results/tables/summary.parquet",
    output:
        report(
            "results/figures/baselines.png",
            caption="../report/baselines.rst",
            category="Matrix",
        ),
    params:
        figure="baselines",
    log:
        "logs/plot/baselines.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/plot_matrix.py"


rule scaling_figure:
    input:
        "results/tables/summary.parquet",
    output:
        report(
            "results/figures/scaling.png",
            caption="../report/scaling.rst",
            category="Matrix",
        ),
    params:
        figure="scaling",
    log:
        "logs/plot/scaling.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/plot_matrix.py"


rule compute_table:
    input:
        benchmark_files(),
    output:
        table=report(
            "results/tables/compute.csv",
            caption="../report/compute.rst",
            category="Compute",
        ),
        figure=report(
            "results/figures/compute.png",
            caption="../report/compute.rst",
            category="Compute",
        ),
    log:
        "logs/compute_table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/compute_table.py"


rule plot:
    input:
        "results/tables/all_metrics.parquet",
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
    conda:
        "../../envs/selfexplain.yaml"
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
    conda:
        "../../envs/selfexplain.yaml"
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
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/plot_patching_heatmaps.py"
