"""Data-parallel finetuning on CPU (gloo): 2 processes x batch 8 = 1 process x batch 16.

The processes are launched the way real CPU DDP works (diffrep.launch does the same):
``ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2``
(``accelerate launch --cpu --num_processes 2`` starts independent copies instead).
Each run computes the first step's gradients with the training code (batch split, DDP gradient
averaging, gradient accumulation) and rank 0 saves them; they must agree within 1e-5.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from test_training import argv, build_inputs

WORKER = textwrap.dedent("""
    import sys
    import torch
    from accelerate import Accelerator
    from safetensors.torch import save_file
    from diffrep import training as T

    out, argv = sys.argv[1], sys.argv[2:]
    args = T.parse_args(argv)
    torch.manual_seed(1234)  # must not matter: every random choice is seeded by the draw number
    accelerator = Accelerator(cpu=True)
    processes, rank = accelerator.num_processes, accelerator.process_index
    components = T.load_components(args.pretrained_model_name_or_path)
    components["vae"].requires_grad_(False)
    components["text_encoder"].requires_grad_(False)
    data = T.load_train_data(args.train_data_dir, args.metadata, args.captions, args.plan)
    dataset = T.DrawDataset(data, T.DrawStream(data.weights, False, args.seed), components["tokenizer"], args)
    unet = accelerator.prepare(components["unet"])
    unet.train()
    accumulation = args.gradient_accumulation_steps
    micro = T.micro_batch_size(args.train_batch_size, processes, accumulation)
    losses = []
    for micro_step, draws in enumerate(T.step_draws(0, args.train_batch_size, accumulation, processes, rank, micro)):
        batch = T.collate([dataset[d] for d in draws])
        losses.append(T.backward_micro_batch(
            accelerator, unet, components["vae"], components["text_encoder"], components["noise_scheduler"], batch,
            last=micro_step == accumulation - 1, accumulation=accumulation, seed=args.seed,
            rand_noise_lam=args.rand_noise_lam,
        ))
    loss = accelerator.reduce(torch.stack(losses).mean(), "mean")
    if accelerator.is_main_process:
        grads = {n: p.grad.detach().clone() for n, p in accelerator.unwrap_model(unet).named_parameters()}
        grads["__loss__"] = loss.reshape(1)
        grads["__processes__"] = torch.tensor([float(processes)])
        save_file(grads, out)
    accelerator.wait_for_everyone()
""")


def run(tmp_path, inputs, name, nproc, batch, accum=1):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / f"{name}.safetensors"
    a = argv(
        inputs["root"],
        "unused",
        "unused",
        train_batch_size=batch,
        gradient_accumulation_steps=accum,
        train_mitigation="gaussnoise",
        random_flip="true",
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(worker),
        str(out),
        *a,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from safetensors.torch import load_file

    return load_file(out)


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_gradients(tmp_path):
    inputs = build_inputs(tmp_path / "inputs")
    one = run(tmp_path, inputs, "one", nproc=1, batch=16)
    two = run(tmp_path, inputs, "two", nproc=2, batch=8 * 2)  # train_batch_size is the total: 2 x 8
    assert one["__processes__"].item() == 1 and two["__processes__"].item() == 2
    names = [k for k in one if not k.startswith("__")]
    assert names and set(names) == {k for k in two if not k.startswith("__")}
    assert max(one[k].abs().max().item() for k in names) > 1e-4  # gradients are not trivially zero
    for other in (two,):
        worst = max((one[k] - other[k]).abs().max().item() for k in names)
        assert worst < 1e-5, worst
        assert abs(one["__loss__"].item() - other["__loss__"].item()) < 1e-6
