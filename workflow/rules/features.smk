rule collect_activations:
    input:
        model=lambda wildcards: model_marker(wildcards.target),
    output:
        layout.activations_file("{target}"),
    params:
        settings=features_settings(),
    log:
        layout.log_file("collect_activations", "{target}"),
    benchmark:
        layout.benchmark_file("collect_activations", "{target}")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/collect_activations.py"


rule train_sae:
    input:
        activations=rules.collect_activations.output[0],
    output:
        sae=layout.sae_file("{target}"),
        stats=layout.sae_stats_file("{target}"),
    params:
        settings=features_settings(),
    log:
        layout.log_file("train_sae", "{target}"),
    benchmark:
        layout.benchmark_file("train_sae", "{target}")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/train_sae.py"


rule describe_features:
    input:
        unpack(describe_input),
    output:
        layout.descriptions_file("{target}"),
    params:
        settings=features_settings(),
        describer=describer_settings(),
    log:
        layout.log_file("describe_features", "{target}"),
    benchmark:
        layout.benchmark_file("describe_features", "{target}")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/describe_features.py"


rule label_features:
    input:
        descriptions=rules.describe_features.output[0],
        sae=rules.train_sae.output.sae,
        activations=rules.collect_activations.output[0],
    output:
        layout.labels_file("features", "{target}"),
    params:
        settings=features_settings(),
    log:
        layout.log_file("label_features", "{target}"),
    benchmark:
        layout.benchmark_file("label_features", "{target}")
    conda:
        CONDA_ENV
    script:
        "../scripts/label_features.py"


rule token_identity:
    input:
        target=lambda wildcards: model_marker(wildcards.target),
        explainer=lambda wildcards: model_marker(wildcards.explainer),
    output:
        layout.token_identity_file("{target}", "{explainer}"),
    params:
        check=token_identity_settings()[0],
        overrides=token_identity_settings()[1],
        train=train_section(),
        injection=from_config(config, "features").injection,
        relation=lambda wildcards: "self" if wildcards.target == wildcards.explainer else "other",
        # adapter and checkpoints of the check's explainer (resumable), next to the JSON
        workdir=lambda wildcards, output: output[0].removesuffix(".json"),
    log:
        layout.log_file("token_identity", "{target}", "{explainer}"),
    benchmark:
        layout.benchmark_file("token_identity", "{target}", "{explainer}")
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/token_identity.py"
