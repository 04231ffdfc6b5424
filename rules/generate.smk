# Generation: one job per (dataset, run, preset); a preset fixes the inference-time mitigation and
# the sampler. Every image is seeded, so a re-run gives the same images whatever the batch size.


rule generate:
    input:
        unpack(get_generate_inputs),
    output:
        images=directory(f"{R}/{{dataset}}/generations/{{run}}/{{gen}}"),
    log:
        f"{LOGS}/generate/{{dataset}}/{{run}}/{{gen}}.log",
    benchmark:
        f"{BENCH}/generate/{{dataset}}/{{run}}/{{gen}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        # per model (family, models.<m>.resources): diffrep.jobsizes
        mem_mb=get_generate_mem_mb,
        gpu_mem_mb=get_generate_gpu_mem_mb,
        runtime=get_generate_runtime,
        cuda_dtype=get_generate_cuda_dtype,
        batch_size=config["resources"]["generate_batch_size"],
    params:
        numerics=NUMERICS,
        preset=get_preset,
        generation=get_generation_params,
        run="{run}",
    script:
        "../scripts/generate.py"


rule generate_all:
    default_target: False
    input:
        [generation_dir(ds, run.name, gen) for ds, run, gen in GENERATIONS],
