"""Caption files per conditioning, against upstream's definitions (datasets.py, diff_train.py)."""

import json

import pandas as pd
import pytest

from diffrep.captions import CaptionError, load_tokenizer, make_captions, read_captions, write_captions

META = pd.DataFrame(
    {
        "id": ["a", "b", "c"],
        "class": ["tench", "church", "tench"],
        "captions": [
            ["a fish", "v1", "v2", "v3"],
            ["a church", "w1", "w2", "w3"],
            ["fish again", "x1", "x2", "x3"],
        ],
    }
)


def test_nolevel_and_classlevel(tmp_path):
    data = make_captions(META, "nolevel", dataset="toy")
    assert data["captions"] == {"a": ["An image"], "b": ["An image"], "c": ["An image"]}
    data = make_captions(META, "classlevel", dataset="toy")
    assert data["captions"] == {
        "a": ["An image of tench"],
        "b": ["An image of church"],
        "c": ["An image of tench"],
    }
    write_captions(data, tmp_path / "classlevel.json")
    on_disk = json.loads((tmp_path / "classlevel.json").read_text())
    assert on_disk["conditioning"] == "classlevel" and on_disk["dataset"] == "toy"
    assert read_captions(tmp_path / "classlevel.json") == data["captions"]


def test_classlevel_without_labels_is_a_clear_error():
    meta = META.assign(**{"class": [None, None, None]})
    with pytest.raises(
        CaptionError, match=r"classlevel captions: dataset 'laion' has no class labels \(3 of 3"
    ):
        make_captions(meta, "classlevel", dataset="laion")


def test_instancelevel_blip_caption0_first_then_variants():
    data = make_captions(META, "instancelevel_blip", n_captions=3)
    assert data["captions"]["b"] == ["a church", "w1", "w2"]  # extra captions ignored
    assert data["variants"] == "dataset"
    with pytest.raises(CaptionError, match=r"image a of dataset 'toy' has 4 caption\(s\), n_captions is 5"):
        make_captions(META, "instancelevel_blip", dataset="toy", n_captions=5)
    blip = {"a": ["blip a1", "blip a2"], "b": ["blip b1", "blip b2"], "c": ["blip c1", "blip c2"]}
    data = make_captions(META, "instancelevel_blip", n_captions=5, blip=blip)
    assert data["captions"]["a"] == ["a fish", "v1", "v2", "v3", "blip a1"]
    assert data["variants"] == "dataset + blip"
    # Imagenette: no own captions, BLIP's first caption is caption [0]
    no_own = META.assign(captions=[[], [], []])
    assert make_captions(no_own, "instancelevel_blip", n_captions=21, blip=blip)["captions"]["c"] == [
        "blip c1",
        "blip c2",
    ]
    with pytest.raises(CaptionError, match="image a .* has no caption .*blip_captions: true"):
        make_captions(no_own, "instancelevel_blip", n_captions=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder with only what captions read: tokenizer/ (a tiny CLIP BPE vocabulary)."""
    from diffrep import tinysd

    root = tmp_path_factory.mktemp("model")
    tinysd.make_tokenizer(
        ["a red circle on a blue background", "picture one two three"], max_length=16
    ).save_pretrained(root / "tokenizer")
    return root


def test_instancelevel_random_is_seeded_and_decoded_with_the_models_tokenizer(model_dir):
    tok = load_tokenizer(model_dir)
    a = make_captions(
        META, "instancelevel_random", tokenizer=tok, random_per_image=10, random_tokens=4, seed=1
    )
    b = make_captions(
        META, "instancelevel_random", tokenizer=tok, random_per_image=10, random_tokens=4, seed=1
    )
    c = make_captions(
        META, "instancelevel_random", tokenizer=tok, random_per_image=10, random_tokens=4, seed=2
    )
    assert a == b and a["captions"] != c["captions"]
    assert all(len(v) == 10 for v in a["captions"].values())
    assert a["vocab_limit"] == len(tok) < 49400  # capped at the tokenizer's size
    # each caption is the decoding of 4 ids drawn from [0, limit) without the start and end tokens
    # (the top two ids of this vocabulary, its only special ids) by the seeded generator, in order
    import numpy as np

    assert sorted(tok.all_special_ids) == [len(tok) - 2, len(tok) - 1] == [tok.bos_token_id, tok.eos_token_id]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, len(tok) - 2, size=4)
    assert a["captions"]["a"][0] == tok.decode([int(i) for i in ids])
    assert len(set(a["captions"]["a"])) > 1


def test_instancelevel_random_needs_a_tokenizer(tmp_path):
    with pytest.raises(CaptionError, match="no tokenizer folder .*tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(CaptionError, match="needs the base model's tokenizer"):
        make_captions(META, "instancelevel_random")
