rule summarize:
    input:
        eval_files(),
    output:
        parquet=layout.table_file("all_metrics.parquet"),
        csv=layout.table_file("all_metrics.csv"),
    params:
        n_boot=from_config(config, "plot").n_boot,
    log:
        layout.log_file("summarize"),
    conda:
        CONDA_ENV
    script:
        "../scripts/summarize.py"


rule comparisons:
    input:
        eval_files(),
    output:
        parquet=layout.table_file("comparisons.parquet"),
        csv=report(
            layout.table_file("comparisons.csv"),
            caption="../report/comparisons.rst",
            category="Tables",
        ),
        figure=report(
            layout.figure_file("comparisons"),
            caption="../report/comparisons.rst",
            category="Matrix",
        ),
        privileged_access=report(
            layout.figure_file("privileged_access"),
            caption="../report/privileged_access.rst",
            category="Matrix",
        ),
    params:
        n_boot=from_config(config, "plot").n_boot,
    log:
        layout.log_file("comparisons"),
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    script:
        "../scripts/comparisons.py"


rule learning_curves:
    input:
        [run.summary_file() for run in train_runs()],
    output:
        table=layout.table_file("learning_curves.csv"),
        figure=report(
            layout.figure_file("learning_curves"),
            caption="../report/learning_curves.rst",
            category="Training",
        ),
    log:
        layout.log_file("plot", "learning_curves"),
    conda:
        CONDA_ENV
    script:
        "../scripts/learning_curves.py"


rule summary_table:
    input:
        rules.summarize.output.parquet,
    output:
        parquet=layout.table_file("summary.parquet"),
        csv=report(
            layout.table_file("summary.csv"),
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        layout.log_file("summary_table"),
    conda:
        CONDA_ENV
    script:
        "../scripts/summary_table.py"


rule self_vs_other_figure:
    input:
        rules.summary_table.output.parquet,
    output:
        report(
            layout.figure_file("self_vs_other"),
            caption="../report/self_vs_other.rst",
            category="Matrix",
        ),
    params:
        figure="self_vs_other",
    log:
        layout.log_file("plot", "self_vs_other"),
    conda:
        CONDA_ENV
    script:
        "../scripts/plot_matrix.py"


use rule self_vs_other_figure as baselines_figure with:
    output:
        report(
            layout.figure_file("baselines"),
            caption="../report/baselines.rst",
            category="Matrix",
        ),
    params:
        figure="baselines",
    log:
        layout.log_file("plot", "baselines"),


use rule self_vs_other_figure as scaling_figure with:
    output:
        report(
            layout.figure_file("scaling"),
            caption="../report/scaling.rst",
            category="Matrix",
        ),
    params:
        figure="scaling",
    log:
        layout.log_file("plot", "scaling"),


rule compute_table:
    input:
        benchmark_files(),
    output:
        table=report(
            layout.table_file("compute.csv"),
            caption="../report/compute.rst",
            category="Compute",
        ),
        figure=report(
            layout.figure_file("compute"),
            caption="../report/compute.rst",
            category="Compute",
        ),
    log:
        layout.log_file("compute_table"),
    conda:
        CONDA_ENV
    script:
        "../scripts/compute_table.py"


rule plot:
    input:
        rules.summarize.output.parquet,
    output:
        report(
            layout.figure_file("{task}_metrics"),
            caption="../report/metrics.rst",
            category="Metrics",
            subcategory="{task}",
        ),
    log:
        layout.log_file("plot", "{task}"),
    conda:
        CONDA_ENV
    script:
        "../scripts/plot.py"


rule patching_layers:
    input:
        patching_eval_files,
    output:
        table=layout.table_file("patching_layers.csv"),
        figure=report(
            layout.figure_file("patching_layers"),
            caption="../report/patching_layers.rst",
            category="Activation patching",
        ),
    log:
        layout.log_file("plot", "patching_layers"),
    conda:
        CONDA_ENV
    script:
        "../scripts/plot_patching_layers.py"


rule patching_heatmaps:
    input:
        heatmap_eval_files,
    output:
        report(
            layout.figure_file("patching_heatmaps_{target}"),
            caption="../report/patching_heatmaps.rst",
            category="Activation patching",
        ),
    log:
        layout.log_file("plot", "patching_heatmaps_{target}"),
    conda:
        CONDA_ENV
    script:
        "../scripts/plot_patching_heatmaps.py"
