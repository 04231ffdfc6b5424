"""The rehearsal architectures: full-size parameter counts (meta device) and, at reduced width, every
builder's folder loaded by the paper study's own loader and run forward once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO, job_counts, load_yaml, snakemake
from diffrep import rehearsal
from diffrep.builders import model_builder
from diffrep.fetch import check_complete

SMALL = 0.1  # width scale of the layout tests


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, seeded


@pytest.fixture(scope="module")
def counts():
    return rehearsal.parameter_counts()


def test_full_size_unets_have_the_released_parameter_counts(counts):
    # SD 2.x: 865,910,724 (about 866 M); SD 1.4: 859,520,964, as its finetuners report it
    assert counts["sd21"]["unet"]["trainable"] == 865_910_724
    assert counts["sd21_base"]["unet"]["trainable"] == 865_910_724
    assert counts["sd14"]["unet"]["trainable"] == 859_520_964
    assert counts["sdxl"]["unet"]["trainable"] == 2_567_463_684  # SDXL base 1.0
    assert counts["sdxl"]["text_encoder_2"]["parameters"] == 694_659_840  # OpenCLIP-bigG text + projection


def test_full_size_sd35_medium_has_the_released_parameter_counts(counts):
    sd35 = counts["sd35_medium"]  # MMDiT-X transformer, 16-channel VAE, CLIP-L + bigG + T5-XXL
    assert sd35["transformer"]["parameters"] == 2_243_171_520
    assert sd35["vae"]["parameters"] == 83_819_683
    assert sd35["text_encoder"]["parameters"] == 123_650_304  # CLIP-L text + its 768 x 768 projection
    assert sd35["text_encoder_2"]["parameters"] == counts["sdxl"]["text_encoder_2"]["parameters"]
    assert sd35["text_encoder_3"]["parameters"] == 4_762_310_656  # counted, not built by the rehearsal


def test_full_size_encoders_have_the_released_parameter_counts(counts):
    assert counts["sd21"]["text_encoder"]["parameters"] == 340_387_840  # OpenCLIP-H text, 23 layers
    assert counts["sd14"]["text_encoder"]["parameters"] == 123_060_480  # CLIP ViT-L/14 text
    assert counts["sd21"]["vae"]["parameters"] == counts["sd14"]["vae"]["parameters"] == 83_653_863
    assert counts["clip_vit_l14"]["parameters"] == 427_616_513
    # ResNeXt-101 32x4d / ResNet-50 trunks plus Linear(2048, 1024 / 512)
    assert counts["sscd_disc_large"]["parameters"] == 44_226_880
    assert counts["sscd_disc_mixup"]["parameters"] == 24_557_120
    assert (
        220e6 < counts["blip_base"]["parameters"] < 230e6
    )  # 224 M; the hub's 247 M counts the tied head twice


def test_width_scale_keeps_the_structure_and_rejects_nonsense():
    full, small = rehearsal.sd_configs("sd21"), rehearsal.sd_configs("sd21", SMALL)
    assert full["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert small["unet"]["block_out_channels"] == [32, 64, 128, 128]
    assert small["unet"]["cross_attention_dim"] == small["text_encoder"]["hidden_size"]
    assert small["text_encoder"]["num_hidden_layers"] == 23 and small["unet"]["use_linear_projection"]
    with pytest.raises(ValueError, match="width_scale"):
        rehearsal.sd_configs("sd21", 0)
    with pytest.raises(ValueError, match="unknown variant 'sd3'"):
        rehearsal.sd_configs("sd3")


@pytest.mark.parametrize(
    "variant, prediction, hidden, pad",
    [
        ("sd21", "v_prediction", 104, "!"),
        ("sd21_base", "epsilon", 104, "!"),
        ("sd14", "epsilon", 80, "<|endoftext|>"),
        ("sdxl", "epsilon", 80, "<|endoftext|>"),
    ],
)
def test_sd_folder_loads_in_the_paper_loaders_and_generates(tmp_path, variant, prediction, hidden, pad):
    from diffrep.pipelines import load_pipeline
    from diffrep.training import load_components

    out = model_builder("rehearsal_sd")(tmp_path / variant, seed=0, variant=variant, width_scale=SMALL)
    check_complete("diffusers", out)
    comps = load_components(str(out))
    assert comps["noise_scheduler"].config.prediction_type == prediction
    assert comps["text_encoder"].config.hidden_size == hidden and comps["tokenizer"].pad_token == pad
    assert comps["tokenizer"].model_max_length == 77
    pipe = load_pipeline(out, "cpu", torch.float32)
    assert type(pipe).__name__ == (
        "StableDiffusionXLPipeline" if variant == "sdxl" else "StableDiffusionPipeline"
    )
    images = pipe(
        ["a red circle"], num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=7.5
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    info = json.loads((out / "build_info.json").read_text())
    assert info["options"] == {"variant": variant, "width_scale": SMALL}


def test_sd35_folder_without_t5_loads_and_generates_through_the_sd3_path(tmp_path):
    from diffrep.families import family_of
    from diffrep.generation import generate_batch
    from diffrep.pipelines import load_pipeline

    out = model_builder("rehearsal_sd3")(tmp_path / "sd35", seed=0, width_scale=SMALL)
    check_complete("diffusers", out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder_3"] == index["tokenizer_3"] == [None, None]
    assert family_of(out) == "sd3" and not (out / "text_encoder_3").exists()
    pipe = load_pipeline(out, "cpu", torch.float32)
    cfg = pipe.transformer.config
    assert (cfg.num_layers, cfg.patch_size, cfg.in_channels, cfg.qk_norm) == (24, 2, 16, "rms_norm")
    assert list(cfg.dual_attention_layers) == list(range(13)) and cfg.attention_head_dim == 64
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor == 0.0609
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.text_encoder_3 is None
    preset = {"steps": 2, "guidance_scale": 7.0, "mitigation": "gaussnoise", "lam": 0.1}
    images = generate_batch(pipe, ["a red circle"], [0], preset, 64, "cpu", "sd3")
    assert images[0].size == (64, 64)
    with pytest.raises(ValueError, match="unknown variant 'sd3_large'"):
        rehearsal.sd3_configs("sd3_large")


def test_sd35_folder_with_t5_loads_its_bf16_t5_and_uses_it(tmp_path):
    """t5: true (the hub's SD 3.5 Medium has T5-XXL): T5 v1.1 XXL's layout in text_encoder_3/ and a T5
    tokenizer in tokenizer_3/, every weight stored in bf16; the prompt reaches the transformer through
    T5 (another prompt, other T5 states)."""
    from safetensors import safe_open

    from diffrep.pipelines import load_pipeline

    out = model_builder("rehearsal_sd3")(tmp_path / "sd35", seed=0, width_scale=SMALL, t5=True)
    check_complete("diffusers", out)
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    # (transformers 5 names the fast T5 tokenizer T5Tokenizer; the hub's model_index, T5TokenizerFast)
    assert index["tokenizer_3"] in (["transformers", "T5Tokenizer"], ["transformers", "T5TokenizerFast"])
    for part in ("text_encoder_3", "transformer"):
        files = sorted((out / part).glob("*.safetensors"))
        with safe_open(files[0], "pt") as f:
            assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    pipe = load_pipeline(out, "cpu", torch.float32)
    t5 = pipe.text_encoder_3.config
    assert (t5.num_layers, t5.d_kv, t5.vocab_size, t5.feed_forward_proj) == (24, 64, 32128, "gated-gelu")
    assert pipe.transformer.config.joint_attention_dim == t5.d_model
    with torch.no_grad():
        states = [
            pipe._get_t5_prompt_embeds(p, max_sequence_length=16) for p in ("a red circle", "a blue square")
        ]
    assert states[0].shape == (1, 16, t5.d_model) and not torch.equal(states[0], states[1])
    assert json.loads((out / "build_info.json").read_text())["options"]["t5"] is True


@pytest.mark.parametrize("variant, dims", [("disc_large", 1024), ("disc_mixup", 512)])
def test_sscd_torchscript_loads_in_the_embedder(tmp_path, variant, dims):
    from diffrep.embeddings import SSCDEmbedder

    out = model_builder("rehearsal_sscd")(tmp_path / variant, seed=0, variant=variant, width_scale=0.125)
    check_complete("sscd", out)
    embedder = SSCDEmbedder(out, "upstream", name=f"sscd_{variant}")
    assert embedder.file.name == f"sscd_{variant}.torchscript.pt"
    with torch.no_grad():
        desc = embedder.load("cpu")(torch.randn(2, 3, 224, 224))
    assert desc.shape == (2, dims)
    np.testing.assert_allclose(desc.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def _pictures(n=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_folder_loads_in_clipscore(tmp_path):
    from diffrep.clipscore import cosines, load_clip

    out = model_builder("rehearsal_clip")(tmp_path / "clip", seed=0, width_scale=SMALL)
    check_complete("clip", out)
    model, processor = load_clip(out)
    assert model.config.vision_config.patch_size == 14 and model.config.vision_config.num_hidden_layers == 24
    cos = cosines(model, processor, _pictures(), ["a red circle", "a blue square"])
    assert cos.shape == (2,) and np.all(np.abs(cos) <= 1)


def test_blip_folder_loads_in_the_captioner(tmp_path):
    from diffrep.blip import caption_images, load_blip

    out = model_builder("rehearsal_blip")(tmp_path / "blip", seed=0, width_scale=SMALL)
    check_complete("blip", out)
    processor, model = load_blip(out)
    assert processor.image_processor.size == {"height": 384, "width": 384}
    assert len(processor.tokenizer) == 30524 and processor.tokenizer.sep_token_id == 102
    caps = caption_images(_pictures(1), ["a"], processor, model, n=2, min_length=3, max_length=8)
    assert len(caps["a"]) == 2 and all(c.strip() for c in caps["a"])


def test_rehearsal_profile_dry_run_lists_every_paper_rule(workflow_copy):
    """On a fresh copy, `snakemake -n --profile profiles/rehearsal` plans a job of every rule the paper
    study plans (fetch_model is build_model here: everything is built offline), at the paper's
    settings but the amount of work."""
    assert not (workflow_copy / "resources").exists()
    paper = job_counts(snakemake(["-n"], cwd=workflow_copy, check=True).stdout)
    proc = snakemake(["-n", "--profile", "profiles/rehearsal"], cwd=workflow_copy, check=True)
    counts = job_counts(proc.stdout)
    # every paper rule, the web-scale and memorization lanes included (their inputs are the LAION-like
    # set's pictures and captions: rules dataset_web and memorization_prompts from a dataset)
    assert {"download_shard", "embed_shard", "search_shard", "merge_search", "memorization_detect"} <= set(
        paper
    )
    assert set(paper) - {"fetch_model"} <= set(counts)
    # 40 pictures in shards of 16; an approximate index; two prompt files made of dataset rows
    assert counts["dataset_web"] == 1 and counts["download_shard"] == counts["embed_shard"] == 3
    assert counts["approx_search"] == 1 and counts["memorization_prompts"] == 2
    assert "fetch_model" not in counts
    # sd21, sd21_base, sd14, sdxl, sd35_medium, both SSCD models, Inception, BLIP, CLIP
    assert counts["build_model"] == 10 and counts["finetune"] == 7 and counts["blip_captions"] == 1
    assert "results/rehearsal/" in proc.stdout and "results/paper/" not in proc.stdout
    study = load_yaml(REPO / "profiles/rehearsal/study.yaml")
    assert study["training"]["resolution"] == 256 and study["training"]["max_train_steps"] == 2
    assert study["training"]["checkpointing_steps"] == 1 and study["generation"]["n_images"] == 4
    assert all(p["steps"] == 2 for p in study["generation"]["presets"].values())
    builds = [m["sources"][0] for m in study["models"].values()]
    assert all(b["type"] == "build" and "width_scale" not in b["options"] for b in builds)  # full size


def test_rehearsal_dataset_has_real_sizes_modes_and_21_captions(tmp_path):
    from PIL import Image

    from diffrep.builders import dataset_builder

    out = dataset_builder("rehearsal_dataset")(tmp_path / "d", seed=0, n_images=9)
    captions = json.loads((out / "captions.json").read_text())
    classes = json.loads((out / "classes.json").read_text())
    assert len(captions) == len(classes) == 9 and all(len(c) == 21 for c in captions.values())
    assert len({c[0] for c in captions.values()}) == 9  # caption [0] names its picture
    modes = {f: Image.open(out / f).mode for f in captions}
    sizes = {Image.open(out / f).size for f in captions}
    assert sorted(modes.values()).count("RGB") == 7 and {"L", "CMYK"} <= set(modes.values())
    assert (1024, 683) in sizes and (384, 512) in sizes and min(min(s) for s in sizes) >= 256
    with pytest.raises(ValueError, match="kind 'coco' unknown"):
        dataset_builder("rehearsal_dataset")(tmp_path / "e", seed=0, kind="coco")


def test_rehearsal_imagenette_is_an_imagefolder_without_captions_ingested_as_the_papers(tmp_path):
    """kind imagenette: WordNet-id class folders and no caption, ingested through the imagefolder
    collector as the paper's Imagenette is (classes named as upstream, grayscale and CMYK converted),
    every caption left to BLIP."""
    from diffrep.datasets import prepare_dataset, read_metadata

    root = tmp_path / "resources/data/imagenette_like"
    ds = {
        "source": {
            "type": "build",
            "builder": "rehearsal_dataset",
            "options": {"kind": "imagenette", "n_images": 8},
        },
        "non_rgb": "convert",
    }
    out = dict(
        images_dir=root / "images",
        metadata=root / "metadata.parquet",
        manifest=root / "images.sha256",
        report=root / "report.json",
    )
    report = prepare_dataset("imagenette_like", ds, **out)
    meta = read_metadata(out["metadata"])
    assert len(meta) == 8 and sorted(set(meta["class"])) == sorted(
        ["tench", "English springer", "cassette player", "chain saw"]
    )
    assert all(len(c) == 0 for c in meta["captions"])  # BLIP writes them all
    assert len(report["converted"]) == 2, report  # the grayscale and the CMYK JPEG


def test_predicted_gpu_memory_of_a_finetune_follows_the_parameter_counts():
    from diffrep.gpumemory import GIB, finetune_estimate, generate_estimate

    f = finetune_estimate("sd21", batch=2, resolution=256)
    p_unet, p_frozen = 865_910_724, 340_387_840 + 83_653_863
    assert f["parts_gib"]["adamw_moments"] * GIB == 8 * p_unet
    assert f["parts_gib"]["unet_fp32_master"] * GIB == f["parts_gib"]["unet_fp32_grads"] * GIB == 4 * p_unet
    assert f["parts_gib"]["frozen_fp16"] * GIB == 2 * p_frozen
    assert 0 < f["activations_checkpointed_gib"] < f["activations_gib"] / 5  # checkpointing pays
    small, large = generate_estimate("sd21", 1, 256), generate_estimate("sd21", 1, 768)
    assert small["weights_fp16_gib"] == large["weights_fp16_gib"]
    assert large["largest_layer_gib"] > 8 * small["largest_layer_gib"]  # 9x the pixels


@pytest.mark.parametrize(
    "builder, options", [("rehearsal_sscd", {"variant": "disc_mixup"}), ("rehearsal_sd", {"variant": "sd14"})]
)
def test_same_seed_same_bytes(tmp_path, builder, options):
    """A rebuild gives the same files (the model's manifest does not change, docs/reproducibility.md)."""
    import hashlib

    def sums(folder):
        return {
            p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*")
            if p.is_file()
        }

    a = model_builder(builder)(tmp_path / "a", seed=3, width_scale=SMALL, **options)
    b = model_builder(builder)(tmp_path / "b", seed=3, width_scale=SMALL, **options)
    c = model_builder(builder)(tmp_path / "c", seed=4, width_scale=SMALL, **options)
    assert sums(a) == sums(b) and sums(a) != sums(c)


def test_rehearsal_figures_say_the_weights_are_random():
    from diffrep.figures import study_title

    assert (
        study_title("FID", "rehearsal") == "FID — rehearsal study (random weights: not the paper's numbers)"
    )
    assert study_title("FID", "mini").endswith("(toy scale: not the paper's numbers)")
    assert study_title("FID", "paper") == "FID — paper study"
