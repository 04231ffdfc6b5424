"""The web-scale lane's library: metadata and shards, the shard reader's faults, sharded search and merge."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from diffrep.embeddings import PixelEmbedder, l2_normalise, write_embeddings
from diffrep.websearch import (
    MATCH_COLUMNS,
    embed_shard,
    merge_files,
    merge_topk,
    replication_rate,
    search_shard,
    search_shard_files,
)
from diffrep.webshards import (
    ShardError,
    check_columns,
    download_shard,
    img2dataset_ranges,
    key_of,
    n_shards,
    read_shard,
    record_failed_shard,
    register_shard,
    shard_rows,
    write_shard,
)


def _laion(path, n, start=0):
    df = pd.DataFrame(
        {
            "URL": [f"http://x/{i}.jpg" for i in range(start, start + n)],
            "TEXT": [f"caption {i}" for i in range(start, start + n)],
            "hash": np.arange(start, start + n) * 7,
        }
    )
    df.to_parquet(path, index=False)
    return path


def _texture(seed, size=48):
    """A random smooth RGB picture: distinct per seed, still itself after mild augmentation."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BILINEAR)


def _jpeg(im, quality=95):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _augment(im):
    """Brightness +10 %, JPEG quality 70, a 2-px crop resized back: a near-copy."""
    w, h = im.size
    im = ImageEnhance.Brightness(im).enhance(1.1).crop((2, 2, w - 2, h - 2)).resize((w, h))
    return Image.open(io.BytesIO(_jpeg(im, 70))).convert("RGB")


# ---------------------------------------------------------------- metadata and sharding


def test_parquet_without_url_or_caption_column_is_named(tmp_path):
    path = tmp_path / "part-0.parquet"
    pd.DataFrame({"url": ["a"], "caption": ["b"]}).to_parquet(path)
    with pytest.raises(
        ShardError, match=r"part-0\.parquet has no column 'URL' \(url_col\), 'TEXT'.*url, caption"
    ):
        check_columns(path, "URL", "TEXT")
    with pytest.raises(ShardError, match=r"part-0\.parquet has no column 'TEXT'"):
        shard_rows([path], 0, 10, url_col="url")


def test_shards_cut_the_concatenated_parquets_by_row(tmp_path):
    files = [_laion(tmp_path / "a.parquet", 7), _laion(tmp_path / "b.parquet", 5, start=7)]
    assert n_shards(12, 5) == 3
    shards = [shard_rows(files, i, 5, id_cols=["hash"]) for i in range(3)]
    assert [list(s["index"]) for s in shards] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert list(shards[1]["url"]) == [f"http://x/{i}.jpg" for i in range(5, 10)]
    assert list(shards[1]["hash"]) == [35, 42, 49, 56, 63]
    pd.testing.assert_frame_equal(shards[1], shard_rows(files, 1, 5, id_cols=["hash"]))
    with pytest.raises(ShardError, match="shard 3 out of range: 12 rows make 3 shards"):
        shard_rows(files, 3, 5)


# ---------------------------------------------------------------- shard tars and their faults


def _shard(tmp_path, images, shard=0):
    rows = pd.DataFrame(
        {"index": list(images), "url": [f"u{i}" for i in images], "caption": [f"c{i}" for i in images]}
    )
    tar = tmp_path / f"{shard:05d}.tar"
    write_shard(tar, rows, images, shard)
    return tar


def test_shard_tar_round_trip_and_determinism(tmp_path):
    images = {3: _jpeg(_texture(3)), 4: _jpeg(_texture(4))}
    tar = _shard(tmp_path, images)
    with tarfile.open(tar) as t:
        names = t.getnames()
    assert names == [f"{key_of(3)}.jpg", f"{key_of(3)}.txt", f"{key_of(3)}.json"] + [
        f"{key_of(4)}.{e}" for e in ("jpg", "txt", "json")
    ]
    good, bad = read_shard(tar, 0)
    assert [g.meta["index"] for g in good] == [3, 4] and bad == []
    assert good[0].meta["url"] == "u3" and good[0].data == images[3]
    first = tar.read_bytes()
    _shard(tmp_path, images)
    assert tar.read_bytes() == first


def test_truncated_tar_names_shard_member_and_byte(tmp_path):
    tar = _shard(tmp_path, {i: _jpeg(_texture(i)) for i in range(3)}, shard=7)
    with tarfile.open(tar) as t:
        first = t.getmembers()[0]
    cut = first.offset_data + 100  # inside the first image's data
    tar.write_bytes(tar.read_bytes()[:cut])
    stop = first.offset_data + first.size
    with pytest.raises(ShardError) as err:
        read_shard(tar, 7)
    assert str(err.value) == (
        f"shard 7: {tar} is truncated: the file ends at byte {cut}, inside member 000000000.jpg "
        f"(bytes {first.offset_data}..{stop}); delete {tar} and {tmp_path / '00007_stats.json'}, then "
        "re-run snakemake: download_shard fetches the shard again"
    )


def test_tar_cut_at_a_member_boundary_or_with_a_broken_header_is_named(tmp_path):
    """tarfile reads such tars quietly as shorter ones; the missing end-of-archive marker or the bad
    header where reading stopped gives them away."""
    tar = _shard(tmp_path, {i: _jpeg(_texture(i)) for i in range(3)}, shard=2)
    whole = tar.read_bytes()
    with tarfile.open(tar) as t:
        cut = t.getmembers()[3].offset  # start of the second image's header
    tar.write_bytes(whole[:cut])
    with pytest.raises(
        ShardError,
        match=rf"shard 2: .*00002\.tar is truncated: the file ends at byte {cut}, after member "
        r"000000000\.json, without the end-of-archive marker; delete .*00002\.tar and .*00002_stats\.json",
    ):
        read_shard(tar, 2, stats={"successes": 3})
    tar.write_bytes(whole[:cut] + b"x" * 512 + whole[cut + 512 :])
    with pytest.raises(
        ShardError,
        match=rf"shard 2: .*00002\.tar is corrupt: the header at byte {cut}, after member 000000000\.json, "
        "is not a tar header",
    ):
        read_shard(tar, 2)
    tar.write_bytes(whole)
    with pytest.raises(ShardError, match=r"shard 2: .*holds 3 images but its stats record 4"):
        read_shard(tar, 2, stats={"successes": 4})


def test_a_tar_truncated_after_its_download_fails_embedding_as_truncated_not_as_changed(tmp_path, web):
    """A real download, then its tar cut short: embed_shard names the tar, the member being read, the
    byte where it broke and both files to delete, not a checksum; a whole tar with other content keeps
    the checksum message."""
    root, base = web
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(_jpeg(_texture(i)))
    rows = pd.DataFrame(
        {"index": [0, 1, 2], "url": [f"{base}/{i}.jpg" for i in range(3)], "caption": list("abc")}
    )
    tar, stats_file = tmp_path / "shards/00004.tar", tmp_path / "shards/00004_stats.json"
    stats = download_shard(rows, 4, tar, stats_file, threads=1)
    whole = tar.read_bytes()
    with tarfile.open(tar) as t:
        second = t.getmembers()[3]  # the second image
    cut = second.offset_data + 500
    tar.write_bytes(whole[:cut])
    out = {"out_npz": tmp_path / "4.npz", "out_meta": tmp_path / "4.parquet"}
    with pytest.raises(ShardError) as err:
        embed_shard(PixelEmbedder(8), tar, 4, **out, stats=stats, stats_path=stats_file)
    assert str(err.value) == (
        f"shard 4: {tar} is truncated: the file ends at byte {cut}, inside member 000000001.jpg (bytes "
        f"{second.offset_data}..{second.offset_data + second.size}); delete {tar} and {stats_file}, then "
        "re-run snakemake: download_shard fetches the shard again"
    )
    assert "sha256" not in str(err.value) and not out["out_npz"].exists()
    other = _shard(
        tmp_path / "shards", {0: _jpeg(_texture(9)), 1: _jpeg(_texture(1)), 2: _jpeg(_texture(2))}, 4
    )
    assert other == tar
    with pytest.raises(
        ShardError,
        match=rf"shard 4: .*00004\.tar has sha256 [0-9a-f]{{64}}, but its stats record {stats['sha256']} "
        r"\(re-downloaded with different content\?\); delete .*00004\.tar and .*00004_stats\.json",
    ):
        embed_shard(PixelEmbedder(8), tar, 4, **out, stats=stats, stats_path=stats_file)


def test_corrupt_and_non_rgb_members_are_named_or_dropped(tmp_path):
    gray = io.BytesIO()
    _texture(1).convert("L").save(gray, format="PNG")
    images = {0: _jpeg(_texture(0)), 1: gray.getvalue(), 2: _jpeg(_texture(2))[:300]}
    tar = _shard(tmp_path, images, shard=4)
    good, bad = read_shard(tar, 4)
    assert [g.key for g in good] == [key_of(0)]
    assert [(b["shard"], b["member"]) for b in bad] == [(4, f"{key_of(1)}.png"), (4, f"{key_of(2)}.jpg")]
    assert bad[0]["reason"] == "non-RGB: mode L (grayscale)" and bad[1]["reason"].startswith("corrupt:")
    with pytest.raises(ShardError, match=rf"shard 4: .* member {key_of(1)}\.png: non-RGB: mode L"):
        read_shard(tar, 4, bad_images="fail")


def test_redownloaded_shard_with_other_content_fails_on_its_sha256(tmp_path):
    tar = _shard(tmp_path, {0: _jpeg(_texture(0))}, shard=1)
    recorded = {"successes": 1, "sha256": "0" * 64}
    with pytest.raises(
        ShardError, match=r"shard 1: .*00001\.tar has sha256 [0-9a-f]{64}, but its stats record 0{64}"
    ):
        read_shard(tar, 1, stats=recorded)


def test_a_shard_whose_download_failed_entirely_names_shard_rows_and_reasons(tmp_path):
    rows = pd.DataFrame({"index": [10, 11], "url": ["http://127.0.0.1:9/a.jpg"] * 2, "caption": ["a", "b"]})
    with pytest.raises(
        ShardError, match=r"shard 5: no image of its 2 URLs .*rows 10\.\.11.*connection failed"
    ):
        download_shard(rows, 5, tmp_path / "00005.tar", tmp_path / "00005_stats.json", timeout=2, retries=0)
    assert not (tmp_path / "00005.tar").exists()


# ---------------------------------------------------------------- search and merge


def _random_unit(rng, n, d=32):
    return l2_normalise(rng.standard_normal((n, d)).astype(np.float32))


def _meta(start, n):
    idx = np.arange(start, start + n)
    return pd.DataFrame(
        {"key": [key_of(i) for i in idx], "index": idx, "url": [f"u{i}" for i in idx], "caption": ""}
    )


def test_merged_shard_topk_equals_one_monolithic_faiss_search():
    import faiss

    rng = np.random.default_rng(0)
    ref, gen = _random_unit(rng, 1000), _random_unit(rng, 40)
    gen[:4] = ref[[5, 333, 334, 998]]  # exact copies in three different shards
    gen[4] = l2_normalise(ref[[700]] + 0.05 * rng.standard_normal((1, 32)).astype(np.float32))[0]
    ids, size, k = [f"g{i:02d}" for i in range(40)], 300, 10
    frames = [
        search_shard(
            ids,
            gen,
            ref[s * size : (s + 1) * size],
            _meta(s * size, len(ref[s * size : (s + 1) * size])),
            s,
            k,
        )
        for s in range(n_shards(1000, size))
    ]
    merged = merge_topk(frames, k)
    mono = faiss.IndexFlatIP(32)
    mono.add(ref)
    sims, rows = mono.search(gen, k)
    merged = merged.sort_values(["generation", "rank"])
    np.testing.assert_array_equal(merged["index"].to_numpy().reshape(40, k), rows)
    np.testing.assert_allclose(merged["similarity"].to_numpy().reshape(40, k), sims, atol=1e-5)
    assert list(merged.loc[merged["rank"] == 0, "index"][:5]) == [5, 333, 334, 998, 700]
    assert list(merged.loc[merged["rank"] == 0, "shard"][:5]) == [0, 1, 1, 3, 2]
    assert (merged["url"] == "u" + merged["index"].astype(str)).all()


def _write_shard_results(tmp_path, rng, n_shards_, k=3):
    ref, gen = _random_unit(rng, 20 * n_shards_), _random_unit(rng, 6)
    write_embeddings(tmp_path / "gen.npz", [f"g{i}" for i in range(6)], gen, "pixel(size=4)", "pixel4")
    out = {}
    for s in range(n_shards_):
        write_embeddings(
            tmp_path / f"{s}.npz",
            [key_of(i) for i in range(s * 20, s * 20 + 20)],
            ref[s * 20 : s * 20 + 20],
            "pixel(size=4)",
            "pixel4",
        )
        _meta(s * 20, 20).to_parquet(tmp_path / f"{s}.parquet")
        out[s] = tmp_path / f"{s}.matches.parquet"
        search_shard_files(
            tmp_path / "gen.npz", tmp_path / f"{s}.npz", tmp_path / f"{s}.parquet", s, k, out[s]
        )
    return out


LABEL = {"model": "sd14", "collection": "laion_a6", "embedder": "pixel(size=4)", "preprocess": "pixel4"}


def test_merge_refuses_missing_shards_unless_allowed_and_then_names_them(tmp_path):
    results = _write_shard_results(tmp_path, np.random.default_rng(1), 4)
    results[2].unlink()
    del results[3]
    kw = {"label": LABEL, "threshold": 0.5, "n_boot": 50}
    with pytest.raises(ShardError, match=r"2 of 4 shards have no result: 2, 3; .*allow_missing_shards: true"):
        merge_files(results, 4, 3, tmp_path / "m.parquet", tmp_path / "s.json", **kw)
    assert not (tmp_path / "m.parquet").exists()
    summary = merge_files(
        results, 4, 3, tmp_path / "m.parquet", tmp_path / "s.json", allow_missing=True, **kw
    )
    matches = pd.read_parquet(tmp_path / "m.parquet")
    assert set(matches["missing_shards"]) == {"2,3"} and set(matches["shard"]) == {0, 1}
    assert (
        json.loads((tmp_path / "s.json").read_text())["missing_shards"] == [2, 3] == summary["missing_shards"]
    )
    assert summary["model"] == "sd14" and set(matches["collection"]) == {"laion_a6"}


def test_the_merge_names_the_files_to_delete_to_retry_a_recorded_failed_download(tmp_path, caplog):
    """After a run with allow_missing_shards, a shard whose download fetched nothing is recorded and up
    to date: a plain re-run would not fetch it. Without the opt-in the merge names its tar and stats to
    delete; with it, the warning says the same."""
    results = _write_shard_results(tmp_path, np.random.default_rng(1), 3)
    shards = tmp_path / "shards"
    stats = {s: shards / f"{s:05d}_stats.json" for s in range(3)}
    rows = pd.DataFrame({"index": [40, 41], "url": ["http://127.0.0.1:9/a.jpg"] * 2, "caption": ["a", "b"]})
    record_failed_shard(
        rows, 2, shards / "00002.tar", stats[2], "shard 2: no image of its 2 URLs could be fetched"
    )
    pd.DataFrame({c: [] for c in MATCH_COLUMNS}).to_parquet(results[2])  # its empty search result
    kw = {"label": LABEL, "threshold": 0.5, "n_boot": 10, "stats_paths": stats}
    with pytest.raises(ShardError) as err:
        merge_files(results, 3, 3, tmp_path / "m.parquet", tmp_path / "s.json", **kw)
    assert str(err.value) == (
        "merge: 1 of 3 shards have no result: 2; the download of shard(s) 2 fetched no image (the error "
        "is in each stats file) and a plain re-run does not download them again: delete "
        f"{shards / '00002.tar'} {stats[2]}, then re-run snakemake to download them; or set "
        "allow_missing_shards: true to merge without them (every table then names the missing shards)"
    )
    with caplog.at_level("WARNING", logger="diffrep.websearch"):
        merge_files(results, 3, 3, tmp_path / "m.parquet", tmp_path / "s.json", allow_missing=True, **kw)
    assert f"delete {shards / '00002.tar'} {stats[2]}, then re-run snakemake" in caplog.text
    del results[1]  # a shard without a result file (no recorded failure): a re-run makes it
    with pytest.raises(
        ShardError, match=r"2 of 3 shards have no result: 1, 2; the download of shard\(s\) 2 "
    ):
        merge_files(results, 3, 3, tmp_path / "m.parquet", tmp_path / "s.json", **kw)
    with pytest.raises(ShardError, match=r"no result: 1; re-run snakemake to compute them; or set"):
        merge_files({0: results[0], 2: results[0]}, 3, 3, tmp_path / "m.parquet", tmp_path / "s.json", **kw)


def test_merge_marks_matches_to_the_image_of_the_generations_own_caption(tmp_path):
    """Prompts sampled from the collection: a match whose index is the prompt's own row is marked, and
    the summary gives the share of generations whose top-1 / top-k holds that image."""
    results = _write_shard_results(tmp_path, np.random.default_rng(1), 2)
    kw = {"label": LABEL, "threshold": 0.5, "n_boot": 50}
    merge_files(results, 2, 3, tmp_path / "m.parquet", tmp_path / "s.json", **kw)
    m = pd.read_parquet(tmp_path / "m.parquet")
    top = m.set_index(["generation", "rank"])["index"]
    # g0: its own row at top-1; g1: at rank 2; g2..g5: a row that is not among their matches
    own = {"g0": int(top["g0", 0]), "g1": int(top["g1", 2]), **{f"g{i}": 999 for i in range(2, 6)}}
    summary = merge_files(results, 2, 3, tmp_path / "m.parquet", tmp_path / "s.json", prompt_rows=own, **kw)
    m = pd.read_parquet(tmp_path / "m.parquet")
    assert m.loc[m["own_image"], ["generation", "rank"]].values.tolist() == [["g0", 0], ["g1", 2]]
    assert (m["prompt_index"] == m["generation"].map(own)).all()
    assert summary["own_image_top1"] == pytest.approx(1 / 6) and summary["own_image_topk"] == pytest.approx(
        2 / 6
    )
    without = merge_files(results, 2, 3, tmp_path / "m2.parquet", tmp_path / "s2.json", **kw)
    assert "own_image_top1" not in without and "own_image" not in pd.read_parquet(tmp_path / "m2.parquet")


def test_replication_rate_bootstrap_is_seeded_and_brackets_the_rate():
    top1 = np.r_[np.full(30, 0.9), np.full(70, 0.2)]
    a = replication_rate(top1, 0.5, n_boot=500, seed=3)
    assert a == replication_rate(top1, 0.5, n_boot=500, seed=3)
    assert a["rate"] == 0.3 and a["ci_low"] < 0.3 < a["ci_high"]
    assert a["ci_low"] > 0.18 and a["ci_high"] < 0.42  # binomial sd 0.046: about ±0.09
    assert replication_rate(top1, 0.5, n_boot=500, seed=4) != a


def test_the_img2dataset_engine_fills_the_same_shard_tar(tmp_path, monkeypatch):
    """download.engine img2dataset: a stand-in writes img2dataset's 'files' layout; the shard tar holds
    the fetched bytes at their rows, the failure is counted with img2dataset's reason."""
    import sys
    import types

    from diffrep.datasets import DatasetError

    served = {f"http://x/{i}.jpg": _jpeg(_texture(i)) for i in (10, 12)}  # row 11's link is dead

    def download(url_list, output_folder, save_additional_columns, **kw):
        assert kw["resize_mode"] == "no" and kw["disable_all_reencoding"]
        rows = pd.read_parquet(url_list)
        out = Path(output_folder) / "00000"
        out.mkdir(parents=True)
        keys = [f"{j:09d}" for j in range(len(rows))]
        for key, url in zip(keys, rows["url"]):
            if url in served:
                (out / f"{key}.jpg").write_bytes(served[url])
        ok = [u in served for u in rows["url"]]
        pd.DataFrame(
            {
                "key": keys,
                "status": ["success" if o else "failed_to_download" for o in ok],
                "error_message": [None if o else "HTTP Error 404: Not Found" for o in ok],
                "diffrep_id": list(rows["diffrep_id"]),
            }
        ).to_parquet(out.parent / "00000.parquet")

    rows = shard_rows([_laion(tmp_path / "p.parquet", 15)], 2, 5).iloc[:3]
    tar, stats = tmp_path / "shards/00002.tar", tmp_path / "shards/00002_stats.json"
    monkeypatch.setitem(sys.modules, "img2dataset", None)
    with pytest.raises(DatasetError, match=r"img2dataset is not installed here"):
        download_shard(rows, 2, tar, stats, engine="img2dataset")
    monkeypatch.setitem(sys.modules, "img2dataset", types.SimpleNamespace(download=download))
    rec = download_shard(rows, 2, tar, stats, engine="img2dataset")
    assert (rec["count"], rec["successes"], rec["engine"]) == (3, 2, "img2dataset")
    assert rec["failures"] == [{"index": 11, "reason": "img2dataset: HTTP Error 404: Not Found"}]
    images, _ = read_shard(tar, 2, stats=rec)
    assert [(im.meta["index"], im.data) for im in images] == [
        (i, served[f"http://x/{i}.jpg"]) for i in (10, 12)
    ]


# ---------------------------------------------------------------- img2dataset shards already on disk


def write_img2dataset_folder(parquets, folder, shard_size, pictures, failed=()):
    """What img2dataset (output_format webdataset, number_sample_per_shard = shard_size) writes for
    `parquets` given in this order: each file cut on its own, shards numbered on across files,
    ``{shard:05d}.tar`` of ``{key}.jpg/.txt/.json`` and ``{shard:05d}_stats.json``; key = shard and
    row in shard (img2dataset's compute_key). `pictures(row)` is a collection row's JPEG bytes;
    rows in `failed` are not fetched."""
    import math
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    digits = math.ceil(math.log10(shard_size))
    shard, start = 0, 0
    for path in parquets:
        df = pd.read_parquet(path)
        for a in range(0, len(df), shard_size):
            part = df.iloc[a : a + shard_size]
            ok = 0
            with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
                for j, (url, caption) in enumerate(zip(part["URL"], part["TEXT"])):
                    row = start + a + j
                    if row in failed:
                        continue
                    key = f"{10**digits * shard + j:0{5 + digits}d}"
                    meta = {"url": url, "caption": caption, "key": key, "status": "success"}
                    for ext, data in (
                        ("jpg", pictures(row)),
                        ("txt", caption.encode()),
                        ("json", json.dumps(meta).encode()),
                    ):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                    ok += 1
            stats = {
                "count": len(part),
                "successes": ok,
                "failed_to_download": len(part) - ok,
                "failed_to_resize": 0,
                "status_dict": {
                    "success": ok,
                    **({"HTTP Error 404": len(part) - ok} if ok < len(part) else {}),
                },
            }
            (folder / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
            shard += 1
        start += len(df)


def test_img2dataset_cuts_each_parquet_on_its_own():
    assert img2dataset_ranges([25, 13], 10) == [(0, 10), (10, 20), (20, 25), (25, 35), (35, 38)]


def test_img2dataset_shards_on_disk_are_numbered_by_collection_row(tmp_path):
    """Two parquets (7 + 5 rows), 4 rows per shard: img2dataset's shards 0-3 are rows 0-3, 4-6, 7-10,
    11; each image read from them carries its collection row, whatever img2dataset keyed it."""
    parquets = [_laion(tmp_path / "a.parquet", 7), _laion(tmp_path / "b.parquet", 5, start=7)]
    folder = tmp_path / "i2d"
    write_img2dataset_folder(parquets, folder, 4, lambda r: _jpeg(_texture(r)), failed={5})
    found = {}
    for shard in range(4):
        out = tmp_path / f"{shard}_stats.json"
        rec = register_shard(
            folder / f"{shard:05d}.tar", folder / f"{shard:05d}_stats.json", parquets, shard, 4, out
        )
        assert rec == json.loads(out.read_text()) and rec["layout"] == "img2dataset"
        images, bad = read_shard(folder / f"{shard:05d}.tar", shard, stats=rec)
        assert not bad
        found.update({im.meta["index"]: im for im in images})
    assert sorted(found) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]  # row 5 failed to download
    for row, im in found.items():
        assert im.key == key_of(row) and im.meta["url"] == f"http://x/{row}.jpg"
        assert im.data == _jpeg(_texture(row))
    assert json.loads((tmp_path / "1_stats.json").read_text())["rows"] == [4, 7]


def test_img2dataset_shards_of_other_parquets_or_sizes_are_refused_naming_the_member(tmp_path):
    parquets = [_laion(tmp_path / "a.parquet", 7), _laion(tmp_path / "b.parquet", 5, start=7)]
    pics = lambda r: _jpeg(_texture(r))  # noqa: E731
    write_img2dataset_folder(parquets, tmp_path / "size5", 5, pics)  # number_sample_per_shard 5, not 4
    with pytest.raises(
        ShardError, match=r"shard 1: .*member 000010: url 'http://x/5.jpg', but collection row 4"
    ):
        register_shard(
            tmp_path / "size5/00001.tar", tmp_path / "size5/00001_stats.json", parquets, 1, 4, tmp_path / "s"
        )
    write_img2dataset_folder(parquets[::-1], tmp_path / "swapped", 4, pics)  # the files in another order
    with pytest.raises(ShardError, match=r"img2dataset's input must be these parquets, in this order"):
        register_shard(
            tmp_path / "swapped/00000.tar",
            tmp_path / "swapped/00000_stats.json",
            parquets,
            0,
            4,
            tmp_path / "s",
        )
    (tmp_path / "swapped/00002_stats.json").unlink()
    with pytest.raises(
        ShardError, match=r"shard 2: .*00002_stats.json is missing \(img2dataset did not finish"
    ):
        register_shard(
            tmp_path / "swapped/00002.tar",
            tmp_path / "swapped/00002_stats.json",
            parquets,
            2,
            4,
            tmp_path / "s",
        )
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- end to end over HTTP


def test_download_embed_search_merge_over_http_finds_planted_copies(tmp_path, web):
    root, base = web
    n, size, k = 24, 7, 3
    for i in range(n):
        (root / f"{i}.jpg").write_bytes(_jpeg(_texture(i)))
    urls = [f"{base}/{i}.jpg" for i in range(n)]
    urls[9] = f"{base}/dead.jpg"  # a dead link: counted, not fatal
    half = n // 2
    pd.DataFrame({"URL": urls[:half], "TEXT": [f"t{i}" for i in range(half)]}).to_parquet(
        tmp_path / "p0.parquet"
    )
    pd.DataFrame({"URL": urls[half:], "TEXT": [f"t{i}" for i in range(half, n)]}).to_parquet(
        tmp_path / "p1.parquet"
    )
    parquets = [tmp_path / "p0.parquet", tmp_path / "p1.parquet"]
    planted = {"exact": [2, 15, 23], "augmented": [5, 12, 20]}  # shards 0, 2, 3 and 0, 1, 2
    gens = [_texture(i) for i in planted["exact"]] + [_augment(_texture(i)) for i in planted["augmented"]]
    gens += [_texture(1000 + i) for i in range(4)]  # unrelated generations
    emb = PixelEmbedder(16)
    gen_ids = [f"gen{i}" for i in range(len(gens))]
    gen_emb = emb.embed([io.BytesIO(_jpeg(g, 100)) for g in gens], batch_size=8)
    write_embeddings(tmp_path / "gen.npz", gen_ids, gen_emb, emb.name, emb.preprocess)
    results = {}
    for s in range(n_shards(n, size)):
        tar, stats_path = tmp_path / f"{s:05d}.tar", tmp_path / f"{s:05d}_stats.json"
        stats = download_shard(shard_rows(parquets, s, size), s, tar, stats_path, threads=2, timeout=5)
        assert stats == json.loads(stats_path.read_text())
        embed_shard(emb, tar, s, tmp_path / f"{s}.npz", tmp_path / f"{s}.parquet", stats=stats, batch_size=8)
        results[s] = tmp_path / f"{s}.m.parquet"
        search_shard_files(
            tmp_path / "gen.npz", tmp_path / f"{s}.npz", tmp_path / f"{s}.parquet", s, k, results[s]
        )
    stats1 = json.loads((tmp_path / "00001_stats.json").read_text())
    assert (stats1["count"], stats1["successes"], stats1["failed_to_download"]) == (7, 6, 1)
    assert stats1["status_dict"] == {"HTTP 404 File not found": 1}
    summary = merge_files(
        results, 4, k, tmp_path / "m.parquet", tmp_path / "s.json", label=LABEL, threshold=0.9, n_boot=100
    )
    top1 = pd.read_parquet(tmp_path / "m.parquet").query("rank == 0").set_index("generation")
    expect = planted["exact"] + planted["augmented"]
    assert list(top1.loc[gen_ids[:6], "index"]) == expect
    assert list(top1.loc[gen_ids[:6], "shard"]) == [i // size for i in expect]
    assert list(top1.loc[gen_ids[:6], "url"]) == [urls[i] for i in expect]
    assert (top1.loc[gen_ids[:3], "similarity"] > 0.999).all()
    assert (top1.loc[gen_ids[3:6], "similarity"] > 0.9).all() and (
        top1.loc[gen_ids[6:], "similarity"] < 0.9
    ).all()
    assert summary["rate"] == 6 / 10 and summary["missing_shards"] == []


def test_allowed_missing_shard_flows_through_embed_search_and_merge(tmp_path, web):
    """A shard that fetched nothing, recorded (allow_missing_shards): empty embedding and result, and the
    merge names it; without the opt-in the merge refuses."""
    root, base = web
    for i in range(4):
        (root / f"{i}.jpg").write_bytes(_jpeg(_texture(i)))
    urls = [f"{base}/{i}.jpg" for i in range(2)] + [f"{base}/gone{i}.jpg" for i in range(2)]
    pd.DataFrame({"URL": urls, "TEXT": list("abcd")}).to_parquet(tmp_path / "p.parquet")
    emb = PixelEmbedder(8)
    gen = emb.embed([io.BytesIO(_jpeg(_texture(1)))])
    write_embeddings(tmp_path / "gen.npz", ["g0"], gen, emb.name, emb.preprocess)
    results = {}
    for s in range(2):
        rows, tar, st = (
            shard_rows([tmp_path / "p.parquet"], s, 2),
            tmp_path / f"{s}.tar",
            tmp_path / f"{s}.json",
        )
        try:
            stats = download_shard(rows, s, tar, st, threads=1, timeout=5)
        except ShardError as err:
            assert s == 1 and "shard 1: no image of its 2 URLs" in str(err)
            stats = record_failed_shard(rows, s, tar, st, str(err))
        embed_shard(emb, tar, s, tmp_path / f"{s}.npz", tmp_path / f"{s}.parquet", stats=stats)
        results[s] = tmp_path / f"{s}.m.parquet"
        search_shard_files(
            tmp_path / "gen.npz", tmp_path / f"{s}.npz", tmp_path / f"{s}.parquet", s, 2, results[s]
        )
    assert json.loads((tmp_path / "1.json").read_text())["successes"] == 0
    assert len(pd.read_parquet(results[1])) == 0
    kw = {"label": LABEL, "threshold": 0.9, "n_boot": 10}
    with pytest.raises(ShardError, match=r"1 of 2 shards have no result: 1;"):
        merge_files(results, 2, 2, tmp_path / "m.parquet", tmp_path / "s.json", **kw)
    summary = merge_files(
        results, 2, 2, tmp_path / "m.parquet", tmp_path / "s.json", allow_missing=True, **kw
    )
    merged = pd.read_parquet(tmp_path / "m.parquet")
    assert summary["missing_shards"] == [1] and set(merged["missing_shards"]) == {"1"}
    assert merged.loc[merged["rank"] == 0, "index"].tolist() == [1]


def test_shard_downloaded_again_with_other_content_than_the_manifest_fails(tmp_path, web):
    root, base = web
    for i in range(2):
        (root / f"{i}.jpg").write_bytes(_jpeg(_texture(i)))
    rows = pd.DataFrame({"index": [0, 1], "url": [f"{base}/0.jpg", f"{base}/1.jpg"], "caption": ["a", "b"]})
    tar, stats = tmp_path / "shards/00003.tar", tmp_path / "shards/00003_stats.json"
    first = download_shard(rows, 3, tar, stats, threads=1)
    manifest = tmp_path / "shards.sha256"
    manifest.write_text(f"{first['sha256']}  00003.tar\n")
    tar.unlink()
    assert download_shard(rows, 3, tar, stats, threads=1, manifest=manifest)["sha256"] == first["sha256"]
    tar.unlink()
    (root / "1.jpg").write_bytes(_jpeg(_texture(99)))  # the web changed
    with pytest.raises(
        ShardError,
        match=rf"shard 3: downloaded .*00003\.tar has sha256 [0-9a-f]{{64}}, but .*shards\.sha256 records {first['sha256']}",
    ):
        download_shard(rows, 3, tar, stats, threads=1, manifest=manifest)
    assert not tar.exists()
