"""CLIP score with a tiny random CLIP built from a config (no download), compared with transcriptions of
torchmetrics' CLIPScore and of upstream DCR's gen_clipscore."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffrep import clipscore as C

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A save_pretrained CLIP folder: random 2-layer text and vision towers, byte-level vocabulary."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=24,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            **layers,
        ),
        vision_config=dict(image_size=224, patch_size=32, **layers),
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip") / "tiny_clip"
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _generations(folder, prompts, used=None, size=(224, 224)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(len(prompts)):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.png"
        )
    pd.DataFrame(
        {
            "index": range(len(prompts)),
            "file": [f"{i:05d}.png" for i in range(len(prompts))],
            "prompt": prompts,
            "prompt_used": used or prompts,
        }
    ).to_parquet(folder / "prompts.parquet")
    return folder


# ---------------------------------------------------------------- transcriptions of the references


def _torchmetrics_clip_score(model, processor, images, texts):
    """Transcribed from torchmetrics' CLIPScore (functional ``_clip_score_update`` + ``CLIPScore.compute``):
    images as uint8 C×H×W tensors through the processor, text padded then cut to the model's positions,
    score = 100 · cos per pair, summed, divided by n, clamped at 0 after the mean."""
    images = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]
    processed = processor(images=[i.cpu() for i in images], return_tensors="pt", padding=True)
    img_features = model.get_image_features(processed["pixel_values"])
    processed = processor(text=texts, return_tensors="pt", padding=True)
    max_position_embeddings = model.config.text_config.max_position_embeddings
    if processed["attention_mask"].shape[-1] > max_position_embeddings:
        processed["attention_mask"] = processed["attention_mask"][..., :max_position_embeddings]
        processed["input_ids"] = processed["input_ids"][..., :max_position_embeddings]
    txt_features = model.get_text_features(processed["input_ids"], processed["attention_mask"])
    img_features = getattr(img_features, "pooler_output", img_features)
    txt_features = getattr(txt_features, "pooler_output", txt_features)
    img_features = img_features / img_features.norm(p=2, dim=-1, keepdim=True)
    txt_features = txt_features / txt_features.norm(p=2, dim=-1, keepdim=True)
    score = 100 * (img_features * txt_features).sum(axis=-1)
    total, n_samples = score.sum(0), len(texts)
    return float(torch.max(total / n_samples, torch.zeros_like(total))), float(
        total / n_samples
    )  # (compute, unclamped)


def _upstream_gen_clipscore(model, tokenizer, image_paths, prompts_txt):
    """Transcribed from upstream DCR: ``SynthDataset`` (prompts read line by line from prompts.txt, newline
    kept) with diff_retrieval.py's ``ret_transform``, then ``utils_ret.gen_clipscore`` (encode, L2-normalise,
    per-pair dot product, ``np.mean`` of the raw cosines). ``clip.load``/``clip.tokenize(caps, 77, True)``
    become the folder's CLIPModel and tokenizer (truncated to its positions)."""
    from torchvision import transforms

    ret_transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    with open(prompts_txt) as file_in:
        prompts = [line for line in file_in]
    images = torch.stack([ret_transform(Image.open(p).convert("RGB")) for p in image_paths])
    caps = tokenizer(
        prompts,
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        return_tensors="pt",
    )
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=images)
        text_features = model.get_text_features(
            input_ids=caps["input_ids"], attention_mask=caps["attention_mask"]
        )
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        image_features, text_features = [
            x / torch.linalg.norm(x, axis=-1, keepdims=True) for x in [image_features, text_features]
        ]
        sims = (image_features * text_features).sum(axis=-1).cpu().numpy()
    return float(np.mean(list(sims)))


def _load(folder):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(folder, local_files_only=True).eval(), CLIPProcessor.from_pretrained(
        folder, local_files_only=True
    )


def test_summary_clamps_after_the_mean_as_torchmetrics():
    """max(100 · mean(cos), 0), not mean(100 · max(cos, 0)): 0 here where the old formula gave 10."""
    cos = np.array([-0.5, 0.1, 0.2])
    s = C.summarise(cos)
    assert s["clip_cosine_mean"] == pytest.approx(-0.2 / 3)
    assert s["clipscore"] == 0.0 and s["n"] == 3
    assert C.summarise(np.array([-0.2, 0.1, 0.3]))["clipscore"] == pytest.approx(100 * 0.2 / 3)
    assert C.summarise(cos, "upstream")["clipscore"] == pytest.approx(-0.2 / 3)  # raw mean, no clamp
    with pytest.raises(C.ClipScoreError, match="non-empty"):
        C.summarise(np.array([]))
    with pytest.raises(C.ClipScoreError, match="finite"):
        C.summarise(np.array([0.1, np.nan]))
    with pytest.raises(
        C.ClipScoreError, match="clipscore.convention 'paper' unknown; allowed: torchmetrics, upstream"
    ):
        C.summarise(cos, "paper")


# (colour, prompt) pairs whose cosines under the tiny CLIP have both signs: five positive, two negative
MIXED = [
    ((255, 255, 255), "two dogs"),
    ((255, 0, 0), "blue"),
    ((0, 0, 255), "a red circle"),
    ((128, 128, 128), "two dogs"),
    ((0, 0, 0), "blue"),
    ((0, 255, 0), "a cat"),
    (None, "an image"),
]


def _mixed_generations(folder, pairs):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (colour, _) in enumerate(pairs):
        img = (
            Image.new("RGB", (224, 224), colour)
            if colour
            else Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        )
        img.save(folder / f"{i:05d}.png")
    prompts = [p for _, p in pairs]
    pd.DataFrame(
        {
            "index": range(len(pairs)),
            "file": [f"{i:05d}.png" for i in range(len(pairs))],
            "prompt": prompts,
            "prompt_used": prompts,
        }
    ).to_parquet(folder / "prompts.parquet")
    return folder, [Image.open(folder / f"{i:05d}.png").convert("RGB") for i in range(len(pairs))], prompts


@pytest.mark.parametrize("pairs, clamped", [(MIXED[:5], False), (MIXED, True)])
def test_torchmetrics_convention_equals_transcription(tmp_path, tiny_clip, pairs, clamped):
    gen, images, prompts = _mixed_generations(tmp_path / "gen", pairs)
    result = C.clipscore_of_generations(
        gen, tiny_clip, tmp_path / "clip.json", "tiny_clip", batch_size=4, device="cpu"
    )
    model, processor = _load(tiny_clip)
    with torch.no_grad():
        theirs, unclamped = _torchmetrics_clip_score(model, processor, images, prompts)
    cos = C.cosines(model, processor, images, prompts)
    assert (cos > 0).any() and (cos < 0).any() == clamped
    assert result["convention"] == "torchmetrics" and result["prompt_column"] == "prompt"
    assert result["clipscore"] == pytest.approx(theirs, abs=1e-4)
    assert 100 * result["clip_cosine_mean"] == pytest.approx(unclamped, abs=1e-4)
    if clamped:  # the mean is negative: 0, where the mean of per-pair clamped scores (the old formula) is not
        assert theirs == 0.0 < np.mean(100 * np.maximum(cos, 0))
    else:
        assert theirs > 0.0


def test_upstream_convention_equals_transcription(tmp_path, tiny_clip):
    """Upstream: its transform, the mitigated prompt (prompt_used), the raw mean cosine."""
    drawn = ["a red circle", "a cat", "two dogs", "an image"]
    used = ["a red 4711 circle", "a cat cat", "two 99 dogs", "an image"]
    gen = _generations(
        tmp_path / "gen", drawn, used=used, size=(300, 240)
    )  # non-square: resize + crop matter
    (tmp_path / "prompts.txt").write_text(
        "".join(f"{line}\n" for line in used)
    )  # as diff_inference.py writes it
    result = C.clipscore_of_generations(
        gen, tiny_clip, tmp_path / "clip.json", "tiny_clip", batch_size=3, device="cpu", convention="upstream"
    )
    model, processor = _load(tiny_clip)
    theirs = _upstream_gen_clipscore(
        model, processor.tokenizer, [gen / f"{i:05d}.png" for i in range(4)], tmp_path / "prompts.txt"
    )
    assert result["convention"] == "upstream" and result["prompt_column"] == "prompt_used"
    assert result["clipscore"] == pytest.approx(theirs, abs=1e-5)
    assert result["clip_cosine_mean"] == result["clipscore"]
    assert "clipscore_prompt_used" not in result
    torchmetrics = C.clipscore_of_generations(gen, tiny_clip, tmp_path / "tm.json", "tiny_clip", device="cpu")
    assert torchmetrics["clip_cosine_mean_prompt_used"] != pytest.approx(
        theirs, abs=1e-6
    )  # preprocessing differs


def test_training_set_baseline_equals_transcription(tmp_path, tiny_clip):
    """clipscore_bg: every training image against its caption [0], upstream's gen_clipscore on the
    training loader."""
    images = _generations(tmp_path / "images", ["x"] * 5, size=(256, 320))
    ids = [f"img{i}" for i in range(5)]
    pd.DataFrame({"id": ids, "file": [f"{i:05d}.png" for i in range(5)]}).to_parquet(
        tmp_path / "metadata.parquet"
    )
    caps = {i: [f"caption {k} of {i}", "a variant"] for k, i in enumerate(ids)}
    (tmp_path / "captions.json").write_text(
        json.dumps({"conditioning": "instancelevel_blip", "captions": caps})
    )
    result = C.clipscore_of_training_set(
        images,
        tmp_path / "metadata.parquet",
        tmp_path / "captions.json",
        tiny_clip,
        tmp_path / "bg.json",
        "tiny_clip",
        "shapes",
        batch_size=2,
        device="cpu",
        convention="upstream",
    )
    (tmp_path / "prompts.txt").write_text("".join(f"{caps[i][0]}\n" for i in ids))
    model, processor = _load(tiny_clip)
    theirs = _upstream_gen_clipscore(
        model, processor.tokenizer, [images / f"{i:05d}.png" for i in range(5)], tmp_path / "prompts.txt"
    )
    assert result["clipscore"] == pytest.approx(theirs, abs=1e-5)
    assert result["n"] == 5 and result["dataset"] == "shapes" and result["kind"] == "train_baseline"
    assert json.loads((tmp_path / "bg.json").read_text()) == result
    del caps["img3"]
    (tmp_path / "captions.json").write_text(json.dumps({"captions": caps}))
    with pytest.raises(
        C.ClipScoreError, match="captions.json: no caption for 1 training image\\(s\\), e.g. 'img3'"
    ):
        C.clipscore_of_training_set(
            images,
            tmp_path / "metadata.parquet",
            tmp_path / "captions.json",
            tiny_clip,
            tmp_path / "bg2.json",
            "tiny_clip",
            "shapes",
            device="cpu",
        )
    assert not (tmp_path / "bg2.json").exists()


def test_upstream_transform_scales_to_the_models_input():
    sizes = [t.size for t in C.upstream_transform(224).transforms[:2]]
    assert sizes[0] == 256 and tuple(sizes[1]) == (224, 224)
    assert C.upstream_transform(336).transforms[0].size == 384


def test_clipscore_equals_clip_models_own_logits(tmp_path, tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    prompts = ["a red circle", "two blue squares on a long long long long long long green field", "an image"]
    gen = _generations(tmp_path / "gen", prompts)
    result = C.clipscore_of_generations(
        gen, tiny_clip, tmp_path / "clip.json", "tiny_clip", batch_size=2, device="cpu"
    )
    # independent path: CLIPModel's forward gives logit_scale * cosine for every image-text pair
    model = CLIPModel.from_pretrained(tiny_clip, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip, local_files_only=True)
    images = [Image.open(gen / f"{i:05d}.png").convert("RGB") for i in range(3)]
    inputs = proc(
        text=prompts, images=images, return_tensors="pt", padding=True, truncation=True, max_length=24
    )
    with torch.no_grad():
        out = model(**inputs)
        cos = (out.logits_per_image.diagonal() / model.logit_scale.exp()).double().numpy()
    assert result["n"] == 3 and result["model"] == "tiny_clip" and result["prompt_column"] == "prompt"
    assert result["clip_cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert result["clipscore"] == pytest.approx(max(100 * cos.mean(), 0), abs=1e-3)
    assert json.loads((tmp_path / "clip.json").read_text()) == result
    assert "clipscore_prompt_used" not in result  # no mitigation changed a prompt


def test_mitigated_prompts_are_scored_as_well(tmp_path, tiny_clip):
    gen = _generations(tmp_path / "gen", ["a red circle", "a cat"], used=["a red 4711 circle", "a cat"])
    result = C.clipscore_of_generations(gen, tiny_clip, tmp_path / "clip.json", "tiny_clip", device="cpu")
    assert {"clipscore_prompt_used", "clip_cosine_mean_prompt_used"} <= set(result)
    assert result["clip_cosine_mean_prompt_used"] != result["clip_cosine_mean"]


def test_missing_inputs_are_named(tmp_path, tiny_clip):
    (tmp_path / "gen").mkdir()
    with pytest.raises(C.ClipScoreError, match="prompts.parquet missing"):
        C.clipscore_of_generations(tmp_path / "gen", tiny_clip, tmp_path / "c.json", "x", device="cpu")
    with pytest.raises(C.ClipScoreError, match="has no config.json"):
        C.load_clip(tmp_path / "gen")
    assert not (tmp_path / "c.json").exists()
