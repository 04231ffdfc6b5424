"""prepare_dataset: upstream's folder layouts, build sources, URL lists (local server), pins."""

import functools
import http.server
import json
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import diffrep.builders
from diffrep.checksums import read_manifest, sha256_file
from diffrep.datasets import DatasetError, prepare_dataset, read_metadata
from diffrep.images import BadImageError


def picture(path, seed, size=72, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def outputs(tmp_path, name="ds"):
    root = tmp_path / "resources/data" / name
    return dict(
        images_dir=root / "images",
        metadata=root / "metadata.parquet",
        manifest=root / "images.sha256",
        report=root / "report.json",
    )


def laion_folder(tmp_path, n=4):
    """Upstream's LAION-10k layout: images in a sub-folder, captions keyed by absolute paths."""
    folder = tmp_path / "laion_10k"
    caps = {}
    for i in range(n):
        picture(folder / "train" / f"{i:05d}.jpg", i)
        caps[f"/fs/cml/laion_10k/train/{i:05d}.jpg"] = [f"original caption {i}"] + [
            f"blip {i}.{j}" for j in range(20)
        ]
    (folder / "laion_combined_captions.json").write_text(json.dumps(caps))
    return folder


def laion_cfg(folder, **extra):
    return {
        "source": {
            "type": "folder",
            "path": str(folder),
            "layout": "laion",
            "captions_file": "laion_combined_captions.json",
        },
        "bad_images": "fail",
        "min_size": 64,
        "max_pixels": 100_000_000,
        **extra,
    }


def test_laion_layout(tmp_path):
    out = outputs(tmp_path)
    rep = prepare_dataset("ds", laion_cfg(laion_folder(tmp_path)), **out)
    meta = read_metadata(out["metadata"])
    assert list(meta["id"]) == ["00000", "00001", "00002", "00003"]
    assert list(meta.columns) == ["id", "file", "class", "captions", "width", "height", "sha256", "source"]
    assert meta["captions"][2][0] == "original caption 2" and len(meta["captions"][2]) == 21
    assert meta["class"].isna().all() and (meta["width"] == 72).all()
    src = tmp_path / "laion_10k/train/00001.jpg"
    assert (out["images_dir"] / "00001.jpg").read_bytes() == src.read_bytes()  # original bytes
    assert meta["sha256"][1] == sha256_file(src)
    assert read_manifest(out["manifest"])["images/00001.jpg"] == sha256_file(src)
    assert rep == json.loads(out["report"].read_text())
    assert rep["n_input"] == 4 and rep["n_kept"] == 4 and rep["dropped"] == [] and rep["bad_images"] == "fail"


def test_imagefolder_layout_names_imagenette_classes(tmp_path):
    folder = tmp_path / "imagenette2/train"
    for wnid in ("n01440764", "n03028079"):
        for i in range(2):
            picture(folder / wnid / f"{wnid}_{i}.JPEG", i, fmt="JPEG")
    out = outputs(tmp_path)
    cfg = {"source": {"type": "folder", "path": str(folder), "layout": "imagefolder"}, "has_classes": True}
    prepare_dataset("ds", cfg, **out)
    meta = read_metadata(out["metadata"])
    assert dict(zip(meta["id"], meta["class"])) == {
        "n01440764_0": "tench",
        "n01440764_1": "tench",
        "n03028079_0": "church",
        "n03028079_1": "church",
    }
    assert all(c == [] for c in meta["captions"]) and meta["file"][0] == "n01440764_0.jpg"
    other = tmp_path / "plain"
    picture(other / "cat" / "a.png", 0)
    picture(other / "dog" / "a.png", 1)  # same stem in two classes: ids from the relative path
    prepare_dataset(
        "p",
        {"source": {"type": "folder", "path": str(other), "layout": "imagefolder"}},
        **outputs(tmp_path, "p"),
    )
    meta = read_metadata(outputs(tmp_path, "p")["metadata"])
    assert list(meta["id"]) == ["cat__a", "dog__a"] and list(meta["class"]) == ["cat", "dog"]


def test_build_source_uses_the_registered_builder(tmp_path, monkeypatch):
    calls = []

    def fake_builder(staging_dir, seed, n=3):
        calls.append((seed, n))
        staging_dir.mkdir()
        for i in range(n):
            picture(staging_dir / f"toy_{i}.png", seed + i)
        (staging_dir / "captions.json").write_text(
            json.dumps({f"toy_{i}.png": [f"toy {i}", "a toy"] for i in range(n)})
        )
        (staging_dir / "classes.json").write_text(
            json.dumps({f"toy_{i}.png": ["odd", "even"][i % 2 == 0] for i in range(n)})
        )

    monkeypatch.setattr(diffrep.builders, "dataset_builder", lambda name: {"toy": fake_builder}[name])
    out = outputs(tmp_path)
    cfg = {"source": {"type": "build", "builder": "toy", "options": {"n": 3}}, "has_classes": True}
    prepare_dataset("ds", cfg, seed=7, **out)
    assert calls == [(7, 3)]
    meta = read_metadata(out["metadata"])
    assert list(meta["class"]) == ["even", "odd", "even"]
    assert meta["captions"][1] == ["toy 1", "a toy"] and meta["source"][0] == "build:toy/toy_0.png"
    data = tmp_path / "resources/data"
    assert not list(data.glob(".*")) and not list((data / "ds").glob(".*"))  # no temporary left behind


def test_bad_image_fail_names_the_file_and_writes_nothing(tmp_path):
    folder = laion_folder(tmp_path)
    (folder / "train/00002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = outputs(tmp_path)
    with pytest.raises(BadImageError, match=r"laion_10k/train/00002\.jpg: corrupt"):
        prepare_dataset("ds", laion_cfg(folder), **out)
    assert not any(p.exists() for p in out.values())
    assert not list((tmp_path / "resources/data").rglob(".*"))  # temporaries removed too


def test_bad_images_drop_lists_every_one(tmp_path):
    folder = laion_folder(tmp_path, n=6)
    (folder / "train/00001.jpg").write_bytes(b"")
    Image.new("L", (80, 80)).save(folder / "train/00002.jpg", format="JPEG")
    picture(folder / "train/00003.jpg", 3, size=20, fmt="JPEG")
    picture(folder / "train/extra.jpg", 9)  # an image the caption file does not know
    out = outputs(tmp_path)
    rep = prepare_dataset("ds", laion_cfg(folder, bad_images="drop"), **out)
    reasons = {d["source"].split("/")[-1]: d["reason"] for d in rep["dropped"]}
    assert reasons == {
        "00001.jpg": "zero-byte file",
        "00002.jpg": "non-RGB: mode L (grayscale)",
        "00003.jpg": "too small: 20x20 px (min_size 64)",
        "extra.jpg": "no captions in laion_combined_captions.json",
    }
    assert rep["n_input"] == 7 and rep["n_kept"] == 3 and rep["bad_images"] == "drop"
    assert list(read_metadata(out["metadata"])["id"]) == ["00000", "00004", "00005"]


def test_config_pin_detects_a_changed_image(tmp_path):
    folder = laion_folder(tmp_path)
    out = outputs(tmp_path)
    prepare_dataset("ds", laion_cfg(folder), **out)
    pin = read_manifest(out["manifest"])
    prepare_dataset("ds", laion_cfg(folder, sha256=pin), **out)  # same data: passes
    picture(folder / "train/00003.jpg", 99)
    with pytest.raises(
        DatasetError,
        match=r"(?s)differs from its pin \(config datasets.ds.sha256\).*"
        r"images/00003\.jpg: sha256 mismatch: expected [0-9a-f]{64}, actual [0-9a-f]{64}",
    ):
        prepare_dataset("ds", laion_cfg(folder, sha256=pin), **out)


# ------------------------------------------------------------------ URL lists, local server


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(3)
        return super().do_GET()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the client of /slow gave up (timeout): a broken pipe here is expected


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_list_with_dead_links(tmp_path, server, monkeypatch):
    root, base = server
    for i in range(3):
        picture(root / f"{i}.jpg", i, fmt="JPEG")
    picture(root / "slow.jpg", 5, fmt="JPEG")
    (root / "page.jpg").write_text("<html>moved</html>")
    rows = [
        (f"{base}/0.jpg", "zero"),
        (f"{base}/1.jpg", "one"),
        (f"{base}/missing.jpg", "dead"),
        (f"http://127.0.0.1:{_closed_port()}/x.jpg", "refused"),
        (f"{base}/slow.jpg", "slow"),
        (f"{base}/page.jpg", "html"),
        (f"{base}/2.jpg", "two"),
    ]
    table = tmp_path / "urls.parquet"
    pd.DataFrame(rows, columns=["url", "caption"]).to_parquet(table)
    import diffrep.imagefetch as fetch

    monkeypatch.setattr(fetch, "fetch_one", _short(fetch.fetch_one))
    out = outputs(tmp_path, "web")
    cfg = {"source": {"type": "urls", "path": str(table)}}
    rep = prepare_dataset("web", cfg, threads=4, **out)
    reasons = {f["url"].rsplit("/", 1)[-1]: f["reason"] for f in rep["failed_downloads"]}
    assert reasons["missing.jpg"] == "HTTP 404 File not found"
    assert reasons["x.jpg"].startswith("connection failed")
    assert reasons["slow.jpg"] == "timeout after 1.0 s"
    assert reasons["page.jpg"].startswith("not an image")
    assert len(reasons) == 4 and rep["n_input"] == 7 and rep["n_kept"] == 3
    meta = read_metadata(out["metadata"])
    assert list(meta["captions"]) == [["zero"], ["one"], ["two"]]
    assert list(meta["id"]) == ["000000", "000001", "000006"] and meta["source"][2] == f"{base}/2.jpg"
    # resumable: finished files stay in the cache and are not fetched again
    cache = tmp_path / "resources/data/.web.download"
    assert sorted(p.name for p in cache.iterdir()) == ["000000", "000001", "000006"]
    # pinned by the first fetch: a re-fetch whose bytes differ fails, naming the file
    assert (tmp_path / "resources/data/web.pinned.sha256").exists()
    (cache / "000001").unlink()
    picture(root / "1.jpg", 42, fmt="JPEG")
    with pytest.raises(
        DatasetError, match=r"(?s)web.pinned.sha256; delete it.*images/000001\.jpg: sha256 mismatch"
    ):
        prepare_dataset("web", cfg, threads=4, **out)


def _short(fn):
    def wrapped(url, dest, timeout=10.0, retries=1, backoff=0.5):
        return fn(url, dest, timeout=1.0, retries=0)

    return wrapped


def test_mini_dataset_builder_prepares(tmp_path):
    out = outputs(tmp_path, "micro")
    cfg = {
        "source": {"type": "build", "builder": "mini_dataset", "options": {"micro": True}},
        "has_classes": True,
        "min_size": 16,
    }
    rep = prepare_dataset("micro", cfg, seed=0, **out)
    meta = read_metadata(out["metadata"])
    assert rep["n_kept"] == len(meta) == 20 and meta["class"].notna().all()
    assert all(len(c) == 5 for c in meta["captions"])


# ------------------------------------------------------------------ the rules, in a workflow copy

DATA_TARGETS = [
    "resources/data/micro_shapes/images.sha256",
    "results/micro/micro_shapes/captions/instancelevel_blip.json",
    "results/micro/micro_shapes/duplication/nodup.parquet",
    "results/micro/micro_shapes/duplication/dup_both.parquet",
]


@pytest.mark.slow
def test_micro_data_rules_run_and_plans_repeat(tmp_path):
    from conftest import MICRO, copy_workflow, snakemake

    wf = copy_workflow(tmp_path)
    snakemake(["--cores", "2", *MICRO, *DATA_TARGETS], cwd=wf, check=True)
    meta = read_metadata(wf / "resources/data/micro_shapes/metadata.parquet")
    rep = json.loads((wf / "resources/data/micro_shapes/report.json").read_text())
    assert rep["n_kept"] == len(meta) == 20 and rep["dropped"] == []
    caps = json.loads((wf / DATA_TARGETS[1]).read_text())
    assert caps["conditioning"] == "instancelevel_blip" and caps["variants"] == "dataset"
    assert [caps["captions"][i][0] for i in meta["id"]] == [c[0] for c in meta["captions"]]
    plan = pd.read_parquet(wf / DATA_TARGETS[3])
    assert list(plan["id"]) == list(meta["id"]) and plan["duplicated"].sum() == 1  # int(0.05 * 20)
    first = (wf / DATA_TARGETS[3]).read_bytes()
    snakemake(
        ["--cores", "2", *MICRO, *DATA_TARGETS[2:], "--forcerun", "duplication_plan"], cwd=wf, check=True
    )
    assert (wf / DATA_TARGETS[3]).read_bytes() == first


def test_img2dataset_engine_outputs_are_ingested(tmp_path, monkeypatch):
    """engine: img2dataset: a stand-in writes img2dataset's 'files' layout (shard folder + parquet)."""
    import sys
    import types

    src_img = picture(tmp_path / "src.jpg", 1, fmt="JPEG")

    def download(url_list, output_folder, save_additional_columns, **kw):
        assert kw["resize_mode"] == "no" and kw["disable_all_reencoding"] and not kw["enable_wandb"]
        rows = pd.read_parquet(url_list)
        out = __import__("pathlib").Path(output_folder) / "00000"
        out.mkdir(parents=True)
        (out / "000000000.jpg").write_bytes(src_img.read_bytes())
        pd.DataFrame(
            {
                "key": ["000000000", "000000001"],
                "status": ["success", "failed_to_download"],
                "error_message": [None, "HTTP Error 404: Not Found"],
                "diffrep_id": list(rows["diffrep_id"]),
            }
        ).to_parquet(out.parent / "00000.parquet")

    table = tmp_path / "urls.csv"
    pd.DataFrame({"url": ["http://a/1.jpg", "http://a/2.jpg"], "caption": ["one", "two"]}).to_csv(
        table, index=False
    )
    cfg = {"source": {"type": "urls", "path": str(table), "engine": "img2dataset"}}
    monkeypatch.setitem(sys.modules, "img2dataset", None)
    with pytest.raises(
        DatasetError, match=r"img2dataset is not installed here.*envs/optional/img2dataset\.yaml"
    ):
        prepare_dataset("web", cfg, **outputs(tmp_path, "web"))
    monkeypatch.setitem(sys.modules, "img2dataset", types.SimpleNamespace(download=download))
    out = outputs(tmp_path, "web")
    rep = prepare_dataset("web", cfg, **out)
    assert rep["failed_downloads"] == [
        {"url": "http://a/2.jpg", "reason": "img2dataset: HTTP Error 404: Not Found"}
    ]
    assert (out["images_dir"] / "000000.jpg").read_bytes() == src_img.read_bytes()
    assert list(read_metadata(out["metadata"])["captions"]) == [["one"]]


def test_non_rgb_convert_reencodes_and_lists(tmp_path):
    folder = laion_folder(tmp_path, n=4)
    Image.new("L", (80, 80), 200).save(folder / "train/00001.jpg", format="JPEG")
    Image.new("RGBA", (80, 80), (10, 20, 30, 0)).save(
        folder / "train/00002.jpg", format="PNG"
    )  # wrong suffix too
    Image.fromarray(np.full((80, 80), 0x3412, np.uint16)).save(folder / "train/00003.jpg", format="PNG")
    out = outputs(tmp_path)
    rep = prepare_dataset("ds", laion_cfg(folder, non_rgb="convert"), **out)
    assert {c["source"].split("/")[-1]: c["reason"].split(" (")[0] for c in rep["converted"]} == {
        "00001.jpg": "non-RGB: mode L",
        "00002.jpg": "non-RGB: mode RGBA",
        "00003.jpg": "non-RGB: mode I;16",
    }
    assert rep["n_kept"] == 4 and rep["dropped"] == []
    meta = read_metadata(out["metadata"])
    assert list(meta["file"]) == ["00000.jpg", "00001.png", "00002.png", "00003.png"]
    for f in meta["file"]:
        with Image.open(out["images_dir"] / f) as im:
            assert im.mode == "RGB"
    with Image.open(out["images_dir"] / "00002.png") as im:
        assert im.getpixel((0, 0)) == (10, 20, 30)  # alpha dropped, as PIL's convert("RGB")
    with Image.open(out["images_dir"] / "00003.png") as im:
        assert im.getpixel((5, 5)) == (0x34, 0x34, 0x34)  # 16-bit scaled to 8-bit (high byte)


def test_missing_folder_says_where_to_put_the_data(tmp_path):
    cfg = laion_cfg(tmp_path / "data/laion_10k")
    with pytest.raises(
        DatasetError,
        match=r"dataset laion10k: .*data/laion_10k does not exist; put a folder in the laion layout there",
    ):
        prepare_dataset("laion10k", cfg, **outputs(tmp_path, "laion10k"))


def test_metadata_missing_column_or_duplicate_id_names_the_file(tmp_path):
    import pandas as pd

    from diffrep.datasets import DatasetError, read_metadata

    path = tmp_path / "metadata.parquet"
    pd.DataFrame({"id": ["a"], "file": ["a.png"]}).to_parquet(path)
    with pytest.raises(
        DatasetError, match=r"metadata\.parquet: metadata table lacks column\(s\) class, captions"
    ):
        read_metadata(path)
    row = {
        "id": "a",
        "file": "a.png",
        "class": None,
        "captions": [["x"]],
        "width": 1,
        "height": 1,
        "sha256": "0",
        "source": "s",
    }
    pd.DataFrame({k: [v] * 2 if k != "captions" else v * 2 for k, v in row.items()}).to_parquet(path)
    with pytest.raises(DatasetError, match="duplicated image id"):
        read_metadata(path)
