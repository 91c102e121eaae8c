rule collect_activations:
    input:
        model=lambda wildcards: model_marker(wildcards.target),
    output:
        "results/features/{target}/activations.safetensors",
    params:
        settings=config["features"],
    log:
        "logs/collect_activations/{target}.log",
    benchmark:
        "results/benchmarks/collect_activations/{target}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/collect_activations.py"


rule train_sae:
    input:
        activations="results/features/{target}/activations.safetensors",
    output:
        sae="results/features/{target}/sae/sae.safetensors",
        stats="results/features/{target}/sae_stats.json",
    params:
        settings=config["features"],
    log:
        "logs/train_sae/{target}.log",
    benchmark:
        "results/benchmarks/train_sae/{target}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/train_sae.py"


rule describe_features:
    input:
        unpack(describe_input),
    output:
        "results/features/{target}/descriptions.parquet",
    params:
        settings=config["features"],
        describer=describer_settings(),
    log:
        "logs/describe_features/{target}.log",
    benchmark:
        "results/benchmarks/describe_features/{target}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/describe_features.py"


rule label_features:
    input:
        descriptions="results/features/{target}/descriptions.parquet",
        sae="results/features/{target}/sae/sae.safetensors",
        activations="results/features/{target}/activations.safetensors",
    output:
        "results/labels/features/{target}.parquet",
    params:
        settings=config["features"],
    log:
        "logs/label_features/{target}.log",
    benchmark:
        "results/benchmarks/label_features/{target}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/label_features.py"


rule token_identity:
    input:
        target=lambda wildcards: model_marker(wildcards.target),
        explainer=lambda wildcards: model_marker(wildcards.explainer),
    output:
        "results/features/token_identity/{target}/{explainer}.json",
    params:
        check=token_identity_settings()[0],
        overrides=token_identity_settings()[1],
        train=config["train"],
        injection={
            "layer": config["features"]["inject_layer"],
            "scale": config["features"]["inject_scale"],
        },
        relation=lambda wildcards: "self" if wildcards.target == wildcards.explainer else "other",
        # adapter and checkpoints of the check's explainer (resumable), next to the JSON
        workdir=lambda wildcards, output: output[0].removesuffix(".json"),
    log:
        "logs/token_identity/{target}/{explainer}.log",
    benchmark:
        "results/benchmarks/token_identity/{target}/{explainer}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/selfexplain.yaml"
    script:
        "../scripts/token_identity.py"
