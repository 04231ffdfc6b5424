"""The web-scale lane in the workflow: shard jobs known at DAG time, and its config errors (dry runs)."""

import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageEnhance

from conftest import REPO, job_counts, load_yaml, serve_folder, snakemake
from diffrep.embeddings import PixelEmbedder, write_embeddings
from diffrep.tinysd import mini_options
from test_webscale import _jpeg, _texture, write_img2dataset_folder


def test_paper_webscale_block_plans_one_job_per_shard(workflow_copy):
    """SD 1.4 against LAION-Aesthetics 6+ on a fresh clone: 12 M rows (n_rows) / 10 000 per shard."""
    counts = job_counts(snakemake(["-n"], cwd=workflow_copy, check=True).stdout)
    assert counts["download_shard"] == counts["embed_shard"] == counts["search_shard"] == 1200
    assert counts["merge_search"] == counts["webscale_tables"] == 1
    # prompted with LAION-A 6+'s own captions: one draw, one generation and one embedding job
    assert counts["search_prompts"] == counts["generate_search"] == counts["embed_search_generations"] == 1


def _dry_run(tmp_path, workflow_copy, cfg, *extra):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return snakemake(
        ["-n", "--configfile", str(path), "--replace-workflow-config", *extra], cwd=workflow_copy
    )


def test_shard_count_comes_from_the_parquet_footers_when_on_disk(tmp_path, workflow_copy, paper_config):
    for i, n in enumerate((25, 25, 13)):
        pd.DataFrame({"URL": ["u"] * n, "TEXT": ["t"] * n}).to_parquet(tmp_path / f"part-{i}.parquet")
    coll = paper_config["webscale"]["collections"]["laion_a6"]
    coll.update(parquets=[str(tmp_path / "part-*.parquet")], shard_size=10)  # n_rows stays: footers win
    proc = _dry_run(tmp_path, workflow_copy, paper_config, "--group-components", "webscale_shard=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["download_shard"] == counts["embed_shard"] == counts["search_shard"] == 7  # 63 rows
    # embed and search of a shard are one group; --group-components packs 4 shards per cluster job
    assert proc.stdout.count("Group job webscale_shard") == 2


def test_webscale_config_errors_name_the_key(tmp_path, workflow_copy, paper_config):
    search = paper_config["webscale"]["searches"][0]
    search["collection"] = "laion_a5"
    out = _dry_run(tmp_path, workflow_copy, paper_config)
    assert out.returncode != 0
    assert (
        "webscale.searches[0] (sd14_laion_a6).collection: 'laion_a5' is not defined; defined: laion_a6"
        in (out.stdout + out.stderr)
    )
    search["collection"] = "laion_a6"
    del paper_config["webscale"]["collections"]["laion_a6"]["n_rows"]
    out = _dry_run(tmp_path, workflow_copy, paper_config)
    assert out.returncode != 0
    assert "webscale.collections.laion_a6: no parquet file of ['data/laion_aesthetics_6plus/*.parquet']" in (
        out.stdout + out.stderr
    )


def job_counts_of_run(stdout: str) -> dict[str, int]:
    """{rule: jobs} of a real run's output (its 'rule X:' blocks, grouped jobs indented)."""
    counts: dict[str, int] = {}
    for rule in re.findall(r"^\s*(?:local)?rule (\w+):$", stdout, flags=re.MULTILINE):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def _in_dir(workflow_copy, wd, config):
    """Snakemake arguments: the copy's Snakefile, run in the folder `wd` with the config file `config`."""
    return ["-s", str(workflow_copy / "Snakefile"), "-d", str(wd), "--configfile", str(config)]


def test_a_retried_or_redownloaded_shard_reembeds_only_itself(tmp_path, workflow_copy, paper_config):
    """Per-shard outputs: when shard 3's embedding failed, or shard 5 was downloaded again, exactly those
    shards are embedded again; nothing already embedded is recomputed."""
    for i, n in enumerate((25, 25, 13)):
        pd.DataFrame({"URL": ["u"] * n, "TEXT": ["t"] * n}).to_parquet(tmp_path / f"part-{i}.parquet")
    coll = paper_config["webscale"]["collections"]["laion_a6"]
    coll.update(parquets=[str(tmp_path / "part-*.parquet")], shard_size=10)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(paper_config))
    wd = tmp_path / "wd"
    ws = wd / "resources/webscale/laion_a6"
    now = time.time()
    for part in tmp_path.glob("part-*.parquet"):
        os.utime(part, (now - 40, now - 40))
    files = {
        "resources/models/sscd_disc_large/model.torchscript.pt": now - 30,
        "resources/models/sscd_disc_large.sha256": now - 30,
        **{
            f"resources/webscale/laion_a6/shards/{i:05d}{s}": now - 20
            for i in range(7)
            for s in (".tar", "_stats.json")
        },
        **{
            f"resources/webscale/laion_a6/embeddings/sscd_large/{i:05d}.{e}": now - 10
            for i in (0, 1, 2, 4, 5, 6)
            for e in ("npz", "parquet")
        },
    }
    for rel, mtime in files.items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).touch()
        os.utime(wd / rel, (mtime, mtime))
    os.utime(wd / "resources/models/sscd_disc_large", (now - 30, now - 30))
    os.utime(ws / "shards/00005.tar", (now, now))  # shard 5 downloaded again
    targets = [f"resources/webscale/laion_a6/embeddings/sscd_large/{i:05d}.npz" for i in range(7)]
    args = ["-n", *_in_dir(workflow_copy, wd, tmp_path / "config.yaml")]
    proc = snakemake([*args, "--replace-workflow-config", *targets], cwd=workflow_copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout) == {"embed_shard": 2}
    assert {f"{i:05d}.npz" for i in range(7) if f"output: {targets[i]}" in proc.stdout} == {
        "00003.npz",
        "00005.npz",
    }


def _sd14_search_with_planted_generations(tmp_path, paper_config, collection: dict, pictures: dict):
    """The paper's SD 1.4 search on pixel16 over `collection`, prompted by laion10k's captions, its
    generations planted (name: picture) with their descriptors; returns the working directory."""
    paper_config["embedders"]["pixel16"] = {"type": "pixel", "size": 16}
    paper_config["webscale"]["collections"]["laion_a6"].update(collection)
    paper_config["webscale"]["searches"][0].update(
        embedder="pixel16", top_k=2, threshold=0.99, prompts={"dataset": "laion10k"}
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(paper_config))
    wd = tmp_path / "wd"
    emb = PixelEmbedder(16)
    gen_dir = wd / "results/paper/laion10k/generations/pretrained-sd14/default"
    gen_dir.mkdir(parents=True)
    for name, picture in pictures.items():
        picture.save(gen_dir / name)
    write_embeddings(
        wd / "results/paper/laion10k/embeddings/pixel16/pretrained-sd14/default.npz",
        list(pictures),
        emb.embed([gen_dir / n for n in pictures]),
        emb.name,
        emb.preprocess,
    )
    return wd


def test_shard_rules_run_download_to_merge_over_http(tmp_path, workflow_copy, paper_config, web):
    """The rules' scripts for real, offline: 8 pictures served on 127.0.0.1 (one link dead), 3 shards,
    the weight-free pixel embedder; generations are two planted copies (the npz stands in for SD 1.4's)."""
    root, base = web
    for i in range(8):
        (root / f"{i}.jpg").write_bytes(_jpeg(_texture(i)))
    urls = [f"{base}/{i}.jpg" for i in range(8)]
    urls[4] = f"{base}/dead.jpg"
    pd.DataFrame({"URL": urls, "TEXT": [f"t{i}" for i in range(8)]}).to_parquet(tmp_path / "p.parquet")
    pictures = {"a.png": _texture(1), "b.png": _texture(7)}
    collection = {"parquets": [str(tmp_path / "p.parquet")], "shard_size": 3}
    wd = _sd14_search_with_planted_generations(tmp_path, paper_config, collection, pictures)
    args = ["--cores", "1", *_in_dir(workflow_copy, wd, tmp_path / "config.yaml")]
    rules = [
        "download_shard",
        "embed_shard",
        "search_shard",
        "merge_search",
        "webscale_tables",
        "webscale_figures",
    ]
    target = "results/paper/tables/webscale.csv"
    figures = [f"results/paper/figures/webscale/sd14_laion_a6/{f}.png" for f in ("gallery", "top1_histogram")]
    proc = snakemake(
        [*args, "--replace-workflow-config", "--allowed-rules", *rules, "--", target, *figures],
        cwd=workflow_copy,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    table = pd.read_csv(wd / target)
    assert table.loc[0, ["search", "model", "collection", "embedder_name", "rate"]].tolist() == [
        "sd14_laion_a6",
        "sd14",
        "laion_a6",
        "pixel(size=16)",
        1.0,
    ]
    matches = pd.read_parquet(wd / "results/paper/webscale/sd14_laion_a6/matches.parquet")
    top1 = matches[matches["rank"] == 0].set_index("generation")
    assert top1.loc[["a.png", "b.png"], ["index", "shard"]].values.tolist() == [[1, 0], [7, 2]]
    # the gallery's web images are the matched images' own bytes, taken from their shard tars
    images = wd / "results/paper/webscale/sd14_laion_a6/match_images"
    assert (images / "000000001.jpg").read_bytes() == (root / "1.jpg").read_bytes()
    assert all((wd / f).stat().st_size > 10_000 for f in figures)
    shards = pd.read_csv(wd / "results/paper/webscale/sd14_laion_a6/shards.csv")
    assert shards[["shard", "count", "successes", "failed_to_download"]].values.tolist() == [
        [0, 3, 3, 0],
        [1, 3, 2, 1],
        [2, 2, 2, 0],
    ]
    # opting in to missing shards or changing fetch settings re-downloads and re-embeds nothing
    paper_config["webscale"]["searches"][0]["allow_missing_shards"] = True
    paper_config["webscale"]["collections"]["laion_a6"]["download"] = {"threads": 2, "timeout": 30}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(paper_config))
    proc = snakemake(
        [*args, "--replace-workflow-config", "-n", "--allowed-rules", *rules, "--", target], cwd=workflow_copy
    )
    assert job_counts(proc.stdout) == {"merge_search": 1, "webscale_tables": 1}, proc.stdout[-3000:]


def test_img2dataset_shards_on_disk_are_searched_without_download(tmp_path, workflow_copy, paper_config):
    """A collection whose shards img2dataset already wrote (on_disk): no download job, one
    register_shard per img2dataset shard (each parquet cut on its own), and the planted copies are
    found at their collection rows; the gallery shows the on-disk images' own bytes."""
    parquets = []
    for name, rows in (("a", range(0, 5)), ("b", range(5, 9))):
        pd.DataFrame(
            {"URL": [f"http://web/{i}.jpg" for i in rows], "TEXT": [f"t{i}" for i in rows]}
        ).to_parquet(tmp_path / f"{name}.parquet")
        parquets.append(tmp_path / f"{name}.parquet")
    folder = tmp_path / "img2dataset_out"
    write_img2dataset_folder(parquets, folder, 3, lambda r: _jpeg(_texture(r)), failed={4})
    # rows 2 (shard 0) and 6 (shard 2: b.parquet's first), JPEG-decoded as the shards hold them
    pictures = {n: Image.open(io.BytesIO(_jpeg(_texture(i)))) for n, i in (("a.png", 2), ("b.png", 6))}
    collection = {"parquets": [str(tmp_path / "*.parquet")], "shard_size": 3, "on_disk": str(folder)}
    wd = _sd14_search_with_planted_generations(tmp_path, paper_config, collection, pictures)
    args = [
        "--cores",
        "1",
        *_in_dir(workflow_copy, wd, tmp_path / "config.yaml"),
        "--replace-workflow-config",
    ]
    rules = ["register_shard", "embed_shard", "search_shard", "merge_search", "webscale_figures"]
    lane = "results/paper/webscale/sd14_laion_a6"
    gallery = "results/paper/figures/webscale/sd14_laion_a6/gallery.png"
    proc = snakemake(
        [*args, "--allowed-rules", *rules, "--", f"{lane}/matches.parquet", gallery], cwd=workflow_copy
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    counts = job_counts_of_run(proc.stdout + proc.stderr)
    assert (
        counts["register_shard"] == counts["embed_shard"] == 4 and "download_shard" not in counts
    )  # 3+2, 3+1
    top1 = pd.read_parquet(wd / lane / "matches.parquet").query("rank == 0").set_index("generation")
    assert top1.loc[["a.png", "b.png"], ["index", "shard", "url"]].values.tolist() == [
        [2, 0, "http://web/2.jpg"],
        [6, 2, "http://web/6.jpg"],
    ]
    assert (top1["similarity"] > 0.9999).all()
    shards = pd.read_csv(wd / lane / "shards.csv")
    assert shards[["shard", "count", "successes"]].values.tolist() == [
        [0, 3, 3],
        [1, 2, 1],
        [2, 3, 3],
        [3, 1, 1],
    ]
    shown = wd / lane / "match_images"
    assert (shown / "000000002.jpg").read_bytes() == _jpeg(
        _texture(2)
    )  # an on-disk image, renamed to its row
    assert not (wd / "resources/webscale/laion_a6/shards/00000.tar").exists()  # nothing copied


def _copy_of(picture: Image.Image, augmented: bool) -> Image.Image:
    """An exact copy, or a near-copy: brightness +5 %, JPEG quality 90."""
    if not augmented:
        return picture.copy()
    buf = io.BytesIO()
    ImageEnhance.Brightness(picture).enhance(1.05).save(buf, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# the micro study's web lane (tests/micro/config.yaml): 64 pictures, 4 shards of 16
LANE = "results/micro/webscale/micro_sd_web"
LANE_RULES = [
    "pretraining_web",
    "download_shard",
    "embed_shard",
    "search_shard",
    "merge_search",
    "approx_search",
]
LANE_TARGETS = [f"{LANE}/matches.parquet", f"{LANE}/approx_matches.parquet"]
WEB = "resources/webscale/micro_web/web"
# generation name: (picture, augmented); one per shard
PLANTED = {
    "exact_5.png": (5, False),
    "aug_20.png": (20, True),
    "exact_40.png": (40, False),
    "aug_63.png": (63, True),
}


def fake_micro_model(wd: Path) -> None:
    """micro_sd as built: the lane reads only its build_info.json (seed, options); nothing is trained."""
    model = wd / "resources/models/micro_sd"
    model.mkdir(parents=True)
    info = {"builder": "mini_sd", "seed": 0, "micro": True, "options": mini_options(True, {})}
    (model / "build_info.json").write_text(json.dumps(info))
    (wd / "resources/models/micro_sd.sha256").write_text("")


def plant_copies(wd: Path) -> None:
    """Generations of run base (micro_sd itself): PLANTED copies of web pictures and 4 noise images, with
    their pixel descriptors (the npz the lane searches with)."""
    gen_dir = wd / "results/micro/micro_shapes/generations/base/default"
    gen_dir.mkdir(parents=True)
    for name, (i, aug) in PLANTED.items():
        _copy_of(Image.open(wd / f"{WEB}/{i:05d}.png").convert("RGB"), aug).save(gen_dir / name)
    rng = np.random.default_rng(0)
    for j in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(gen_dir / f"noise_{j}.png")
    names = sorted(p.name for p in gen_dir.iterdir())
    emb = PixelEmbedder(8)
    out = wd / "results/micro/micro_shapes/embeddings/pixel/base/default.npz"
    write_embeddings(out, names, emb.embed([gen_dir / n for n in names]), emb.name, emb.preprocess)


def check_lane_results(wd: Path, url_base: str) -> None:
    """Every planted copy at top-1 in its shard, exactly and approximately; download counts; recall."""
    out = wd / LANE
    shards = pd.read_csv(out / "shards.csv")
    assert shards[["shard", "count", "successes"]].values.tolist() == [[s, 16, 16] for s in range(4)]
    for table in ("matches", "approx_matches"):
        m = pd.read_parquet(out / f"{table}.parquet")
        top1 = m[m["rank"] == 0].set_index("generation")
        found = top1.loc[list(PLANTED), ["index", "shard"]].values.tolist()
        assert found == [[i, i // 16] for i, _ in PLANTED.values()], table
        assert top1.loc["exact_5.png", "url"] == f"{url_base}/00005.png"
        assert (top1.loc[["exact_5.png", "exact_40.png"], "similarity"] > 0.9999).all()
    recall = json.loads((out / "approx_recall.json").read_text())
    assert recall["recall_queries"] == 8 and recall["n_indexed"] == 64 and recall["recall@1"] == 1.0, recall
    # the settings were chosen for the config's recall target (tests/micro/config.yaml): met, and said
    assert recall["recall_target"] == 0.99 and recall["below_target"] is False and recall["recall@k"] >= 0.99
    assert recall["missing_shards"] == [] and recall["tuning"][0] == {**recall["tuning"][0], "nprobe": 1}
    approx = pd.read_parquet(out / "approx_matches.parquet")
    assert set(approx["nprobe"]) == {recall["nprobe"]} and set(approx["missing_shards"]) == {""}


def test_mini_lane_finds_planted_copies_of_its_pretraining_pictures_over_http(tmp_path, workflow_copy):
    """The micro study's lane for real: micro_sd's 64 pretraining pictures are its web, served on
    127.0.0.1, 4 shards of 16 downloaded, embedded and searched. Generations are exact and augmented
    copies of pictures in each shard among fresh noise: each is found at top-1, in its shard, by the
    exact merge and by the approximate index, whose recall is written beside the results."""
    cfg = load_yaml(REPO / "tests/micro/config.yaml")
    wd = tmp_path / "wd"
    fake_micro_model(wd)
    args = [
        "--cores",
        "2",
        *_in_dir(workflow_copy, wd, tmp_path / "config.yaml"),
        "--replace-workflow-config",
    ]
    with serve_folder(wd / WEB) as base:
        cfg["webscale"]["collections"]["micro_web"]["web_url"] = base
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        only = ["--allowed-rules", "pretraining_web", "--"]
        proc = snakemake([*args, *only, "resources/webscale/micro_web/web.parquet"], cwd=workflow_copy)
        assert proc.returncode == 0, proc.stderr[-3000:]
        web = pd.read_parquet(wd / "resources/webscale/micro_web/web.parquet")
        assert len(web) == 64 and web["URL"][5] == f"{base}/00005.png"
        plant_copies(wd)
        proc = snakemake([*args, "--allowed-rules", *LANE_RULES, "--", *LANE_TARGETS], cwd=workflow_copy)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert job_counts_of_run(proc.stdout + proc.stderr) == {
        "download_shard": 4,
        "embed_shard": 4,
        "search_shard": 4,
        "merge_search": 1,
        "approx_search": 1,
    }
    check_lane_results(wd, base)
