"""Model families: tiny SDXL / SD3 / Turbo pipelines generate through the one generation code path."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffrep import families as F
from diffrep import generation as G
from diffrep import pipelines as P
from diffrep.tinyfamilies import build_tiny_family
from test_generation import Spy
from test_training import build_inputs

PRESET = {
    "mitigation": "gaussnoise",
    "lam": 0.1,
    "repeats": 4,
    "scheduler": "default",
    "guidance_scale": 3.0,
    "steps": 2,
    "negative_prompt": "blurry",
}
TURBO = {**PRESET, "mitigation": "none", "guidance_scale": 0.0, "steps": 1, "negative_prompt": ""}
# (folder, family, distilled, preset, pipeline class, scheduler after the preset)
CASES = {
    "sdxl": ("sdxl", False, PRESET, "StableDiffusionXLPipeline", "EulerDiscreteScheduler"),
    "sdxl_turbo": ("sdxl", True, TURBO, "StableDiffusionXLPipeline", "EulerDiscreteScheduler"),
    "sd_turbo": ("sd", True, TURBO, "StableDiffusionPipeline", "EulerDiscreteScheduler"),
    "sd3": (
        "sd3",
        False,
        {**PRESET, "scheduler": "flow_match_euler"},
        "StableDiffusion3Pipeline",
        "FlowMatchEulerDiscreteScheduler",
    ),
    "sd35_turbo": (
        "sd3",
        True,
        {**TURBO, "steps": 2, "scheduler": "flow_match_heun"},
        "StableDiffusion3Pipeline",
        "FlowMatchHeunDiscreteScheduler",
    ),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.set_num_threads(1)
    data = build_inputs(tmp_path_factory.mktemp("fam_inputs"), pipeline=False)
    words = [c for v in data["captions"].values() for c in v]
    for name, (family, distilled, *_rest) in CASES.items():
        # SD 3.5 Medium's tiny twin has T5, the Turbo one the documented subset without it
        build_tiny_family(data["root"] / name, family, words, seed=0, distilled=distilled, t5=name == "sd3")
    return data


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def generate(inputs, model, out, preset, n=2, batch_size=2):
    root = inputs["root"]
    return G.generate(
        root / model,
        root / "captions.json",
        root / "dup_both.parquet",
        root / out,
        preset,
        n_images=n,
        resolution=32,
        seed=5,
        batch_size=batch_size,
        run=f"pretrained-{model}",
    )


@pytest.mark.parametrize("model", sorted(CASES))
def test_every_family_generates_from_its_tiny_local_pipeline(inputs, model):
    family, distilled, preset, cls, sched = CASES[model]
    index = json.loads((inputs["root"] / model / "model_index.json").read_text())
    assert index["_class_name"] == cls and F.family_of(inputs["root"] / model) == family
    assert not list((inputs["root"] / model).rglob("*.bin"))  # safetensors only
    out = generate(inputs, model, f"{model}_a", preset)
    info = json.loads((out / "generation_info.json").read_text())
    assert info["family"] == family and info["scheduler"] == sched
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["00000.png", "00001.png"]
    # seeded per image: batch 1 gives the same images (up to float rounding of batched kernels:
    # one grey level was seen on one pixel with SDXL-Turbo)
    again = generate(inputs, model, f"{model}_b", preset, batch_size=1)
    for a, b in zip(pngs, sorted(again.glob("*.png"))):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1, a.name
    assert pixels(pngs[0]).std() > 0 and np.abs(pixels(pngs[0]) - pixels(pngs[1])).mean() > 1
    assert len(pd.read_parquet(out / "prompts.parquet")) == 2


def test_sdxl_and_sd3_components(inputs):
    sdxl = P.load_pipeline(inputs["root"] / "sdxl", "cpu", torch.float32)
    assert type(sdxl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert sdxl.unet.config.addition_embed_type == "text_time"
    sd3 = P.load_pipeline(inputs["root"] / "sd3", "cpu", torch.float32)
    assert type(sd3.transformer).__name__ == "SD3Transformer2DModel"
    assert type(sd3.text_encoder_3).__name__ == "T5EncoderModel"
    ids = sd3.tokenizer_3("a red circle number 1").input_ids
    assert ids[-1] == 1 and 2 not in ids  # </s> appended; every caption word known
    subset = P.load_pipeline(inputs["root"] / "sd35_turbo", "cpu", torch.float32)
    assert subset.text_encoder_3 is None and subset.tokenizer_3 is None  # the documented subset
    turbo = P.load_pipeline(inputs["root"] / "sdxl_turbo", "cpu", torch.float32)
    assert turbo.scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("model", ["sdxl", "sd3"])
def test_gaussnoise_perturbs_every_embedding_pooled_included(inputs, model):
    spy = Spy(P.load_pipeline(inputs["root"] / model, "cpu", torch.float32))
    family, prompts, seeds = CASES[model][0], ["a red circle number 1", "shape 2 other"], [1, 2]
    G.generate_batch(spy, prompts, seeds, {**PRESET, "mitigation": "none"}, 32, "cpu", family)
    clean = spy.kw
    G.generate_batch(spy, prompts, seeds, {**PRESET, "lam": 0.5}, 32, "cpu", family)
    noisy = spy.kw
    assert set(P.EMBEDDING_ORDER) <= set(noisy)
    for key in P.EMBEDDING_ORDER:
        delta = noisy[key] - clean[key]
        assert abs(delta.std().item() - 0.5) < 0.1, key
    assert clean["pooled_prompt_embeds"].ndim == 2
    G.generate_batch(spy, prompts, seeds, TURBO, 32, "cpu", family)
    assert spy.kw["negative_prompt_embeds"] is None and spy.kw["negative_pooled_prompt_embeds"] is None


def test_family_of_names_the_file_and_the_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match=r"model_index.json: _class_name 'FluxPipeline' is not a supported"):
        F.family_of(tmp_path)


def test_flow_schedulers_by_name():
    import diffusers

    pipe = SimpleNamespace(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    G.set_scheduler(pipe, "flow_match_heun")
    assert (
        type(pipe.scheduler).__name__ == "FlowMatchHeunDiscreteScheduler"
        and pipe.scheduler.config.shift == 3.0
    )


def test_model_defaults_and_preset_problems():
    assert F.model_defaults({"family": "sdxl", "distilled": True}) == {
        "steps": 1,
        "guidance_scale": 0.0,
        "resolution": 512,
    }
    assert (
        F.model_defaults({"family": "sd3", "defaults": {"steps": 40, "guidance_scale": 4.5}})["steps"] == 40
    )
    assert F.preset_problems("sd35m", {"family": "sd3"}, {"scheduler": "flow_match_euler"}) == []
    [msg] = F.preset_problems("sd35m", {"family": "sd3"}, {"scheduler": "ddim"})
    assert (
        msg
        == "model 'sd35m' (family sd3) cannot use scheduler 'ddim'; allowed: default, flow_match_euler, flow_match_heun"
    )
    [msg] = F.preset_problems(
        "sdxl_turbo", {"family": "sdxl", "distilled": True}, {"negative_prompt": "blurry"}
    )
    assert "model 'sdxl_turbo' is distilled (Turbo)" in msg and "ignores negative prompts" in msg


# ---------------------------------------------------------------- config checks (before any job)


def checked(cfg):
    from diffrep import config as dconf
    from test_config import validated

    dconf.check(validated(cfg))


def test_paper_models_declare_their_families(paper_config):
    from test_config import validated

    models = validated(paper_config)["models"]
    assert models["sd21"]["family"] == "sd" and not models["sd21"]["distilled"]  # the schema's default
    assert {
        m: (models[m]["family"], models[m]["distilled"])
        for m in ("sd_turbo", "sdxl", "sdxl_turbo", "sd35_medium", "sd35_large_turbo")
    } == {
        "sd_turbo": ("sd", True),
        "sdxl": ("sdxl", False),
        "sdxl_turbo": ("sdxl", True),
        "sd35_medium": ("sd3", False),
        "sd35_large_turbo": ("sd3", True),
    }
    assert models["sd35_medium"]["variant"] is None  # the SD 3.5 transformer ships no fp16 variant


def test_a_scheduler_the_family_cannot_use_is_a_config_error(paper_config):
    from diffrep.config import ConfigError

    paper_config["sweeps"]["samplers"]["scheduler"] = ["ddim", "flow_match_euler"]
    with pytest.raises(ConfigError) as err:
        checked(paper_config)
    assert str(err.value) == (
        "generation preset 'samplers-06': model 'sd21' (family sd) cannot use scheduler 'flow_match_euler'; "
        "allowed: default, ddpm, ddim, pndm, dpmsolver++, euler, euler_ancestral, lms, heun, unipc"
    )


def test_a_negative_prompt_on_a_turbo_model_is_a_config_error(paper_config):
    from diffrep.config import ConfigError

    paper_config["base_model"] = "sd_turbo"
    checked(paper_config)  # SD-Turbo is an sd-family model: it can be finetuned and sampled
    paper_config["generation"]["presets"]["negative"] = {"negative_prompt": "blurry, low quality"}
    paper_config["experiments"][0]["generation"] = ["default", "negative"]
    with pytest.raises(
        ConfigError, match=r"generation preset 'negative': model 'sd_turbo' is distilled \(Turbo\)"
    ):
        checked(paper_config)


@pytest.mark.parametrize("model, family", [("sdxl", "sdxl"), ("sd35_medium", "sd3")])
def test_finetuning_a_family_the_trainer_cannot_train_is_a_config_error(paper_config, model, family):
    from diffrep.config import ConfigError

    paper_config["base_model"] = model
    with pytest.raises(ConfigError) as err:
        checked(paper_config)
    assert str(err.value).startswith(
        f"base_model {model!r} has family {family!r}, which the trainer cannot finetune; finetunable families: sd"
    )


def _turbo_with_negative_prompt(c):
    c["sweeps"]["samplers_sdxl_turbo"]["negative_prompt"] = ["", "blurry"]


def _sd35_with_a_unet_sampler(c):
    c["sweeps"]["samplers_sd35_medium"]["scheduler"] = ["flow_match_euler", "dpmsolver++"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c.update(base_model="sdxl_turbo"),
            "base_model 'sdxl_turbo' has family 'sdxl', which the trainer cannot finetune; finetunable families: sd",
        ),
        (_turbo_with_negative_prompt, "model 'sdxl_turbo' is distilled (Turbo)"),
        (
            _sd35_with_a_unet_sampler,
            "model 'sd35_medium' (family sd3) cannot use scheduler 'dpmsolver++'; allowed:",
        ),
    ],
)
def test_snakemake_stops_before_any_job_naming_the_model(
    tmp_path, workflow_copy, paper_config, edit, message
):
    from test_workflow import _run_with_config

    edit(paper_config)
    proc = _run_with_config(tmp_path, workflow_copy, paper_config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "Invalid configuration: " in out and message in out, out[-2000:]


# ---------------------------------------------------------------- pretrained runs and per-model sweeps


def test_pretrained_run_names_round_trip():
    from diffrep.config import Run

    run = Run.parse("pretrained-sdxl_turbo")
    assert run.is_pretrained and not run.is_base and run.model == "sdxl_turbo"
    assert run.name == "pretrained-sdxl_turbo" and Run.parse(run.name) == run
    assert Run.parse("base").is_base and not Run.parse("base").is_pretrained


def test_paper_sampler_comparison_block(paper_config):
    from diffrep import config as dconf
    from diffrep.config import Run
    from test_config import validated

    cfg = validated(paper_config)
    dconf.check(cfg)
    gens = dconf.generations(cfg)
    models = {r.model for _, r, _ in gens if r.is_pretrained}
    assert models == {"sd_turbo", "sdxl", "sdxl_turbo", "sd35_medium"}
    assert not [g for g in dconf.measured_generations(cfg) if g[1].is_pretrained]  # grids only, for now
    assert len(dconf.finetunes(cfg)) == 24  # pretrained runs are never finetuned
    presets = dconf.presets(cfg)
    sd35 = {p["scheduler"] for g, p in presets.items() if p.get("sweep") == "samplers_sd35_medium"}
    assert sd35 == {"flow_match_euler", "flow_match_heun"}
    turbo = [p for p in presets.values() if p.get("sweep") == "samplers_sdxl_turbo"]
    assert {(p["guidance_scale"], p["steps"], p["negative_prompt"]) for p in turbo} == {
        (0.0, 1, ""),
        (0.0, 4, ""),
    }
    sizes = {m: dconf.generation_resolution(cfg, Run(model=m)) for m in sorted(models)}
    assert sizes == {"sd35_medium": 1024, "sd_turbo": 512, "sdxl": 1024, "sdxl_turbo": 512}
    assert dconf.generation_resolution(cfg, Run()) == 256  # the base run: the training resolution


def test_a_sweep_without_guidance_or_steps_takes_its_models_defaults(paper_config):
    from diffrep import config as dconf
    from test_config import validated

    paper_config["sweeps"] = {
        "turbo": {"dataset": "laion10k", "runs": ["pretrained-sd35_large_turbo"], "scheduler": ["default"]}
    }
    cfg = validated(paper_config)
    dconf.check(cfg)
    [cell] = dconf.sweep_presets(cfg).values()
    assert (cell["guidance_scale"], cell["steps"]) == (0.0, 4)


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            {"runs": ["pretrained-nosuch"]},
            "sweeps.s.runs (pretrained-nosuch): model 'nosuch' is not defined in models",
        ),
        ({"runs": ["pretrained-clip"]}, "model 'clip' has kind 'clip', expected 'diffusers'"),
        (
            {"runs": ["pretrained-sd35_medium"], "scheduler": ["dpmsolver++"]},
            "generation preset 's-00': model 'sd35_medium' (family sd3) cannot use scheduler 'dpmsolver++'; "
            "allowed: default, flow_match_euler, flow_match_heun",
        ),
        (
            {"runs": ["pretrained-sdxl_turbo"], "negative_prompt": ["", "blurry"]},
            "generation preset 's-01': model 'sdxl_turbo' is distilled (Turbo)",
        ),
    ],
)
def test_pretrained_sweep_errors_name_the_model(paper_config, sweep, message):
    from diffrep.config import ConfigError

    paper_config["sweeps"] = {"s": {"dataset": "laion10k", **sweep}}
    with pytest.raises(ConfigError) as err:
        checked(paper_config)
    assert message in str(err.value)


def test_a_variant_fetch_loads_with_its_variant(tmp_path):
    """A model fetched with ``variant: fp16`` holds only ``*.fp16.safetensors``: loaded as that variant."""
    from diffrep.tinyfamilies import assemble, sdxl_components

    pipe = assemble("sdxl", sdxl_components(["a red circle"], seed=0))
    pipe.save_pretrained(tmp_path / "m", safe_serialization=True, variant="fp16")
    weights = sorted(
        p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*.safetensors")
    )
    assert weights and all(".fp16." in w for w in weights)
    assert P.weight_variant(tmp_path / "m") == "fp16"
    loaded = P.load_pipeline(tmp_path / "m", "cpu", torch.float32)
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    assert P.weight_variant(tmp_path / "nothing") is None


# ---------------------------------------------------------------- pretrained models in the matrix


def test_mini_measures_a_pretrained_turbo_model_and_draws_its_grid(mini_config):
    """The mini study generates from a tiny SDXL-Turbo (no finetune), measures it like the base run and
    draws its sampler grid: scheduler x steps at guidance 0, no negative prompt (distilled)."""
    from diffrep import config as dconf
    from diffrep.config import Run
    from test_config import validated

    cfg = validated(mini_config)
    dconf.check(cfg)
    pretrained = [(ds, r.name, g) for ds, r, g in dconf.measured_generations(cfg) if r.is_pretrained]
    assert pretrained == [("shapes", "pretrained-mini_sdxl_turbo", "turbo")]
    assert cfg["models"]["mini_sdxl_turbo"]["sources"][0]["options"] == {"family": "sdxl", "distilled": True}
    cells = [p for p in dconf.presets(cfg).values() if p.get("sweep") == "samplers_sdxl_turbo"]
    assert [(p["scheduler"], p["steps"]) for p in cells] == [
        ("default", 1),
        ("default", 2),
        ("default", 4),
        ("euler_ancestral", 1),
        ("euler_ancestral", 2),
        ("euler_ancestral", 4),
    ]
    assert {(p["guidance_scale"], p["negative_prompt"]) for p in cells} == {(0.0, "")}
    assert dconf.generation_resolution(cfg, Run(model="mini_sdxl_turbo")) == 32
    assert not [r for _, r in dconf.finetunes(cfg) if r.is_pretrained]


@pytest.mark.parametrize(
    "block, message",
    [
        (
            {"duplication": ["nodup"]},
            "experiments[0] (b): duplication is given but conditioning is empty; a finetune needs both",
        ),
        (
            {},
            "experiments[0] (b): the block makes no run; give duplication and conditioning, "
            "include_base: true or pretrained: [<model>, ...]",
        ),
        (
            {"pretrained": ["fid_inception_offline"]},
            "experiments[0] (b).pretrained: model 'fid_inception_offline' has kind 'fid_inception', expected 'diffusers'",
        ),
        (
            {"pretrained": ["nosuch"]},
            "experiments[0] (b).pretrained: model 'nosuch' is not defined in models",
        ),
    ],
)
def test_experiment_block_errors_name_the_block(mini_config, block, message):
    from diffrep.config import ConfigError

    mini_config["experiments"] = [{"name": "b", "datasets": ["shapes"], **block}]
    mini_config["sweeps"] = {}
    with pytest.raises(ConfigError) as err:
        checked(mini_config)
    assert str(err.value).startswith(message)


def test_a_pretrained_turbo_block_with_a_cfg_preset_and_negative_prompt_is_a_config_error(mini_config):
    from diffrep.config import ConfigError

    mini_config["generation"]["presets"]["turbo"]["negative_prompt"] = "blurry"
    with pytest.raises(ConfigError, match=r"generation preset 'turbo': model 'mini_sdxl_turbo' is distilled"):
        checked(mini_config)


def test_mini_dry_run_measures_the_pretrained_run(workflow_copy):
    """Generation, embedding, retrieval, FID and gallery of pretrained-mini_sdxl_turbo, its 6 grid cells,
    its grid, and its model manifest among the tables' inputs."""
    from conftest import snakemake

    out = snakemake(["-n", "--profile", "profiles/mini"], cwd=workflow_copy, check=True).stdout
    run = "pretrained-mini_sdxl_turbo"
    for path in (
        f"results/mini/shapes/generations/{run}/turbo",
        f"results/mini/shapes/embeddings/pixel/{run}/turbo.npz",
        f"results/mini/shapes/similarity/pixel/{run}/turbo.json",
        f"results/mini/shapes/fid/{run}/turbo.json",
        f"results/mini/figures/gallery/shapes/pixel/{run}/turbo.png",
        "results/mini/figures/grid/samplers_sdxl_turbo.png",
        "resources/models/mini_sdxl_turbo.sha256",
    ):
        assert path in out, path
    cells = set(re.findall(rf"generations/{run}/(samplers_sdxl_turbo-\d\d)\b", out))
    assert len(cells) == 6
    assert f"results/mini/shapes/models/{run}" not in out  # never finetuned
