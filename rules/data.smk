# Datasets, captions and duplication plans.


rule prepare_dataset:
    output:
        images=directory("resources/data/{dataset}/images"),
        metadata="resources/data/{dataset}/metadata.parquet",
        manifest="resources/data/{dataset}/images.sha256",
        report="resources/data/{dataset}/report.json",
    log:
        "logs/data/prepare_{dataset}.log",
    retries: 1
    localrule: True
    conda:
        get_dataset_env
    threads: 4
    params:
        numerics=NUMERICS,
        name="{dataset}",
        dataset=get_dataset_config,
    script:
        "../scripts/prepare_dataset.py"


rule blip_captions:
    input:
        unpack(get_blip_inputs),
    output:
        captions=f"{R}/{{dataset}}/captions/blip.parquet",
    log:
        f"{LOGS}/captions/{{dataset}}/blip.log",
    benchmark:
        f"{BENCH}/captions/{{dataset}}/blip.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
        batch_size=config["resources"]["blip_batch_size"],
    params:
        numerics=NUMERICS,
        blip=config["captions"]["blip"],
        seed=config["seed"],
    script:
        "../scripts/blip_captions.py"


rule llm_captions:
    input:
        unpack(get_llm_caption_inputs),
    output:
        captions=f"{R}/{{dataset}}/captions/llm.parquet",
    log:
        f"{LOGS}/captions/{{dataset}}/llm.log",
    benchmark:
        f"{BENCH}/captions/{{dataset}}/llm.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        numerics=NUMERICS,
        dataset="{dataset}",
        llm=config["captions"]["llm"],
        seed=get_llm_caption_seed,
    script:
        "../scripts/llm_captions.py"


rule captions:
    input:
        unpack(get_caption_inputs),
    output:
        captions=f"{R}/{{dataset}}/captions/{{conditioning}}.json",
    log:
        f"{LOGS}/captions/{{dataset}}/{{conditioning}}.log",
    conda:
        "../envs/data.yaml"
    params:
        dataset="{dataset}",
        captions=get_caption_params,
    script:
        "../scripts/captions.py"


rule duplication_plan:
    input:
        metadata=f"resources/data/{{dataset}}/metadata.parquet",
    output:
        plan=f"{R}/{{dataset}}/duplication/{{duplication}}.parquet",
    log:
        f"{LOGS}/duplication/{{dataset}}/{{duplication}}.log",
    conda:
        "../envs/data.yaml"
    params:
        style="{duplication}",
        duplication=get_duplication_params,
    script:
        "../scripts/duplication_plan.py"


rule data:
    default_target: False
    input:
        [dataset_files(ds)["manifest"] for ds in DATASETS],
