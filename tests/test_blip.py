"""BLIP captioning with a tiny randomly initialised BLIP (built from a small config, no download)."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffrep.blip import blip_table, caption_dataset, caption_images, load_blip

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "picture",
    "of",
    "red",
    "circle",
    "blue",
    "square",
    "on",
    "the",
    "background",
    "green",
    "star",
    "with",
    "small",
    "large",
]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    root = tmp_path_factory.mktemp("blip")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=BertTokenizer(str(root / "vocab.txt")),
    )
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    config = BlipConfig(
        vision_config=dict(**small, image_size=32, patch_size=8),
        text_config=dict(
            **small,
            vocab_size=len(WORDS),
            max_position_embeddings=64,
            bos_token_id=2,
            sep_token_id=3,
            pad_token_id=0,
            eos_token_id=3,
        ),
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


def images(n):
    return [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8)) for i in range(n)
    ]


def test_seeded_batched_nucleus_sampling(blip_dir, monkeypatch):
    torch.set_num_threads(1)
    processor, model = load_blip(blip_dir)
    seen = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or generate(**kw))
    ids = ["x", "y", "z"]
    a = caption_images(images(3), ids, processor, model, n=4, seed=0, batch_size=2)
    assert list(a) == ids and all(len(c) == 4 and all(isinstance(t, str) for t in c) for c in a.values())
    kw = seen[0]
    assert (
        kw["do_sample"],
        kw["top_p"],
        kw["min_length"],
        kw["max_length"],
        kw["pixel_values"].shape[0],
    ) == (True, 0.9, 5, 20, 4)
    assert (
        caption_images(images(3), ids, processor, model, n=4, seed=0, batch_size=3) == a
    )  # batch size changes nothing
    assert caption_images(images(3), ids, processor, model, n=4, seed=1, batch_size=2) != a


def test_caption_dataset_writes_blip_table(blip_dir, tmp_path):
    for i, im in enumerate(images(2)):
        im.save(tmp_path / f"im{i}.png")
    meta = pd.DataFrame({"id": ["im0", "im1"], "file": ["im0.png", "im1.png"]})
    table = caption_dataset(
        tmp_path,
        meta,
        blip_dir,
        {"n": 3, "top_p": 0.9, "min_length": 5, "max_length": 12, "image_size": 32},
        seed=0,
        batch_size=1,
        device="cpu",
    )
    assert list(table.columns) == ["id", "captions"] and list(table["id"]) == ["im0", "im1"]
    assert all(len(c) == 3 for c in table["captions"])
    table.to_parquet(tmp_path / "blip.parquet")
    from diffrep.captions import read_blip

    assert read_blip(tmp_path / "blip.parquet")["im1"] == list(table["captions"][1])
    assert blip_table({"a": ["x"]}).to_dict("list") == {"id": ["a"], "captions": [["x"]]}
