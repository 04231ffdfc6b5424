"""The tiny SD-format pipeline: loadable like SD 2.1, deterministic, and (mini_sd) pretrained."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from diffrep.tinysd import build_tiny_pipeline, train_bpe

CAPTIONS = [
    "a red circle on a blue background, picture 17",
    "a small green square on a yellow background, picture 3",
    "An image of star",
]


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, seeded


def test_bpe_learns_caption_words_and_keeps_byte_fallback():
    vocab, merges = train_bpe(CAPTIONS * 3)
    assert "background</w>" in vocab and "picture</w>" in vocab
    assert vocab["<|endoftext|>"] == len(vocab) - 1 and vocab["<|startoftext|>"] == len(vocab) - 2
    assert len(vocab) == 512 + len(merges) + 2  # bytes, bytes</w>, merges, two specials


def test_tiny_pipeline_loads_like_sd_and_generates(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = build_tiny_pipeline(tmp_path / "tiny", CAPTIONS * 3, seed=0)
    files = checksums(out)
    assert "unet/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    assert pipe.unet.config.sample_size == 8 and pipe.vae.config.latent_channels == 4
    ids = pipe.tokenizer("a red circle on a blue background").input_ids
    assert len(ids) == 2 + 7  # bos, one token per trained word, eos
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True) == "a red circle on a blue background"
    images = pipe(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3)


def test_tiny_pipeline_is_byte_identical_for_a_seed(tmp_path):
    a = checksums(build_tiny_pipeline(tmp_path / "a", CAPTIONS, seed=3))
    b = checksums(build_tiny_pipeline(tmp_path / "b", CAPTIONS, seed=3))
    c = checksums(build_tiny_pipeline(tmp_path / "c", CAPTIONS, seed=4))
    assert a == b
    assert a["unet/diffusion_pytorch_model.safetensors"] != c["unet/diffusion_pytorch_model.safetensors"]
    assert a["tokenizer/tokenizer.json"] == c["tokenizer/tokenizer.json"]


def test_tiny_pipeline_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_pipeline(tmp_path / "x", CAPTIONS, seed=0)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def micro_sd(tmp_path_factory):
    from diffrep.tinysd import build_mini_sd

    old = torch.get_num_threads()
    torch.set_num_threads(3)  # the caller's thread count; the build trains with its own (threads: 2)
    try:
        return build_mini_sd(tmp_path_factory.mktemp("mini") / "micro_sd", seed=0, micro=True)
    finally:
        torch.set_num_threads(old)


# build_info.json is hashed by the model's manifest: only values fixed by the seed and options
BUILD_INFO_KEYS = {
    "builder",
    "seed",
    "micro",
    "options",
    "trained",
    "sizes",
    "sample_prompts",
    "samples_image",
}


def test_micro_mini_sd_is_pretrained_and_recorded(micro_sd):
    from diffusers import StableDiffusionPipeline

    from diffrep.tinysd import MICRO_OVERRIDES, MINI_DEFAULTS

    info = json.loads((micro_sd / "build_info.json").read_text())
    assert set(info) == BUILD_INFO_KEYS  # no "metrics": measurements live in .build_report.json
    assert info["options"] == {**MINI_DEFAULTS, **MICRO_OVERRIDES}
    report = json.loads((micro_sd / ".build_report.json").read_text())
    m = report["metrics"]
    # even 40 micro steps take the VAE clearly below the random one (the full build: slow test)
    assert m["holdout_reconstruction_mse"] < 0.8 * m["holdout_reconstruction_mse_random_vae"]
    assert m["unet_final_loss"] < m["unet_first_loss"]
    assert info["micro"] is True and set(info["trained"]) >= {"vae", "unet", "text_encoder", "tokenizer"}
    assert report["platform"]["torch_threads"] == MINI_DEFAULTS["threads"]  # taken while training
    assert report["platform"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(report["durations_s"]) == {"vae", "unet", "total"}
    pipe = StableDiffusionPipeline.from_pretrained(micro_sd, local_files_only=True, safety_checker=None)
    assert pipe.vae.config.scaling_factor == pytest.approx(m["scaling_factor"])
    assert (micro_sd / "build_samples.png").is_file()


def test_micro_mini_sd_rebuild_with_other_threads_has_the_same_manifest(micro_sd, tmp_path):
    """Bit-identical on one machine whatever the caller's thread count (docs/reproducibility.md);
    the measurements file is left out of the manifest and is the only file allowed to differ."""
    from diffrep.checksums import hash_folder
    from diffrep.tinysd import build_mini_sd

    torch.set_num_threads(1)  # the autouse fixture restores it
    again = build_mini_sd(tmp_path / "again", seed=0, micro=True)
    manifest = hash_folder(again)
    assert ".build_report.json" not in manifest and "build_info.json" in manifest
    assert manifest == hash_folder(micro_sd)
    first, second = checksums(micro_sd), checksums(again)
    assert {f for f in first if first[f] != second[f]} <= {".build_report.json"}


def test_mini_sd_rejects_unknown_options(tmp_path):
    from diffrep.tinysd import build_mini_sd

    with pytest.raises(ValueError, match="unknown option.*vae_stepz"):
        build_mini_sd(tmp_path / "x", seed=0, vae_stepz=3)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_mini_sd_vae_reconstructs_far_better_than_a_random_vae(tmp_path):
    """The mini defaults' VAE pretraining (about a minute; the UNet part cut short here)."""
    from diffrep.tinysd import build_mini_sd

    out = build_mini_sd(tmp_path / "mini_sd", seed=0, unet_steps=10, sample_steps=2)
    m = json.loads((out / ".build_report.json").read_text())["metrics"]
    assert m["holdout_reconstruction_mse"] < 0.2 * m["holdout_reconstruction_mse_random_vae"]
    assert m["holdout_reconstruction_mse"] < 0.12  # on [-1, 1] pixels; 0.079 measured
