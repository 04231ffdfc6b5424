"""Rule finetune: launch diffrep.training through accelerate (1..N processes) and log its output."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.launch import launch_command, run_launch, training_argv
from diffrep.workflow import start_job

threads = start_job(snakemake)
training = snakemake.params.training
argv = training_argv(
    base=snakemake.input.base,
    images=snakemake.input.images,
    metadata=snakemake.input.metadata,
    captions=snakemake.input.captions,
    plan=snakemake.input.plan,
    output_dir=snakemake.output.model,
    checkpoints_dir=snakemake.params.checkpoints,
    duplication=snakemake.params.duplication,
    conditioning=snakemake.params.conditioning,
    mitigation=snakemake.params.mitigation,
    training={
        **training,
        "checkpointing_steps": snakemake.resources.checkpointing_steps,
        "keep_checkpoints": bool(snakemake.resources.keep_checkpoints),
        "gradient_checkpointing": bool(snakemake.resources.gradient_checkpointing),
    },
    workers=snakemake.resources.dataloader_workers,
    numerics=snakemake.params.numerics,
)
cmd, env = launch_command(
    argv,
    processes=snakemake.resources.processes,
    mixed_precision=training["mixed_precision"],
    threads=threads,
)
run_launch(cmd, env, sys.stderr)
