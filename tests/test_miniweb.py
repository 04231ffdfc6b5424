"""The mini lane's web: the mini base model's pretraining pictures as a LAION-layout collection."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffrep.miniweb import pretraining_rows, write_pretraining_web
from diffrep.tinysd import base_set, mini_options
from diffrep.webshards import ShardError


def _models(**options):
    return {
        "m": {"kind": "diffusers", "sources": [{"type": "build", "builder": "mini_sd", "options": options}]}
    }


def test_pretraining_rows_come_from_the_model_config():
    assert pretraining_rows(_models(), "m", "k") == 1000
    assert pretraining_rows(_models(micro=True), "m", "k") == 64
    assert pretraining_rows(_models(micro=True, n_base_images=20), "m", "k") == 20
    hub = {"sd": {"kind": "diffusers", "sources": [{"type": "hf", "repo": "x"}]}}
    with pytest.raises(
        ShardError,
        match=r"webscale.collections.w.pretraining_of: 'sd' is not a models entry built by builder 'mini_sd'",
    ):
        pretraining_rows(hub, "sd", "webscale.collections.w.pretraining_of")


def test_the_web_is_the_pretraining_set_bit_for_bit(tmp_path):
    opts = mini_options(True, {"n_base_images": 12, "n_holdout": 3})
    (tmp_path / "model").mkdir()
    (tmp_path / "model/build_info.json").write_text(
        json.dumps({"builder": "mini_sd", "seed": 4, "options": opts})
    )
    n = write_pretraining_web(tmp_path / "model", tmp_path / "web", tmp_path / "web.parquet")
    meta = pd.read_parquet(tmp_path / "web.parquet")
    base = base_set(4, opts)
    assert n == len(meta) == 12 and meta["TEXT"].tolist() == base.train_captions
    assert meta["URL"][3] == f"file:{(tmp_path / 'web').as_posix()}/00003.png"
    for i in (0, 11):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"web/{i:05d}.png")), base.train[i])
    write_pretraining_web(
        tmp_path / "model", tmp_path / "web", tmp_path / "web.parquet", "http://127.0.0.1:1/"
    )
    assert pd.read_parquet(tmp_path / "web.parquet")["URL"][0] == "http://127.0.0.1:1/00000.png"


def test_a_model_not_built_by_mini_sd_is_named(tmp_path):
    with pytest.raises(
        ShardError, match=r"build_info.json not found: the model was not built by builder 'mini_sd'"
    ):
        write_pretraining_web(tmp_path, tmp_path / "web", tmp_path / "web.parquet")


def test_a_prepared_dataset_is_a_web_of_its_pictures(tmp_path, monkeypatch):
    """dataset_of (the rehearsal's web): file: URLs of the prepared pictures, the first caption, the id;
    the count must be the configured n_rows the shards were planned from."""
    from diffrep.miniweb import write_dataset_web
    from diffrep.webshards import shard_rows
    from test_memorization_workflow import prepared_dataset

    monkeypatch.chdir(tmp_path)
    prepared_dataset(tmp_path / "resources/data/ds", [["a cat", "x"], ["a dog"], []])
    meta, images = "resources/data/ds/metadata.parquet", "resources/data/ds/images"
    assert write_dataset_web(meta, images, "web.parquet", 3, "k") == 3
    rows = shard_rows(["web.parquet"], 0, 2, id_cols=["id"])
    assert rows["url"].tolist() == [f"file:{images}/000.jpg", f"file:{images}/001.jpg"]
    assert rows["caption"].tolist() == ["a cat", "a dog"] and rows["id"].tolist() == ["000", "001"]
    assert pd.read_parquet("web.parquet")["TEXT"].tolist()[2] == ""  # no caption: an empty one
    with pytest.raises(
        ShardError, match=r"^webscale.collections.w.n_rows: 40 rows configured, but .* lists 3"
    ):
        write_dataset_web(meta, images, "web.parquet", 40, "webscale.collections.w.n_rows")


def test_dataset_of_must_name_a_dataset(paper_config):
    from diffrep.config import ConfigError, check
    from test_memorization_workflow import validated

    paper_config["webscale"]["collections"]["mine"] = {"dataset_of": "laion_5k", "n_rows": 4}
    with pytest.raises(ConfigError, match=r"webscale.collections.mine.dataset_of: 'laion_5k' is not defined"):
        check(validated(paper_config))
