"""FLOPs counted on the full-size architectures (meta device) and the GPU-hours of the paper matrix."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from diffrep import flops

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, seeded


@pytest.fixture(scope="module")
def paper():
    return flops.load_config(str(REPO / "config.yaml"), str(REPO / "schemas/config.schema.yaml"))


def test_count_flops_counts_two_per_multiply_add():
    layer = torch.nn.Linear(4, 3, bias=False)
    assert flops.count_flops(lambda: layer(torch.ones(2, 4))) == 2 * 2 * 4 * 3


def test_finetune_step_is_linear_in_batch_and_the_backward_about_twice_the_forward():
    one, two = flops.finetune_step_flops("sd21", 1, 256), flops.finetune_step_flops("sd21", 2, 256)
    assert two["total"] == 2 * one["total"]
    assert 1.9 < one["unet_backward"] / one["unet_forward"] < 2.1
    # the UNet's forward at 32 x 32 latents: about 0.18 TFLOP per image (865 M parameters)
    assert 0.15e12 < one["unet_forward"] < 0.25e12
    assert 13.5e12 < 16 * one["total"] < 14e12  # a step at the paper's batch 16: 13.7 TFLOP


def test_image_flops_count_attention_and_guidance():
    small, large = flops.image_flops("sd21", 256, 1), flops.image_flops("sd21", 768, 1)
    assert large["denoiser"] > 9 * small["denoiser"]  # 9x the latents, attention grows faster
    assert flops.image_flops("sd21", 256, 10)["denoiser"] == 10 * small["denoiser"]
    no_cfg = flops.image_flops("sd21", 256, 1, cfg=False)
    assert no_cfg["denoiser"] * 2 == small["denoiser"] and no_cfg["vae_decode"] == small["vae_decode"]


def test_the_matrix_costs_upstreams_hours_per_finetune_on_an_a6000(paper):
    from diffrep import config as dconf

    rows, missing = flops.matrix_work(paper)
    util = flops.upstream_utilisation()
    assert 0.02 < util["finetune"] < 0.5 and 0.005 < util["generate"] < 0.5
    (ft,) = [r for r in rows if r["kind"] == "finetune"]
    assert ft["jobs"] == len(dconf.finetunes(paper)) and ft["units"] == ft["jobs"] * 100_000
    # by construction: the paper's finetune is upstream's 24 A6000-hours
    assert flops.gpu_hours(ft["flops"], "finetune", "RTX A6000", util) == pytest.approx(24 * ft["jobs"])
    gens = [r for r in rows if r["kind"] == "generate"]
    sd21 = [r for r in gens if (r["model"], r["resolution"], r["steps"]) == ("sd21", 256, 50)]
    assert sd21 and sd21[0]["units"] >= 4000  # the measured sets of 4000 and the sampler-sweep cells
    hours = flops.gpu_hours(sd21[0]["flops"], "generate", "RTX A6000", util)
    assert hours == pytest.approx(5 * sd21[0]["units"] / 4000)  # upstream's 5 h per 4000 images
    assert {"sdxl", "sd35_medium", "sd_turbo"} <= {r["model"] for r in gens}
    assert set(missing) <= {"sd35_large_turbo"}  # the only models entry without a built architecture
    a100 = flops.gpu_hours(ft["flops"], "finetune", "A100 SXM", util)
    assert a100 == pytest.approx(24 * ft["jobs"] * 154.8 / 312)  # same utilisation, published peaks


def test_cli_prints_the_flops_and_the_matrix(capsys):
    flops.main(["--config", str(REPO / "config.yaml"), "--schema", str(REPO / "schemas/config.schema.yaml")])
    out = capsys.readouterr().out
    assert "| finetune step | sd21 | batch 16, 256 px" in out and "| image | sdxl | 1024 px" in out
    assert "RTX A6000 h" in out and "**total**" in out and "Utilisation implied by upstream" in out
