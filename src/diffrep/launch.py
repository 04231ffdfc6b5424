"""Launching a finetune job: the ``python -m diffrep.training`` arguments of one run and the command
that starts it on 1..N processes (``accelerate launch``, or ``torchrun`` for CPU data parallel).

scripts/finetune.py is the only caller; the training itself is diffrep.training.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("diffrep.launch")

# training config keys -> CLI flags (same names, as in diffusers' train_text_to_image.py)
TRAINING_FLAGS = (
    "resolution",
    "center_crop",
    "random_flip",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "max_train_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "max_grad_norm",
    "mixed_precision",
    "gradient_checkpointing",
    "checkpointing_steps",
    "keep_checkpoints",
    "seed",
)


def training_argv(
    *,
    base,
    images,
    metadata,
    captions,
    plan,
    output_dir,
    checkpoints_dir,
    duplication,
    conditioning,
    mitigation: dict,
    training: dict,
    workers: int = 0,
    numerics: dict | None = None,
) -> list[str]:
    """The ``python -m diffrep.training`` arguments of one finetune job."""
    argv = [
        "--pretrained_model_name_or_path",
        str(base),
        "--train_data_dir",
        str(images),
        "--metadata",
        str(metadata),
        "--captions",
        str(captions),
        "--plan",
        str(plan),
        "--output_dir",
        str(output_dir),
        "--checkpoints_dir",
        str(checkpoints_dir),
        "--duplication",
        duplication,
        "--conditioning",
        conditioning,
        "--train_mitigation",
        mitigation.get("name", "none"),
        "--trainspecial_prob",
        str(mitigation.get("p", 0.1)),
        "--rand_noise_lam",
        str(mitigation.get("rand_noise_lam", 0.1)),
        "--dataloader_num_workers",
        str(workers),
    ]
    if numerics is not None:
        argv += ["--numerics", json.dumps(numerics, sort_keys=True)]
    if mitigation.get("name") == "memthreshold":
        argv += ["--mem_threshold", str(mitigation["mem_threshold"])]
    for key in TRAINING_FLAGS:
        if key in training:
            argv += [
                f"--{key}",
                str(training[key]).lower() if isinstance(training[key], bool) else str(training[key]),
            ]
    return argv


def launch_command(
    argv: list[str],
    processes: int = 1,
    mixed_precision: str = "no",
    cuda: bool | None = None,
    threads: int = 1,
) -> tuple[list[str], dict]:
    """(command, environment) that runs the training on 1..N processes.

    GPU: ``accelerate launch --num_processes N [--multi_gpu] --mixed_precision X -m diffrep.training``.
    CPU, one process: ``accelerate launch --cpu --num_processes 1``. CPU, N > 1: accelerate launch
    --cpu starts N independent copies instead of data parallel, so ``torchrun --standalone
    --nproc_per_node N`` with ACCELERATE_USE_CPU=true (gloo DDP) is used.
    """
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    entry = ["-m", "diffrep.training", *argv]
    if not cuda and processes > 1:
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *entry,
        ], env
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
    ]
    if cuda:
        cmd += ["--mixed_precision", mixed_precision] + (["--multi_gpu"] if processes > 1 else [])
    else:
        env["OMP_NUM_THREADS"] = str(max(1, threads))
        cmd += ["--cpu", "--mixed_precision", "no"]
    return cmd + entry, env


def run_launch(cmd: list[str], env: dict, stream) -> None:
    """Run the launch command with its output streamed into `stream` (the job's log); raise on failure."""
    log.info("launch: %s", " ".join(cmd))
    stream.flush()
    proc = subprocess.run(cmd, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with status {proc.returncode}; see the log above")
