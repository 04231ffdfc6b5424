"""diffrep.app without a browser: input checks, host refusal, the results reader, the HTTP answers.

The results tree here is written by hand in the layout of docs/formats.md (no model needed); the
try-a-prompt path with a real model is tested in tests/test_app_browser.py on the micro study.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import test_clipscore
from app_server import get, serving
from diffrep.app.__main__ import check_host, find_config
from diffrep.app.results import Study, StudyError
from diffrep.app.server import make_app
from diffrep.app.tryprompt import (
    MAX_PROMPT_CHARS,
    Engine,
    InputError,
    check_cache_dir,
    check_prompt,
    parse_seed,
)

REPO = Path(__file__).resolve().parents[1]
tiny_clip = test_clipscore.tiny_clip  # the fixture: a tiny random CLIP folder
RUNS = {"base": [0.31, 0.42], "dup_both.instancelevel_blip.none": [0.91, 0.45]}


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def make_tree(root: Path) -> Path:
    """results/t/ds with two runs (top-1 similarities RUNS) and a 3-image dataset; returns results/."""
    data = root / "resources/data/ds"
    for i in range(3):
        _png(data / f"images/t{i}.png", 40 * i)
    pd.DataFrame({"id": [f"t{i}" for i in range(3)], "file": [f"t{i}.png" for i in range(3)]}).to_parquet(
        data / "metadata.parquet"
    )
    r = root / "results/t/ds"
    for run, sims in RUNS.items():
        gen = r / "generations" / run / "default"
        files = [f"{i:05d}.png" for i in range(len(sims))]
        for i, f in enumerate(files):
            _png(gen / f, 100 + i)
        pd.DataFrame({"file": files, "prompt_used": [f"prompt {i}" for i in range(len(sims))]}).to_parquet(
            gen / "prompts.parquet"
        )
        sim = r / "similarity/pixel" / run
        sim.mkdir(parents=True)
        rows = [
            {"generation": f, "rank": k, "train_id": f"t{k}", "similarity": s - 0.1 * k}
            for f, s in zip(files, sims)
            for k in range(2)
        ]
        pd.DataFrame(rows).to_parquet(sim / "default.parquet")
        (sim / "default.json").write_text(
            json.dumps({"n": len(sims), "mean": float(np.mean(sims)), "threshold": 0.5})
        )
    pd.DataFrame({"train_id": ["t0", "t1"], "match_id": ["t1", "t0"], "similarity": [0.2, 0.3]}).to_parquet(
        r / "similarity/pixel/train_baseline.parquet"
    )
    return root / "results"


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path)


def study_of(results: Path) -> Study:
    return Study(
        "t",
        results / "t",
        results.parent / "resources",
        {"base_model": "tiny", "similarity": {"top_k": 2}, "generation": {"presets": {"fast": {"steps": 2}}}},
    )


def test_prompt_and_seed_checks_say_what_is_wrong():
    with pytest.raises(InputError, match="empty"):
        check_prompt("   ")
    with pytest.raises(InputError, match=f"{MAX_PROMPT_CHARS + 1} characters; at most {MAX_PROMPT_CHARS}"):
        check_prompt("x" * (MAX_PROMPT_CHARS + 1))
    assert check_prompt("  a cat ") == "a cat"
    with pytest.raises(InputError, match="whole number, got '1.5'"):
        parse_seed("1.5")
    with pytest.raises(InputError, match="between 0 and"):
        parse_seed("-3")
    assert parse_seed(" 42 ") == 42


def test_host_defaults_to_loopback_and_warns_otherwise():
    assert check_host(None, 7860) == ("127.0.0.1", None)
    assert check_host("localhost", 7860)[1] is None
    assert check_host("::1", 7860)[1] is None
    host, warning = check_host("0.0.0.0", 8000)
    assert host == "0.0.0.0" and "no authentication" in warning and "0.0.0.0:8000" in warning


def test_cache_inside_results_is_refused(tmp_path):
    with pytest.raises(ValueError, match="never writes into results"):
        check_cache_dir(tmp_path / "results/mini/.cache", tmp_path / "results")
    assert check_cache_dir(tmp_path / "cache", tmp_path / "results") == (tmp_path / "cache").resolve()


def test_find_config_matches_the_study_name():
    assert find_config("mini", REPO) == REPO / "profiles/mini/study.yaml"
    assert find_config("micro", REPO) == REPO / "tests/micro/config.yaml"
    assert find_config("nosuchstudy", REPO) is None


def test_study_reader_lists_sorts_and_refuses_bad_names(tree):
    study = study_of(tree)
    assert study.choices()["run"] == ["base", "dup_both.instancelevel_blip.none"]
    sel = study.selection("ds", "dup_both.instancelevel_blip.none", "default", "pixel")
    assert [g["top1"] for g in study.gallery(sel)] == [0.91, 0.45]
    assert study.gallery(sel)[0]["prompt"] == "prompt 0"
    assert study.baseline("ds", "pixel").tolist() == [0.2, 0.3]
    with pytest.raises(StudyError, match="runs measured with this preset and embedder: base, dup_both"):
        study.selection("ds", "nodup.classlevel.none", "default", "pixel")
    with pytest.raises(StudyError, match="not a generation image name"):
        study.generation_image("ds", "base", "default", "../../../etc/passwd")
    with pytest.raises(StudyError, match="not a valid name"):
        study.selection("..", "base", "default", "pixel")
    with pytest.raises(StudyError, match="no training image with id 'zz'"):
        study.train_image("ds", "zz")


def test_missing_model_folder_names_the_target(tree):
    study = study_of(tree)
    with pytest.raises(StudyError, match=r"run `snakemake --profile profiles/t finetune_all` first"):
        study.model_dir("ds", "dup_both.instancelevel_blip.none")
    with pytest.raises(
        StudyError, match=r"resources/models/tiny\): run `snakemake --profile profiles/t models`"
    ):
        study.model_dir("ds", "base")


def _snapshot(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_http_answers_are_messages_never_tracebacks_and_write_nothing(tree, tmp_path):
    study = study_of(tree)
    before = _snapshot(tree)
    with serving(make_app(study, Engine(study, tmp_path / "cache"))) as url:
        status, html = get(url + "/")
        assert status == 200 and 'id="b-run"' in html and "dup_both.instancelevel_blip.none" in html
        status, frag = get(
            url + "/api/browse?dataset=ds&run=dup_both.instancelevel_blip.none&preset=default&embedder=pixel"
        )
        assert status == 200
        assert frag.index("0.91") < frag.index("replication threshold 0.5") < frag.index("prompt 1")
        assert get(url + "/media/gen/ds/base/default/00001.png")[0] == 200
        assert get(url + "/media/train/ds/t2")[0] == 200
        assert get(url + "/media/gen/ds/base/default/..%2F..%2Fprompts.parquet")[0] == 404
        cases = {
            '{"dataset": "ds", "run": "base", "preset": "default", "embedder": "pixel", "seed": "x1", "prompt": "a"}': "The seed must be a whole number, got &#x27;x1&#x27;.",
            '{"dataset": "ds", "run": "base", "preset": "default", "embedder": "pixel", "seed": "1", "prompt": ""}': "Type a prompt: it is empty.",
            '{"dataset": "ds", "run": "dup_both.instancelevel_blip.none", "preset": "default", "embedder": "pixel", '
            '"seed": "1", "prompt": "a cat"}': "Unknown preset &#x27;default&#x27;",
            '{"dataset": "ds", "run": "dup_both.instancelevel_blip.none", "preset": "fast", "embedder": "pixel", '
            '"seed": "1", "prompt": "a cat"}': "run `snakemake --profile profiles/t finetune_all` first",
            "not json": "The request body is not JSON.",
        }
        for body, expected in cases.items():
            status, frag = get(url + "/api/try", body.encode())
            assert status == 400 and expected in frag and "Traceback" not in frag, frag
    assert _snapshot(tree) == before


def test_study_without_results_says_so_in_the_page(tmp_path):
    study = Study("mini", tmp_path / "results/mini", tmp_path / "resources")
    with serving(make_app(study, Engine(study, tmp_path / "cache"))) as url:
        status, html = get(url + "/")
    assert status == 200 and "has no results yet" in html and "make mini" in html


def test_clip_score_of_the_validation_set_is_clipscores_definition(tmp_path, tiny_clip):
    from diffrep import clipscore
    from diffrep.app import adapter

    (tmp_path / "models").mkdir()
    (tmp_path / "models/tiny_clip").symlink_to(tiny_clip)
    on = {"clipscore": {"enabled": True, "model": "tiny_clip"}}
    assert (
        adapter.clip_model({"clipscore": {"enabled": False, "model": "tiny_clip"}}, tmp_path, "cpu") is None
    )
    assert adapter.clip_model({"clipscore": {"enabled": True, "model": "absent"}}, tmp_path, "cpu") is None
    clip = adapter.clip_model(on, tmp_path, "cpu")
    images = [Image.new("RGB", (32, 32), (200, 30 * i, 0)) for i in range(3)]
    prompts = ["a red square", "an orange square", "a yellow square"]
    cos = clipscore.cosines(*clip, images, prompts)
    assert adapter.clip_scores(clip, images, prompts, "cpu") == pytest.approx([100 * max(c, 0) for c in cos])


def test_without_a_config_try_a_prompt_says_how_to_give_one(tree, tmp_path):
    study = Study("t", tree / "t", tree.parent / "resources")
    with pytest.raises(StudyError, match="start the app with --config"):
        Engine(study, tmp_path / "cache").try_prompt("ds", "base", "default", "pixel", "1", "a cat")


def test_the_cache_keeps_the_newest_images(tree, tmp_path, monkeypatch):
    import os

    from diffrep.app import tryprompt

    monkeypatch.setattr(tryprompt, "MAX_CACHED_IMAGES", 3)
    engine = Engine(study_of(tree), tmp_path / "cache")
    engine.cache.mkdir()
    for i in range(5):
        (engine.cache / f"try-{i}.png").write_bytes(b"x")
        os.utime(engine.cache / f"try-{i}.png", (1000 + i, 1000 + i))
    new = engine.new_image_path()
    assert sorted(p.name for p in engine.cache.iterdir()) == ["try-3.png", "try-4.png"]
    assert new.parent == engine.cache and not new.exists()


def test_messages_name_the_command_that_runs_the_study(tmp_path):
    from diffrep.app.__main__ import snakemake_command

    assert (
        snakemake_command("mini", tmp_path / "profiles/mini/study.yaml", tmp_path)
        == "snakemake --profile profiles/mini"
    )
    assert snakemake_command("paper", tmp_path / "config.yaml", tmp_path) == "snakemake"
    assert (
        snakemake_command("micro", tmp_path / "tests/micro/config.yaml", tmp_path)
        == "snakemake --configfile tests/micro/config.yaml --replace-workflow-config"
    )
