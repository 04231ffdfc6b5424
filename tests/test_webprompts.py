"""The prompts of a web-scale search: captions sampled from the collection's metadata, or a prompt file."""

import logging

import numpy as np
import pandas as pd
import pytest

from diffrep.generation import image_seed
from diffrep.webprompts import (
    COLUMNS,
    PromptError,
    collection_prompts,
    file_prompts,
    read_prompts,
    search_prompts,
    write_prompts,
)


@pytest.fixture
def parquets(tmp_path):
    """Two files, 7 + 5 rows: rows 2, 8 and 11 have no usable caption (None, blank, empty)."""
    captions = [f"caption {i}" for i in range(12)]
    captions[2], captions[8], captions[11] = None, "   ", ""
    files = []
    for name, rows in (("a", range(0, 7)), ("b", range(7, 12))):
        df = pd.DataFrame(
            {
                "URL": [f"http://web/{i}.jpg" for i in rows],
                "TEXT": [captions[i] for i in rows],
                "hash": list(rows),
            }
        )
        df.to_parquet(tmp_path / f"{name}.parquet")
        files.append(tmp_path / f"{name}.parquet")
    return files


def test_collection_prompts_are_its_rows_captions_sampled_without_replacement(parquets):
    table = collection_prompts(parquets, 9, seed=5, shard_size=4)
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS and {"url", "shard"} <= set(table)
    rows = table["source_id"].astype(int).tolist()
    assert sorted(rows) == [0, 1, 3, 4, 5, 6, 7, 9, 10]  # all 9 usable rows, each once
    for r in table.itertuples():  # the caption and url of that row, across both files
        assert r.prompt == f"caption {r.source_id}" and r.url == f"http://web/{r.source_id}.jpg"
        assert r.shard == f"{int(r.source_id) // 4:05d}"
    assert table["seed"].tolist() == [image_seed(5, i) for i in range(9)]
    assert not table["duplicated"].any() and not table["dup_set"].any()
    again = collection_prompts(parquets, 9, seed=5, shard_size=4)
    pd.testing.assert_frame_equal(table, again)
    assert collection_prompts(parquets, 9, seed=6, shard_size=4)["source_id"].tolist() != rows


def test_more_prompts_than_captions_draws_with_replacement_and_says_so(parquets, caplog):
    with caplog.at_level(logging.WARNING, logger="diffrep.webprompts"):
        table = collection_prompts(parquets, 20, seed=0, shard_size=4)
    assert len(table) == 20 and table["source_id"].nunique() <= 9
    assert set(table["source_id"].astype(int)) <= {0, 1, 3, 4, 5, 6, 7, 9, 10}
    assert "20 prompts asked, 9 available: drawing with replacement" in caplog.text


def test_collection_without_a_caption_column_names_file_and_column(parquets):
    pd.read_parquet(parquets[1]).rename(columns={"TEXT": "caption"}).to_parquet(parquets[1])
    with pytest.raises(PromptError, match=r"b\.parquet has no column 'TEXT' \(caption_col\)"):
        search_prompts("collection", {"parquets": parquets}, 3, 0, shard_size=4)


def test_file_prompts_keep_labels_and_skip_blank_prompts(tmp_path):
    pd.DataFrame(
        {"prompt": ["a cat", "", "a dog", "a bird"], "label": ["VM", "none", "TM", "none"]}
    ).to_parquet(tmp_path / "p.parquet")
    table = file_prompts(tmp_path / "p.parquet", 3, seed=1)
    assert sorted(table["prompt"]) == ["a bird", "a cat", "a dog"]
    by_prompt = dict(zip(table["prompt"], table["label"]))
    assert by_prompt == {"a cat": "VM", "a dog": "TM", "a bird": "none"}
    pd.DataFrame({"text": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(PromptError, match=r"bad\.parquet has no 'prompt' column; its columns: text"):
        file_prompts(tmp_path / "bad.parquet", 1, seed=1)
    with pytest.raises(PromptError, match="missing.parquet not found"):
        file_prompts(tmp_path / "missing.parquet", 1, seed=1)


def test_prompts_table_round_trip_and_its_checks(parquets, tmp_path):
    table = collection_prompts(parquets, 4, seed=2, shard_size=4)
    write_prompts(table, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_prompts(tmp_path / "t.parquet"), table)
    table.drop(columns="seed").to_parquet(tmp_path / "noseed.parquet")
    with pytest.raises(PromptError, match=r"noseed\.parquet lacks column\(s\) seed"):
        read_prompts(tmp_path / "noseed.parquet")
    table.assign(index=np.arange(4)[::-1]).to_parquet(tmp_path / "order.parquet")
    with pytest.raises(PromptError, match="'index' must be 0, 1, ... in order"):
        read_prompts(tmp_path / "order.parquet")
