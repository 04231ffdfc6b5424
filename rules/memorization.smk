# Memorised prompts (docs/memorization.md): Wen et al.'s detection metric and its ROC
# statistics per benchmark (a model and its prompt files), the replication of the memorised prompts
# over seeds and the quality of general prompts per generation preset (the mitigations published
# after DCR are presets too), tables and figures.


rule memorization_prompts:
    input:
        unpack(get_prompt_file_inputs),
    output:
        table="resources/prompts/{prompt_file}.parquet",
    log:
        "logs/prompts/{prompt_file}.log",
    retries: 2
    localrule: True
    conda:
        "../envs/models.yaml"
    params:
        prompt_file=get_prompt_file_params,
        name="{prompt_file}",
    script:
        "../scripts/memorization_prompts.py"


rule memorization_detect:
    input:
        unpack(get_bench_inputs),
    output:
        detection=f"{R}/memorization/{{bench}}/detection.parquet",
        sets=f"{R}/memorization/{{bench}}/detection_sets.csv",
    log:
        f"{LOGS}/memorization/{{bench}}/detect.log",
    benchmark:
        f"{BENCH}/memorization/{{bench}}/detect.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=240,
        batch_size=config["resources"]["generate_batch_size"],
    params:
        numerics=NUMERICS,
        detection=get_detection_params,
    script:
        "../scripts/memorization_detect.py"


rule memorization_generate:
    input:
        unpack(get_bench_inputs),
    output:
        memorized=directory(f"{R}/memorization/{{bench}}/generations/{{gen}}/memorized"),
        general=directory(f"{R}/memorization/{{bench}}/generations/{{gen}}/general"),
    log:
        f"{LOGS}/memorization/{{bench}}/generate_{{gen}}.log",
    benchmark:
        f"{BENCH}/memorization/{{bench}}/generate_{{gen}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=720,
        batch_size=config["resources"]["generate_batch_size"],
    params:
        numerics=NUMERICS,
        preset=get_preset,
        generation=get_bench_generation_params,
    script:
        "../scripts/memorization_generate.py"


rule memorization_replication:
    input:
        unpack(get_replication_inputs),
    output:
        table=f"{R}/memorization/{{bench}}/replication/{{gen}}.parquet",
        summary=f"{R}/memorization/{{bench}}/replication/{{gen}}.json",
    log:
        f"{LOGS}/memorization/{{bench}}/replication_{{gen}}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    params:
        numerics=NUMERICS,
        replication=get_replication_params,
        bench="{bench}",
        preset="{gen}",
    script:
        "../scripts/memorization_replication.py"


rule memorization_quality:
    input:
        unpack(get_quality_inputs),
    output:
        summary=f"{R}/memorization/{{bench}}/quality/{{gen}}.json",
    log:
        f"{LOGS}/memorization/{{bench}}/quality_{{gen}}.log",
    benchmark:
        f"{BENCH}/memorization/{{bench}}/quality_{{gen}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        batch_size=config["resources"]["fid_batch_size"],
    params:
        numerics=NUMERICS,
        resolution=get_quality_resolution,
        convention=config["fid"]["convention"],
        clip_model=config["clipscore"]["model"],
        clip_convention=config["clipscore"]["convention"],
    script:
        "../scripts/memorization_quality.py"


rule memorization_tables:
    input:
        unpack(get_memorization_table_inputs),
    output:
        detection=report(
            f"{R}/tables/memorization_detection.csv",
            category="Memorization",
            caption="../report/memorization.rst",
        ),
        mitigations=report(
            f"{R}/tables/memorization_mitigations.csv",
            category="Memorization",
            caption="../report/memorization.rst",
        ),
        prompts=f"{R}/tables/memorization_prompts.csv",
    log:
        f"{LOGS}/tables/memorization.log",
    conda:
        "../envs/figures.yaml"
    params:
        numerics=NUMERICS,
        tables=get_memorization_table_params,
    script:
        "../scripts/memorization_tables.py"


rule memorization_figures:
    input:
        detections=[f"{R}/memorization/{b}/detection.parquet" for b in BENCHMARKS],
        mitigations=f"{R}/tables/memorization_mitigations.csv",
    output:
        roc=report(
            f"{R}/figures/memorization/roc.png",
            category="Memorization",
            caption="../report/memorization.rst",
        ),
        tradeoff=report(
            f"{R}/figures/memorization/tradeoff.png",
            category="Memorization",
            caption="../report/memorization.rst",
        ),
    log:
        f"{LOGS}/figures/memorization.log",
    conda:
        "../envs/figures.yaml"
    params:
        benchmarks=list(BENCHMARKS),
        study=STUDY,
        thresholds=MEMORIZATION["replication"]["thresholds"],
    script:
        "../scripts/memorization_figure.py"


rule memorization:
    default_target: False
    input:
        memorization_outputs(in_all=False),
