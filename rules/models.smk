# Model acquisition: every model is a folder under resources/models/ plus a sha256 manifest
# (`sha256sum -c` format) that is written only after every file was verified (diffrep.fetch).
# Downloads run on the submit/login node (localrule) and retry; a url download resumes from
# resources/models/.partial/, hub downloads from the hub's own cache. Pinned hashes
# (models.<name>.sha256, written by `python -m diffrep.pin_hashes`) are part of params, so pinning
# re-runs the fetch once, served from the cache, and verifies every file.


rule fetch_model:
    output:
        dir=directory("resources/models/{model}"),
        manifest="resources/models/{model}.sha256",
    log:
        "logs/models/fetch_{model}.log",
    wildcard_constraints:
        model=_alternatives(FETCHED_MODELS),
    retries: 2
    localrule: True
    conda:
        "../envs/models.yaml"
    params:
        model=get_model_source,
    script:
        "../scripts/fetch_model.py"


rule build_model:
    output:
        dir=directory("resources/models/{model}"),
        manifest="resources/models/{model}.sha256",
    log:
        "logs/models/build_{model}.log",
    benchmark:
        "benchmarks/models/build_{model}.tsv"
    wildcard_constraints:
        model=_alternatives(BUILT_MODELS),
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        numerics=NUMERICS,
        model=get_model_source,
    script:
        "../scripts/fetch_model.py"


rule models:
    default_target: False
    input:
        [model_files(m)["manifest"] for m in MODELS],
