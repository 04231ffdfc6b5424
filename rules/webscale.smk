# The CVPR'23 study (docs/webscale.md): a pretrained model's generations searched against its
# web-scale training set. Per shard of a reference collection one download (on the submit node), one
# embed (GPU) and one search job; per search one merge that equals an exact search over the whole
# collection. Embed and search of a shard form one group, so `--group-components webscale_shard=N`
# sends N shards per cluster job instead of two sbatch calls per shard.


rule pretraining_web:
    input:
        unpack(get_pretraining_model),
    output:
        parquet=f"{WS}/{{collection}}/web.parquet",
        images=directory(f"{WS}/{{collection}}/web"),
    log:
        f"logs/webscale/{{collection}}/pretraining_web.log",
    wildcard_constraints:
        collection=_alternatives(PRETRAINING_WEBS),
    localrule: True
    conda:
        "../envs/models.yaml"
    params:
        numerics=NUMERICS,
        url_base=get_web_url,
    script:
        "../scripts/webscale_pretraining_web.py"


rule dataset_web:
    input:
        unpack(get_web_dataset),
    output:
        parquet=f"{WS}/{{collection}}/web.parquet",
    log:
        f"logs/webscale/{{collection}}/dataset_web.log",
    wildcard_constraints:
        collection=_alternatives(DATASET_WEBS),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        numerics=NUMERICS,
        n_rows=get_web_rows,
        where="webscale.collections.{collection}.n_rows",
    script:
        "../scripts/webscale_dataset_web.py"


rule download_shard:
    input:
        unpack(get_download_inputs),
    output:
        tar=f"{WS}/{{collection}}/shards/{{shard}}.tar",
        stats=f"{WS}/{{collection}}/shards/{{shard}}_stats.json",
    log:
        f"logs/webscale/{{collection}}/download/{{shard}}.log",
    wildcard_constraints:
        collection=_alternatives(DOWNLOADED),
    retries: 2
    localrule: True
    conda:
        get_shard_download_env
    threads: 4
    resources:
        fetch_engine=get_fetch_engine,
        fetch_threads=get_fetch_threads,
        fetch_timeout=get_fetch_timeout,
        fetch_retries=get_fetch_retries,
        allow_missing=get_allow_missing,
    params:
        rows=get_shard_rows_params,
        shard="{shard}",
    script:
        "../scripts/webscale_download.py"


# img2dataset's shards already on disk: checked against the parquets and recorded, not copied
rule register_shard:
    input:
        unpack(get_on_disk_shard),
    output:
        stats=f"{WS}/{{collection}}/shards/{{shard}}_stats.json",
    log:
        f"logs/webscale/{{collection}}/register/{{shard}}.log",
    wildcard_constraints:
        collection=_alternatives(ON_DISK),
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        rows=get_shard_rows_params,
        shard="{shard}",
    script:
        "../scripts/webscale_register.py"


rule embed_shard:
    input:
        unpack(get_embed_shard_inputs),
    output:
        embeddings=f"{WS}/{{collection}}/embeddings/{{embedder}}/{{shard}}.npz",
        meta=f"{WS}/{{collection}}/embeddings/{{embedder}}/{{shard}}.parquet",
    log:
        f"logs/webscale/{{collection}}/embed/{{embedder}}/{{shard}}.log",
    benchmark:
        f"benchmarks/webscale/{{collection}}/embed/{{embedder}}/{{shard}}.tsv"
    group:
        "webscale_shard"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=30,
        webscale_slot=1,  # profiles/slurm: one shard job at a time in a group job
        batch_size=config["resources"]["embed_batch_size"],
        workers=config["resources"]["dataloader_workers"],
    params:
        numerics=NUMERICS,
        embedder=get_embedder,
        shard="{shard}",
        bad_images=get_bad_images,
    script:
        "../scripts/webscale_embed.py"


rule search_shard:
    input:
        unpack(get_search_shard_inputs),
    output:
        matches=f"{R}/webscale/{{search}}/shards/{{shard}}.parquet",
    log:
        f"{LOGS}/webscale/{{search}}/search/{{shard}}.log",
    group:
        "webscale_shard"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=15,
        webscale_slot=1,
    params:
        numerics=NUMERICS,
        shard="{shard}",
        top_k=get_search_top_k,
    script:
        "../scripts/webscale_search.py"


rule search_prompts:
    input:
        unpack(get_search_prompt_inputs),
    output:
        prompts=f"{R}/webscale/{{search}}/prompts.parquet",
    log:
        f"{LOGS}/webscale/{{search}}/prompts.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        prompts=get_search_prompt_params,
    script:
        "../scripts/webscale_prompts.py"


# A search prompted from its collection or a prompt file generates its own images (same script and
# resources as rule generate); one prompted by a dataset's captions searches that dataset's run.
rule generate_search:
    input:
        unpack(get_search_generate_inputs),
    output:
        images=directory(f"{R}/webscale/{{search}}/generations"),
    log:
        f"{LOGS}/webscale/{{search}}/generate.log",
    benchmark:
        f"{BENCH}/webscale/{{search}}/generate.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=get_generate_mem_mb,
        gpu_mem_mb=get_generate_gpu_mem_mb,
        runtime=get_generate_runtime,
        cuda_dtype=get_generate_cuda_dtype,
        batch_size=config["resources"]["generate_batch_size"],
    params:
        numerics=NUMERICS,
        preset=get_preset,
        generation=get_generation_params,
        run=get_generation_run,
    script:
        "../scripts/generate.py"


rule embed_search_generations:
    input:
        unpack(get_search_embed_inputs),
    output:
        embeddings=f"{R}/webscale/{{search}}/generations.npz",
    log:
        f"{LOGS}/webscale/{{search}}/embed_generations.log",
    benchmark:
        f"{BENCH}/webscale/{{search}}/embed_generations.tsv"
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
        embedder=get_search_embedder,
    script:
        "../scripts/embed.py"


rule merge_search:
    input:
        unpack(get_merge_inputs),
    output:
        matches=f"{R}/webscale/{{search}}/matches.parquet",
        summary=f"{R}/webscale/{{search}}/summary.json",
        shards=f"{R}/webscale/{{search}}/shards.csv",
    log:
        f"{LOGS}/webscale/{{search}}/merge.log",
    benchmark:
        f"{BENCH}/webscale/{{search}}/merge.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        numerics=NUMERICS,
        search=get_search,
        label=get_search_label,
        shards=get_search_shards,
        seed=get_search_seed,
    script:
        "../scripts/webscale_merge.py"


rule webscale_tables:
    input:
        summaries=webscale_summaries(),
        approx=approx_recalls(),
    output:
        table=f"{R}/tables/webscale.csv",
    log:
        f"{LOGS}/webscale/tables.log",
    conda:
        "../envs/torch.yaml"
    params:
        numerics=NUMERICS,
    script:
        "../scripts/webscale_tables.py"


rule webscale_figures:
    input:
        matches=f"{R}/webscale/{{search}}/matches.parquet",
        generations=get_search_generation_dir,
        tars=get_search_shard_tars,
        stats=get_search_shard_stats,
    output:
        gallery=report(
            f"{R}/figures/webscale/{{search}}/gallery.png",
            category="Web-scale search",
            subcategory="{search}",
            caption="../report/webscale_gallery.rst",
        ),
        gallery_pdf=f"{R}/figures/webscale/{{search}}/gallery.pdf",
        histogram=report(
            f"{R}/figures/webscale/{{search}}/top1_histogram.png",
            category="Web-scale search",
            subcategory="{search}",
            caption="../report/webscale_histogram.rst",
        ),
        histogram_pdf=f"{R}/figures/webscale/{{search}}/top1_histogram.pdf",
        images=directory(f"{R}/webscale/{{search}}/match_images"),
    log:
        f"{LOGS}/figures/webscale/{{search}}.log",
    conda:
        "../envs/figures.yaml"
    params:
        study=STUDY,
        label=get_search_label,
        threshold=get_search_threshold,
        shards=get_search_shards,
        size=config["figures"]["gallery_size"],
        top_k=config["figures"]["gallery_top_k"],
        dpi=config["figures"]["dpi"],
    script:
        "../scripts/webscale_figures.py"


rule approx_search:
    input:
        unpack(get_approx_inputs),
    output:
        matches=f"{R}/webscale/{{search}}/approx_matches.parquet",
        recall=f"{R}/webscale/{{search}}/approx_recall.json",
    log:
        f"{LOGS}/webscale/{{search}}/approx.log",
    benchmark:
        f"{BENCH}/webscale/{{search}}/approx.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=32000,
        runtime=240,
    params:
        numerics=NUMERICS,
        approx=get_approx_params,
        allow_missing=get_search_allow_missing,
        label=get_search_label,
        shards=get_search_shards,
        top_k=get_search_top_k,
        seed=get_search_seed,
    script:
        "../scripts/webscale_approx.py"
