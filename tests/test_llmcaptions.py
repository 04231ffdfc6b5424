"""LLM caption variants from a tiny locally built causal LM (random weights, local word tokenizer):
file format, N, seeding, errors, the caption file, and the llm_captions rule in the micro study."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from diffrep import llmcaptions as L
from diffrep.captions import make_captions
from diffrep.tinyllm import build_tiny_llm

META = pd.DataFrame(
    {
        "id": ["a", "b", "c"],
        "captions": [["a red circle in the center", "red round shape"], ["a blue square"], ["a green star"]],
    }
)
SETTINGS = {"n_variants": 3, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return build_tiny_llm(
        tmp_path_factory.mktemp("llm") / "m", seed=0, texts=["a red blue green circle square star"]
    )


def test_tiny_llm_is_a_safetensors_chat_model(llm):
    assert (llm / "model.safetensors").is_file() and not list(llm.rglob("*.bin"))
    tokenizer, model = L.load_llm(llm)
    prompt, chat = L.build_prompt(tokenizer, "a red circle")
    assert (
        chat and prompt.startswith("<s><user> Rewrite this image caption") and prompt.endswith("<assistant> ")
    )
    assert "Caption: a red circle" in prompt
    assert type(model).__name__ == "LlamaForCausalLM"


def test_n_variants_per_image_seeded_per_image(llm, tmp_path):
    table = L.llm_captions(META, llm, SETTINGS, seed=1, dataset="toy")
    assert list(table.columns) == ["id", "caption", "captions"]
    assert table["id"].tolist() == ["a", "b", "c"]
    assert table["caption"].tolist() == ["a red circle in the center", "a blue square", "a green star"]
    assert all(len(v) == 3 and all(x.strip() for x in v) for v in table["captions"])
    assert len({tuple(v) for v in table["captions"]}) == 3  # sampled: images differ
    # same seed: same variants, whatever the order and company of the images
    again = L.llm_captions(META.iloc[::-1].iloc[:2], llm, SETTINGS, seed=1)
    assert dict(zip(again["id"], map(list, again["captions"]))) == {
        i: list(v) for i, v in zip(table["id"], table["captions"]) if i in ("b", "c")
    }
    other = L.llm_captions(META, llm, SETTINGS, seed=2)
    assert [list(v) for v in other["captions"]] != [list(v) for v in table["captions"]]
    path = tmp_path / "llm.parquet"
    L.write_llm_captions(table, path)
    assert L.read_llm_captions(path, n_variants=3) == {
        i: list(v) for i, v in zip(table["id"], table["captions"])
    }


@pytest.mark.parametrize(
    "text, clean",
    [
        ("1. A red circle.\n2. Another", "A red circle."),
        ('\n\n  - "a round red shape"  ', "a round red shape"),
        ("Caption: a blue square", "a blue square"),
        ("   \n  ", ""),
    ],
)
def test_clean_variant(text, clean):
    assert L.clean_variant(text) == clean


def test_read_errors_name_the_file_and_image(tmp_path):
    bad = tmp_path / "x.parquet"
    pd.DataFrame({"id": ["a"], "variants": [["x"]]}).to_parquet(bad)
    with pytest.raises(L.LLMCaptionError, match=r"x.parquet: columns \['captions'\] missing"):
        L.read_llm_captions(bad)
    pd.DataFrame({"id": ["a", "b"], "captions": [["x", "y"], ["z"]]}).to_parquet(bad)
    with pytest.raises(L.LLMCaptionError, match=r"image b has 1 variant\(s\), captions.llm.n_variants is 2"):
        L.read_llm_captions(bad, n_variants=2)
    pd.DataFrame({"id": ["a"], "captions": [["x", " "]]}).to_parquet(bad)
    with pytest.raises(L.LLMCaptionError, match="image a has an empty variant"):
        L.read_llm_captions(bad)
    with pytest.raises(L.LLMCaptionError, match="cannot read .*missing.parquet"):
        L.read_llm_captions(tmp_path / "missing.parquet")


def test_generation_errors_name_the_image_or_folder(llm, tmp_path, monkeypatch):
    meta = pd.DataFrame({"id": ["a", "q"], "captions": [["a red circle"], []]})
    with pytest.raises(L.LLMCaptionError, match="image q of dataset 'toy' has no caption \\[0\\] to reword"):
        L.llm_captions(meta, llm, SETTINGS, seed=0, dataset="toy")
    with pytest.raises(L.LLMCaptionError, match="no config.json; not a transformers model folder"):
        L.load_llm(tmp_path)
    monkeypatch.setattr(L, "caption_variants", lambda *a, **k: ["ok", "1. ", "fine"])
    with pytest.raises(L.LLMCaptionError, match=r"1 empty answer\(s\) for image a of dataset 'toy'"):
        L.llm_captions(META.iloc[:1], llm, SETTINGS, seed=0, dataset="toy")


def test_caption_file_puts_llm_variants_after_caption_0():
    llm = {"a": ["v1", "v2"], "b": ["w1", "w2"], "c": ["u1", "u2"]}
    out = make_captions(META, "instancelevel_blip", n_captions=4, llm=llm)
    assert out["captions"]["a"] == ["a red circle in the center", "v1", "v2", "red round shape"]
    assert out["captions"]["b"] == ["a blue square", "w1", "w2"]  # fewer than n_captions: allowed with LLM
    assert out["variants"] == "llm + dataset"
    assert make_captions(META, "instancelevel_blip", n_captions=1)["variants"] == "dataset"


def test_config_needs_an_llm_model_and_a_caption_placeholder(mini_config):
    from diffrep import config as dconf
    from test_config import validated

    mini_config["datasets"]["shapes"]["llm_captions"] = True
    with pytest.raises(dconf.ConfigError, match="captions.llm.model: model 'gemma3_1b_it' is not defined"):
        dconf.check(validated(mini_config))
    mini_config["models"]["tiny_llm"] = {"kind": "llm", "sources": [{"type": "build", "builder": "tiny_llm"}]}
    mini_config["captions"] = {"llm": {"model": "tiny_llm", "instruction": "Reword this."}}
    with pytest.raises(dconf.ConfigError, match=r"captions.llm.instruction: no \{caption\} placeholder"):
        dconf.check(validated(mini_config))


def test_llm_captions_rule_in_the_micro_study(tmp_path):
    """The micro study with llm_captions on its dataset: one llm_captions job for the dataset, feeding
    the instancelevel_blip caption file (and so the allcaps finetune); llm.parquet holds N variants."""
    from conftest import REPO, copy_workflow, job_counts, load_yaml, snakemake

    wf = copy_workflow(tmp_path / "wf")
    cfg = load_yaml(REPO / "tests/micro/config.yaml")
    cfg["models"]["micro_llm"] = {"kind": "llm", "sources": [{"type": "build", "builder": "tiny_llm"}]}
    cfg["datasets"]["micro_shapes"]["llm_captions"] = True
    cfg["captions"] = {"llm": {"model": "micro_llm", "n_variants": 2, "max_new_tokens": 5}}
    cfg["experiments"].append(
        {
            "name": "allcaps",
            "datasets": ["micro_shapes"],
            "duplication": ["dup_both"],
            "conditioning": ["instancelevel_blip"],
            "train_mitigation": ["allcaps"],
        }
    )
    path = wf / "llm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["--configfile", str(path), "--replace-workflow-config"]
    dry = snakemake(["-n", *args], cwd=wf, check=True).stdout
    assert job_counts(dry)["llm_captions"] == 1  # once per dataset
    target = "results/micro/micro_shapes/captions/instancelevel_blip.json"
    snakemake(["--cores", "2", *args, target], cwd=wf, check=True, timeout=900)
    table = pd.read_parquet(wf / "results/micro/micro_shapes/captions/llm.parquet")
    meta = pd.read_parquet(wf / "resources/data/micro_shapes/metadata.parquet")
    assert table["id"].tolist() == [str(i) for i in meta["id"]]
    assert all(len(v) == 2 for v in table["captions"])
    caps = json.loads((wf / target).read_text())
    assert caps["variants"] == "llm + dataset"
    first = table.iloc[0]
    assert caps["captions"][first["id"]][:3] == [first["caption"], *first["captions"]]
    assert (wf / "logs/micro/captions/micro_shapes/llm.log").read_text()
    assert job_counts(snakemake(["-n", *args, target], cwd=wf, check=True).stdout) == {}
