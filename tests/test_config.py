"""The config: cross-key checks, the run matrix, run names and presets (diffrep.config)."""

import re

import pytest
import yaml

from diffrep import config as dconf
from diffrep.config import ConfigError, Run


def validated(cfg: dict) -> dict:
    """Validate like the workflow does (schema with defaults, then the derived defaults); return it."""
    from snakemake.utils import validate

    from conftest import REPO

    validate(cfg, str(REPO / "schemas/config.schema.yaml"))
    return dconf.fill_defaults(cfg)


@pytest.mark.parametrize(
    "key, value, wanted",
    [
        ("max_train_steps", "10", "integer"),
        ("learning_rate", "1e-5", "number"),
        ("center_crop", "false", "boolean"),
    ],
)
def test_a_number_or_boolean_given_as_a_string_is_explained(key, value, wanted):
    """What `--config training='{max_train_steps: 10}'` does: the schema error on the string gets the
    hint that --config passes nested values as strings, and what to do instead."""
    from snakemake.exceptions import WorkflowError

    from conftest import REPO, load_yaml

    cfg = load_yaml(REPO / "profiles/mini/study.yaml")
    cfg["training"][key] = value
    with pytest.raises(WorkflowError) as err:
        validated(cfg)
    hint = dconf.string_value_hint(err.value.__context__)
    assert hint.startswith(
        f"training.{key}: {value!r} is a string, where the schema asks for {wanted}. `snakemake --config` "
        "passes every value nested inside a mapping as a string"
    )
    assert "--configfile profiles/mini/study.yaml my-overrides.yaml" in hint


@pytest.mark.parametrize(
    "edit", [{"max_train_steps": "many"}, {"max_train_steps": 1.5}, {"learnig_rate": "1"}]
)
def test_other_schema_errors_get_no_string_hint(edit):
    from snakemake.exceptions import WorkflowError

    from conftest import REPO, load_yaml

    cfg = load_yaml(REPO / "profiles/mini/study.yaml")
    cfg["training"].update(edit)
    with pytest.raises(WorkflowError) as err:
        validated(cfg)
    assert dconf.string_value_hint(err.value.__context__) is None


def test_run_names_round_trip():
    run = Run("dup_both", "instancelevel_blip", "allcaps")
    assert run.name == "dup_both.instancelevel_blip.allcaps"
    assert Run.parse(run.name) == run
    assert Run.parse("base").is_base and Run().name == "base"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("dup_bth.nolevel.none", "unknown duplication 'dup_bth'; allowed: nodup, dup_both, dup_image"),
        ("nodup.level.none", "unknown conditioning 'level'"),
        ("nodup.nolevel.allcap", "unknown train mitigation 'allcap'"),
        ("nodup.nolevel", "expected 'base' or"),
    ],
)
def test_run_parse_names_the_bad_part(name, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        Run.parse(name)


def test_paper_matrix(paper_config):
    cfg = validated(paper_config)
    dconf.check(cfg)
    finetunes = dconf.finetunes(cfg)
    # duplication_laion 3x2 + single caption 2 + imagenette 2x3 + train mitigations 2x5
    assert len(finetunes) == 24
    names = {(ds, r.name) for ds, r in finetunes}
    assert ("laion10k", "dup_image.instancelevel_blip.gaussnoise") in names
    assert ("imagenette", "dup_both.classlevel.none") in names
    assert not any(r.mitigation != "none" and r.conditioning != "instancelevel_blip" for _, r in finetunes)
    gens = dconf.generations(cfg)
    assert ("laion10k", Run(), "default") in gens
    assert ("laion10k", Run("dup_both", "instancelevel_blip", "none"), "rand_word_repeat") in gens
    # sweep cells are generated but not measured: 3 schedulers x 3 CFG x 2 steps on 2 runs
    sweep = [g for g in gens if g[2].startswith("samplers-")]
    assert len(sweep) == 3 * 3 * 2 * 2
    assert not set(sweep) & set(dconf.measured_generations(cfg))


def test_presets_fill_defaults(paper_config):
    cfg = validated(paper_config)
    presets = dconf.presets(cfg)
    assert presets["default"] == dconf.PRESET_DEFAULTS
    assert presets["gaussnoise"]["lam"] == 0.1 and presets["gaussnoise"]["steps"] == 50
    assert presets["samplers-00"]["scheduler"] == "ddim" and presets["samplers-00"]["n_images"] == 4


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["experiments"][0].update(conditioning=["classlevel"]),
            "conditioning 'classlevel' needs class labels, but dataset 'laion10k' has has_classes: false",
        ),
        (
            lambda c: c["experiments"][3].update(conditioning=["instancelevel_random"]),
            "upstream applies train-time mitigations to instancelevel_blip captions only",
        ),
        (
            lambda c: c["experiments"][1].update(duplication=["dup_image"]),
            "dup_image equals dup_both",
        ),
        (
            lambda c: c["experiments"][0].update(generation=["nosuchpreset"]),
            "generation preset 'nosuchpreset' is not defined in generation.presets; defined: attention_rescale, default",
        ),
        (
            lambda c: c["experiments"][0].update(datasets=["laion"]),
            "dataset 'laion' is not defined in datasets; defined: imagenette, laion10k",
        ),
        (lambda c: c.update(base_model="sscd_disc_large"), "has kind 'sscd', expected 'diffusers'"),
        (
            lambda c: c["embedders"]["sscd_large"].update(model="nope"),
            "embedders.sscd_large.model: model 'nope'",
        ),
        (
            lambda c: c["sweeps"]["samplers"].update(runs=["nodup.nolevel.allcaps"]),
            "not in the experiments matrix",
        ),
        (lambda c: c["models"]["sd21"]["sources"][0].pop("repo"), "source type 'modelscope' needs 'repo'"),
        (
            lambda c: c["experiments"].append(dict(c["experiments"][0])),
            "block names must be unique; repeated: duplication_laion",
        ),
        (
            lambda c: c["similarity"].update(threshold="calibrated"),
            "similarity.threshold: 'calibrated' takes the threshold from the calibration; set calibration.enabled: true",
        ),
        (
            lambda c: c["webscale"]["searches"][0]["prompts"].update(
                source="prompt_file", prompt_file="nope"
            ),
            "webscale.searches[0] (sd14_laion_a6).prompts.prompt_file: 'nope' is not defined; defined: "
            "coco_captions, laion_nonmemorized_nemo, membench_sd2, webster500_nemo",
        ),
        (
            lambda c: c["webscale"]["searches"][0]["prompts"].update(dataset="laion10k"),
            "webscale.searches[0] (sd14_laion_a6).prompts: dataset has no effect with source 'collection' "
            "(it uses n_images, seed and preset)",
        ),
        (
            lambda c: c["webscale"]["searches"][0]["prompts"].update(
                source="dataset", dataset="laion", n_images=3
            ),
            "webscale.searches[0] (sd14_laion_a6).prompts.dataset: 'laion' is not defined",
        ),
    ],
)
def test_impossible_combinations_are_named(paper_config, edit, message):
    edit(paper_config)
    cfg = validated(paper_config)
    with pytest.raises(ConfigError) as err:
        dconf.check(cfg)
    assert message in str(err.value)


def test_derive_seed_is_stable_and_separates_keys():
    assert dconf.derive_seed(0, "a", 1) == dconf.derive_seed(0, "a", 1)
    assert dconf.derive_seed(0, "a", 1) != dconf.derive_seed(0, "a", 2)
    assert dconf.derive_seed(0, "ab") != dconf.derive_seed(0, "a", "b")
    assert 0 <= dconf.derive_seed(123, "x") < 2**31


def test_canonical_sorts_mappings_keeps_lists():
    cfg = {"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": 0}
    out = dconf.canonical(cfg)
    assert list(out) == ["a", "b"] and list(out["b"]) == ["x", "y"]
    assert list(out["b"]["x"][0]) == ["c", "d"]
    assert cfg == out  # same content


def test_readme_explains_every_config_section():
    """The README's configuration table has a row for every top-level key of the schema."""
    from conftest import REPO

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert set(schema["properties"]) - named == set()


def test_study_names_a_variant_with_a_suffix_only(paper_config):
    from snakemake.exceptions import WorkflowError

    assert validated({**paper_config, "study": "mini-seed1"})["study"] == "mini-seed1"
    for bad in ("seed1", "mini seed1", "mini/../paper"):
        with pytest.raises(WorkflowError, match="does not match"):
            validated({**paper_config, "study": bad})


@pytest.mark.parametrize(
    "clipscore, model",
    [
        ({}, "clip"),
        ({"convention": "upstream"}, "clip_vit_b16"),
        ({"convention": "upstream", "model": "clip"}, "clip"),
    ],
)
def test_the_clip_model_follows_the_convention_unless_named(paper_config, clipscore, model):
    cfg = validated({**paper_config, "clipscore": clipscore})
    assert dconf.fill_defaults(cfg)["clipscore"]["model"] == model
    dconf.check(cfg)  # both models are defined in config.yaml


def test_sections_take_the_master_seed_unless_they_set_their_own(paper_config):
    cfg = validated({**paper_config, "seed": 7, "training": {**paper_config["training"], "seed": 3}})
    dconf.fill_defaults(cfg)
    assert (cfg["duplication"]["seed"], cfg["training"]["seed"], cfg["generation"]["seed"]) == (7, 3, 7)


def test_schema_enums_are_the_python_name_sets():
    """Each setting name set is defined once, in diffrep.config; the schema's enums repeat it exactly
    (order included), and the scheduler table of the generation code covers the same names."""
    from conftest import REPO
    from diffrep.families import FLOW_SCHEDULERS
    from diffrep.generation import SCHEDULERS as SCHEDULER_CLASSES

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    defs, preset = schema["$defs"], schema["$defs"]["preset"]["properties"]
    assert defs["duplication"]["enum"] == list(dconf.DUPLICATIONS)
    assert defs["conditioning"]["enum"] == list(dconf.CONDITIONINGS)
    assert defs["train_mitigation"]["enum"] == list(dconf.TRAIN_MITIGATIONS)
    assert preset["mitigation"]["enum"] == list(dconf.INFERENCE_MITIGATIONS)
    assert preset["scheduler"]["enum"] == list(dconf.SCHEDULERS)
    assert ["default", *SCHEDULER_CLASSES, *FLOW_SCHEDULERS] == list(dconf.SCHEDULERS)


def test_a_search_prompted_by_a_prompt_file_must_name_it(paper_config):
    from snakemake.exceptions import WorkflowError

    paper_config["webscale"]["searches"][0]["prompts"] = {"source": "prompt_file"}
    with pytest.raises(WorkflowError, match="'prompt_file' is a required property"):
        validated(paper_config)


def test_searches_prompted_from_their_collection_add_no_dataset_run(paper_config):
    """The paper's SD 1.4 search samples LAION-A 6+'s captions: no laion10k run of pretrained-sd14
    (its generations are the search's own); prompted by laion10k's captions, the run is there."""
    runs = {(ds, r.name) for ds, r in dconf.runs(validated(paper_config))}
    assert ("laion10k", "pretrained-sd14") not in runs
    paper_config["webscale"]["searches"][0]["prompts"] = {"dataset": "laion10k"}
    runs = {(ds, r.name) for ds, r in dconf.runs(validated(paper_config))}
    assert ("laion10k", "pretrained-sd14") in runs
