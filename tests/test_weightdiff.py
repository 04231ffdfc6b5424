"""Per-tensor weight differences between a finetuned UNet and the base."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from diffrep import weightdiff as W

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    """A real (tiny) diffusers UNet2DConditionModel saved as a pipeline folder's unet/."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    base = tmp_path_factory.mktemp("unet") / "base"
    unet.save_pretrained(base / "unet")
    return base


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _save(folder, state):
    (folder / "unet").mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    return folder


def test_model_against_itself_is_zero(tiny_unet):
    df = W.compare(tiny_unet, tiny_unet)
    assert len(df) == len(_state(tiny_unet)) and (df["status"] == "ok").all()
    assert (df["l1"] == 0).all() and (df["l2"] == 0).all() and (df["cosine"] == 1).all()
    assert W.changed(df) == []
    assert set(df["component"]) == {"attn1", "attn2", "other"}
    assert {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.1", "conv_in", "time_embedding"} <= set(
        df["block"]
    )


def test_perturbed_copy_names_exactly_the_perturbed_tensors(tmp_path, tiny_unet):
    state = _state(tiny_unet)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    c = "conv_in.bias"
    delta = torch.full_like(state[q], 0.01)
    state[q] = state[q] + delta
    state[c] = -state[c]
    tuned = _save(tmp_path / "tuned", state)
    df = W.compare(tiny_unet, tuned).set_index("tensor")
    assert W.changed(df.reset_index()) == sorted([q, c])
    assert df.loc[q, "l1"] == pytest.approx(0.01 * delta.numel(), rel=1e-4)
    assert df.loc[q, "l2"] == pytest.approx(0.01 * delta.numel() ** 0.5, rel=1e-4)
    assert df.loc[q, "component"] == "attn2" and df.loc[q, "block"] == "down_blocks.0"
    assert df.loc[c, "cosine"] == pytest.approx(-1.0) and df.loc[c, "block"] == "conv_in"
    by = W.summary(df.reset_index(), "component").set_index("component")
    assert by.loc["attn1", "l2"] == 0 and by.loc["attn2", "l2"] == pytest.approx(df.loc[q, "l2"])


def test_shape_mismatch_and_missing_tensors_are_listed_not_crashed_on(tmp_path):
    base = _save(
        tmp_path / "base",
        {
            "conv_in.weight": torch.ones(4, 4, 3, 3),
            "mid_block.x": torch.ones(3),
            "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.ones(2, 2),
        },
    )
    model = _save(
        tmp_path / "model",
        {
            "conv_in.weight": torch.ones(4, 8, 3, 3),
            "extra.bias": torch.zeros(2),
            "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.eye(2),
        },
    )
    out = tmp_path / "wd.parquet"
    W.weightdiff_file(base, model, out)
    df = pd.read_parquet(out).set_index("tensor")
    assert list(df.reset_index().columns) == W.COLUMNS
    assert (
        df.loc["conv_in.weight", "status"] == "shape_mismatch" and df.loc["conv_in.weight", "shape_mismatch"]
    )
    assert (
        df.loc["conv_in.weight", "shape"] == "4x8x3x3" and df.loc["conv_in.weight", "base_shape"] == "4x4x3x3"
    )
    assert np.isnan(df.loc["conv_in.weight", "l2"])
    assert (
        df.loc["mid_block.x", "status"] == "only_in_base"
        and df.loc["extra.bias", "status"] == "only_in_model"
    )
    attn = df.loc["up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    assert attn["component"] == "attn1" and attn["block"] == "up_blocks.0" and attn["status"] == "ok"
    assert attn["l1"] == pytest.approx(2.0) and attn["cosine"] == pytest.approx(2 / (2 * 2**0.5))
    summ = W.summary(df.reset_index(), "block").set_index("block")
    assert summ.loc["up_blocks.0", "not_compared"] == 0


def test_file_discovery_prefers_full_precision_and_reads_shards(tmp_path):
    folder = tmp_path / "m" / "unet"
    folder.mkdir(parents=True)
    save_file({"a": torch.ones(2)}, str(folder / "diffusion_pytorch_model.safetensors"))
    save_file(
        {"a": torch.ones(2, dtype=torch.float16)}, str(folder / "diffusion_pytorch_model.fp16.safetensors")
    )
    assert [p.name for p in W.unet_files(tmp_path / "m")] == ["diffusion_pytorch_model.safetensors"]
    sharded = tmp_path / "s" / "unet"
    sharded.mkdir(parents=True)
    save_file({"a": torch.ones(2)}, str(sharded / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(2)}, str(sharded / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                    "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
                }
            }
        )
    )
    df = W.compare(tmp_path / "s", tmp_path / "s")
    assert list(df["tensor"]) == ["a", "b"] and (df["l2"] == 0).all()
    with pytest.raises(W.WeightDiffError, match="no such model folder"):
        W.unet_files(tmp_path / "nope")
