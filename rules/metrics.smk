# Measuring replication: copy-detection embeddings, faiss retrieval and similarity statistics,
# FID, CLIP score and weight differences. Training-set embeddings, FID reference statistics and
# the CLIP-score training-set baseline are computed once per dataset and shared by every run.


rule embed_train:
    input:
        unpack(get_embed_train_inputs),
    output:
        embeddings=f"{R}/{{dataset}}/embeddings/{{embedder}}/train.npz",
    log:
        f"{LOGS}/embed/{{dataset}}/{{embedder}}/train.log",
    benchmark:
        f"{BENCH}/embed/{{dataset}}/{{embedder}}/train.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
        batch_size=config["resources"]["embed_batch_size"],
        workers=config["resources"]["dataloader_workers"],
    params:
        numerics=NUMERICS,
        embedder=get_embedder,
    script:
        "../scripts/embed.py"


rule embed_generations:
    input:
        unpack(get_embed_generation_inputs),
    output:
        embeddings=f"{R}/{{dataset}}/embeddings/{{embedder}}/{{run}}/{{gen}}.npz",
    log:
        f"{LOGS}/embed/{{dataset}}/{{embedder}}/{{run}}/{{gen}}.log",
    benchmark:
        f"{BENCH}/embed/{{dataset}}/{{embedder}}/{{run}}/{{gen}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
        batch_size=config["resources"]["embed_batch_size"],
        workers=config["resources"]["dataloader_workers"],
    params:
        numerics=NUMERICS,
        embedder=get_embedder,
    script:
        "../scripts/embed.py"


rule train_baseline:
    input:
        train=f"{R}/{{dataset}}/embeddings/{{embedder}}/train.npz",
        threshold=get_threshold_input,
    output:
        stats=f"{R}/{{dataset}}/similarity/{{embedder}}/train_baseline.json",
        matches=f"{R}/{{dataset}}/similarity/{{embedder}}/train_baseline.parquet",
    log:
        f"{LOGS}/similarity/{{dataset}}/{{embedder}}/train_baseline.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    params:
        numerics=NUMERICS,
        identity=get_baseline_identity,
        threshold=config["similarity"]["threshold"],
        faiss_index=config["similarity"]["index"],
        nlist=config["similarity"]["nlist"],
        nprobe=config["similarity"]["nprobe"],
    script:
        "../scripts/train_baseline.py"


rule retrieve:
    input:
        train=f"{R}/{{dataset}}/embeddings/{{embedder}}/train.npz",
        generations=f"{R}/{{dataset}}/embeddings/{{embedder}}/{{run}}/{{gen}}.npz",
        images=get_generations,
        plan=get_run_plan,
        threshold=get_threshold_input,
    output:
        matches=f"{R}/{{dataset}}/similarity/{{embedder}}/{{run}}/{{gen}}.parquet",
        stats=f"{R}/{{dataset}}/similarity/{{embedder}}/{{run}}/{{gen}}.json",
    log:
        f"{LOGS}/similarity/{{dataset}}/{{embedder}}/{{run}}/{{gen}}.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    params:
        numerics=NUMERICS,
        identity=get_matches_identity,
        similarity=config["similarity"],
    script:
        "../scripts/retrieve.py"


rule fid_reference:
    input:
        unpack(get_dataset),
        unpack(get_fid_model),
    output:
        stats=f"{R}/{{dataset}}/fid/reference.npz",
    log:
        f"{LOGS}/fid/{{dataset}}/reference.log",
    benchmark:
        f"{BENCH}/fid/{{dataset}}/reference.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
        batch_size=config["resources"]["fid_batch_size"],
        workers=config["resources"]["dataloader_workers"],
    params:
        numerics=NUMERICS,
        resolution=config["training"]["resolution"],
        convention=config["fid"]["convention"],
    script:
        "../scripts/fid.py"


rule fid:
    input:
        unpack(get_fid_model),
        reference=f"{R}/{{dataset}}/fid/reference.npz",
        generations=get_generations,
    output:
        score=f"{R}/{{dataset}}/fid/{{run}}/{{gen}}.json",
    log:
        f"{LOGS}/fid/{{dataset}}/{{run}}/{{gen}}.log",
    benchmark:
        f"{BENCH}/fid/{{dataset}}/{{run}}/{{gen}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
        batch_size=config["resources"]["fid_batch_size"],
        workers=config["resources"]["dataloader_workers"],
    params:
        numerics=NUMERICS,
        resolution=config["training"]["resolution"],
        convention=config["fid"]["convention"],
    script:
        "../scripts/fid.py"


rule clipscore:
    input:
        unpack(get_clip_model),
        generations=get_generations,
    output:
        score=f"{R}/{{dataset}}/clipscore/{{run}}/{{gen}}.json",
    log:
        f"{LOGS}/clipscore/{{dataset}}/{{run}}/{{gen}}.log",
    benchmark:
        f"{BENCH}/clipscore/{{dataset}}/{{run}}/{{gen}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
        batch_size=config["resources"]["clip_batch_size"],
    params:
        numerics=NUMERICS,
        model=config["clipscore"]["model"],
        convention=config["clipscore"]["convention"],
    script:
        "../scripts/clipscore.py"


rule clipscore_train_baseline:
    input:
        unpack(get_clipscore_baseline_inputs),
    output:
        score=f"{R}/{{dataset}}/clipscore/train_baseline.json",
    log:
        f"{LOGS}/clipscore/{{dataset}}/train_baseline.log",
    benchmark:
        f"{BENCH}/clipscore/{{dataset}}/train_baseline.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
        batch_size=config["resources"]["clip_batch_size"],
    params:
        numerics=NUMERICS,
        dataset="{dataset}",
        model=config["clipscore"]["model"],
        convention=config["clipscore"]["convention"],
    script:
        "../scripts/clipscore.py"


rule weightdiff:
    input:
        unpack(get_weightdiff_inputs),
    output:
        table=f"{R}/{{dataset}}/weightdiff/{{run}}.parquet",
    log:
        f"{LOGS}/weightdiff/{{dataset}}/{{run}}.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=16000,
    params:
        numerics=NUMERICS,
    script:
        "../scripts/weightdiff.py"
