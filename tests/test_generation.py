"""Generation: seeded prompts and images (same across runs and batch sizes), mitigations, resume."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from diffrep import generation as G
from test_training import build_inputs

PRESET = {
    "mitigation": "gaussnoise",
    "lam": 0.1,
    "repeats": 4,
    "scheduler": "euler_ancestral",
    "guidance_scale": 3.0,
    "steps": 3,
    "negative_prompt": "blurry",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.set_num_threads(1)
    return build_inputs(tmp_path_factory.mktemp("gen_inputs"))


def run(inputs, out, preset=PRESET, batch_size=4, n=6, seed=11):
    root = inputs["root"]
    return G.generate(
        root / "base",
        root / "captions.json",
        root / "dup_both.parquet",
        root / out,
        preset,
        n_images=n,
        resolution=32,
        seed=seed,
        batch_size=batch_size,
        run="base",
    )


def pngs(path):
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.png"))}


def test_same_seed_same_images_twice_and_across_batch_sizes(inputs):
    a, b, c = run(inputs, "a", batch_size=4), run(inputs, "b", batch_size=4), run(inputs, "c", batch_size=5)
    assert list(pngs(a)) == [f"{i:05d}.png" for i in range(6)]
    assert pngs(a) == pngs(b) == pngs(c)  # byte-identical PNGs
    d = run(inputs, "d", seed=12)
    assert pngs(d) != pngs(a)
    info = json.loads((a / "generation_info.json").read_text())
    assert info["scheduler"] == "EulerAncestralDiscreteScheduler" and info["n_images"] == 6
    assert info["resolution"] == 32 and info["dtype"] == "float32"
    assert not (a.parent / ".a.partial").exists()


def test_prompts_table(inputs):
    out = run(inputs, "words", preset={**PRESET, "mitigation": "rand_word_repeat"}, n=20)
    t = pd.read_parquet(out / "prompts.parquet")
    assert list(t.columns) == [
        "index",
        "file",
        "source_id",
        "duplicated",
        "dup_set",
        "prompt",
        "prompt_used",
        "seed",
    ]
    caps, plan = inputs["captions"], pd.read_parquet(inputs["root"] / "dup_both.parquet")
    chosen = np.random.default_rng(11).choice(len(plan), 20, replace=True)  # upstream's draw, seeded
    assert t["source_id"].tolist() == [plan["id"][j] for j in chosen]
    assert t["prompt"].tolist() == [caps[s][0] for s in t["source_id"]]
    assert t["duplicated"].tolist() == [s == "img0" for s in t["source_id"]]
    assert t["seed"].tolist() == [G.image_seed(11, i) for i in range(20)]
    for p, used in zip(t["prompt"], t["prompt_used"]):
        words = used.split(" ")
        assert len(words) == len(p.split(" ")) + 4 and set(words) == set(p.split(" "))


def test_killed_job_resumes_to_the_same_complete_set(inputs, monkeypatch):
    clean = run(inputs, "clean", batch_size=2)
    real, calls = G.generate_batch, []

    def dies_on_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(G, "generate_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, "resumed", batch_size=2)
    root = inputs["root"]
    assert not (root / "resumed").exists()
    assert sorted(p.name for p in (root / ".resumed.partial").glob("*.png")) == [
        "00000.png",
        "00001.png",
        "00002.png",
        "00003.png",
    ]
    monkeypatch.setattr(G, "generate_batch", real)
    calls.clear()
    out = run(inputs, "resumed", batch_size=2)
    assert pngs(out) == pngs(clean)
    assert pd.read_parquet(out / "prompts.parquet").equals(pd.read_parquet(clean / "prompts.parquet"))


class Spy:
    """Stands in for the pipeline: real encode_prompt, records the call's keyword arguments."""

    def __init__(self, pipe):
        self.pipe, self.kw = pipe, None

    def encode_prompt(self, *a, **k):
        return self.pipe.encode_prompt(*a, **k)

    def __call__(self, **kw):
        self.kw = kw
        return SimpleNamespace(images=[])


def test_gaussnoise_perturbs_both_cfg_halves_by_lambda(inputs):
    pipe = G.load_pipeline(inputs["root"] / "base", "cpu", torch.float32)
    spy = Spy(pipe)
    prompts, seeds = ["a red circle number 1", "shape 2 other"], [1, 2]
    G.generate_batch(spy, prompts, seeds, {**PRESET, "mitigation": "none"}, 32, "cpu")
    clean = spy.kw
    G.generate_batch(spy, prompts, seeds, {**PRESET, "lam": 0.5}, 32, "cpu")
    noisy = spy.kw
    for key in ("prompt_embeds", "negative_prompt_embeds"):
        delta = noisy[key] - clean[key]
        assert abs(delta.std().item() - 0.5) < 0.05, key
    assert noisy["generator"][0].initial_seed() == 1 and noisy["guidance_scale"] == 3.0
    G.generate_batch(spy, prompts, seeds, {**PRESET, "guidance_scale": 1.0}, 32, "cpu")
    assert spy.kw["negative_prompt_embeds"] is None  # no CFG: no unconditional half


@pytest.mark.parametrize("name", sorted(G.SCHEDULERS))
def test_schedulers_by_name(name):
    import diffusers

    pipe = SimpleNamespace(scheduler=diffusers.DDIMScheduler())
    G.set_scheduler(pipe, name)
    assert type(pipe.scheduler).__name__ == G.SCHEDULERS[name][0]
    if name == "dpmsolver++":
        assert pipe.scheduler.config.algorithm_type == "dpmsolver++"


def test_unknown_scheduler_is_an_error():
    with pytest.raises(ValueError, match="scheduler 'bogus'; allowed: default, ddpm"):
        G.set_scheduler(SimpleNamespace(scheduler=None), "bogus")
