"""A fixed validation prompt set: two models on the same prompts and seeds, side by side.

The prompts are the lines of a file (``--prompts``) or, by default, caption [0] of the dataset's
first ``n`` training images (metadata order); prompt ``i`` always uses generator seed ``i``. Each
image gets its top-1 training match (the same faiss index as try-a-prompt) and, where the study's
CLIP model is there and CLIP score is on, its CLIP score against the prompt.
"""

from __future__ import annotations

import time
from pathlib import Path

from diffrep.app import adapter
from diffrep.app.results import StudyError
from diffrep.app.tryprompt import Engine, InputError, check_prompt

DEFAULT_N = 4


def read_prompt_file(path: Path) -> list[str]:
    """Non-empty lines of a prompt file, each checked like a typed prompt."""
    if not Path(path).is_file():
        raise InputError(f"validation prompt file {path} does not exist")
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"validation prompt file {path} has no prompt (one per line)")
    return [check_prompt(p) for p in prompts]


def default_prompts(engine: Engine, dataset: str, n: int = DEFAULT_N) -> list[str]:
    """Caption [0] of the dataset's first n training images."""
    import pandas as pd

    path = engine.study.resources / "data" / dataset / "metadata.parquet"
    if not path.is_file():
        raise StudyError(f"{path} is missing: prepare the dataset first")
    captions = pd.read_parquet(path, columns=["captions"])["captions"]
    prompts = [str(c[0]) for c in captions if c is not None and len(c)][:n]
    if not prompts:
        raise StudyError(f"{path}: no image has a caption; pass --prompts with a prompt file")
    return prompts


def run_model(
    engine: Engine, dataset: str, run: str, settings: dict, embedder: str, prompts: list[str]
) -> list[dict]:
    """One row per prompt: image file (in the cache), top-1 training match and similarity, CLIP score."""
    model_dir = engine.study.model_dir(dataset, run)
    seeds = list(range(len(prompts)))
    with engine.lock:
        ids, index = engine.index(dataset, embedder)
        emb = engine.embedder(embedder)
        pipe = engine.pipeline(model_dir)
        images, _ = adapter.generate_images(
            pipe, prompts, seeds, settings, engine.resolution(), engine.device
        )
        files = [engine.new_image_path() for _ in images]
        for image, f in zip(images, files):
            image.save(f)
        sims, rows = adapter.search(index, adapter.embed(emb, files), 1)
        if engine.clip is None:
            engine.clip = (
                adapter.clip_model(engine.study.config or {}, engine.study.resources, engine.device) or False
            )
        clip = (
            adapter.clip_scores(engine.clip, images, prompts, engine.device)
            if engine.clip
            else [None] * len(images)
        )
    return [
        {
            "image": f.name,
            "seed": s,
            "train_id": ids[r[0]] if r[0] >= 0 else None,
            "similarity": float(v[0]),
            "clip": c,
        }
        for f, s, r, v, c in zip(files, seeds, rows, sims, clip)
    ]


def compare(engine: Engine, dataset: str, runs: list[str], preset: str, embedder: str, prompts=None) -> dict:
    """The validation set through each of `runs` (one or two models); a dict for the page."""
    runs = [r for r in runs if r]
    if not runs:
        raise InputError("Pick a model.")
    if dataset not in engine.study.datasets():
        raise StudyError(f"dataset {dataset!r} has no results")
    settings = engine.preset(preset)
    prompts = prompts or default_prompts(engine, dataset)
    start = time.perf_counter()
    results = {run: run_model(engine, dataset, run, settings, embedder, prompts) for run in runs}
    threshold = float(((engine.study.config or {}).get("similarity") or {}).get("threshold", 0.5))
    return {
        "prompts": prompts,
        "results": results,
        "threshold": threshold,
        "seconds": round(time.perf_counter() - start, 2),
    }
