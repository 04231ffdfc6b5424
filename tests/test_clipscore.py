"""CLIP score with a tiny random CLIP built from a config (no download)."""

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
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=24, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], **layers),
        vision_config=dict(image_size=32, patch_size=8, **layers),
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip") / "tiny_clip"
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _generations(folder, prompts, used=None):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(len(prompts)):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    pd.DataFrame({"index": range(len(prompts)), "file": [f"{i:05d}.png" for i in range(len(prompts))],
                  "prompt": prompts, "prompt_used": used or prompts}).to_parquet(folder / "prompts.parquet")
    return folder


def test_summary_by_hand_and_never_a_silent_zero():
    s = C.summarise(np.array([-0.2, 0.1, 0.3]))
    assert s["clip_cosine_mean"] == pytest.approx(0.2 / 3)
    assert s["clipscore"] == pytest.approx((0 + 10 + 30) / 3)  # 100 * max(cos, 0)
    assert s["n"] == 3
    with pytest.raises(C.ClipScoreError, match="non-empty"):
        C.summarise(np.array([]))
    with pytest.raises(C.ClipScoreError, match="finite"):
        C.summarise(np.array([0.1, np.nan]))


def test_clipscore_equals_clip_models_own_logits(tmp_path, tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    prompts = ["a red circle", "two blue squares on a long long long long long long green field", "an image"]
    gen = _generations(tmp_path / "gen", prompts)
    result = C.clipscore_of_generations(gen, tiny_clip, tmp_path / "clip.json", "tiny_clip", batch_size=2,
                                        device="cpu")
    # independent path: CLIPModel's forward gives logit_scale * cosine for every image-text pair
    model = CLIPModel.from_pretrained(tiny_clip, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip, local_files_only=True)
    images = [Image.open(gen / f"{i:05d}.png").convert("RGB") for i in range(3)]
    inputs = proc(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True, max_length=24)
    with torch.no_grad():
        out = model(**inputs)
        cos = (out.logits_per_image.diagonal() / model.logit_scale.exp()).double().numpy()
    assert result["n"] == 3 and result["model"] == "tiny_clip" and result["prompt_column"] == "prompt"
    assert result["clip_cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert result["clipscore"] == pytest.approx(np.mean(100 * np.maximum(cos, 0)), abs=1e-3)
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
