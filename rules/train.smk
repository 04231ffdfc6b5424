# Finetuning: one job per (dataset, duplication, conditioning, train-time mitigation).
# Checkpoints live in {R}/{dataset}/checkpoints/{run}/, outside the declared output, so that a
# failed or killed job resumes from them when the workflow is run again. Checkpointing and memory
# options do not change the weights: they are resources, so editing them re-runs nothing.


rule finetune:
    input:
        unpack(get_finetune_inputs),
    output:
        model=directory(
            f"{R}/{{dataset}}/models/{{duplication}}.{{conditioning}}.{{mitigation}}"
        ),
    log:
        f"{LOGS}/finetune/{{dataset}}/{{duplication}}.{{conditioning}}.{{mitigation}}.log",
    benchmark:
        f"{BENCH}/finetune/{{dataset}}/{{duplication}}.{{conditioning}}.{{mitigation}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=config["resources"]["train_processes"],
        mem_mb=64000,
        runtime=2880,
        processes=config["resources"]["train_processes"],
        dataloader_workers=config["resources"]["dataloader_workers"],
        checkpointing_steps=config["training"]["checkpointing_steps"],
        keep_checkpoints=int(config["training"]["keep_checkpoints"]),
        gradient_checkpointing=int(config["training"]["gradient_checkpointing"]),
    params:
        numerics=NUMERICS,
        training=get_training_params,
        mitigation=get_mitigation_params,
        duplication="{duplication}",
        conditioning="{conditioning}",
        checkpoints=f"{R}/{{dataset}}/checkpoints/{{duplication}}.{{conditioning}}.{{mitigation}}",
    script:
        "../scripts/finetune.py"


rule finetune_all:
    default_target: False
    input:
        [f"{R}/{ds}/models/{run.name}" for ds, run in FINETUNES],
