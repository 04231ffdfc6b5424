"""FID: diffrep's numbers equal pytorch-fid's own command line on the same folders (offline: the
weights are put where pytorch-fid's loader finds them, under a temporary TORCH_HOME), and, under
``convention: upstream``, a transcription of upstream DCR's metrics/fid.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffrep import fid as F
from diffrep.images import list_images

torch.set_num_threads(1)


def _images(folder, n, seed, brightness):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = np.clip(rng.normal(brightness, 60, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(small).resize((32, 32), Image.BICUBIC).save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    return _images(root / "a", 4, 0, 100), _images(root / "b", 4, 1, 170)


def _converted_weights(tmp_path):
    """The mini study's converted FID weights (diffrep.fid_weights)."""
    from diffrep.builders import model_builder

    out = tmp_path / "fid_inception_converted"
    model_builder("fid_inception_from_wheel")(out, 0)
    return F.load_state_dict(F.find_weights(out))


def _model_folder(tmp_path, weights):
    """(model folder with a .safetensors state dict, TORCH_HOME where pytorch-fid finds the same weights)."""
    from safetensors.torch import save_file

    state = F.random_inception_state_dict(0) if weights == "random" else _converted_weights(tmp_path)
    model = tmp_path / "fid_model"
    model.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(model / "inception.safetensors"))
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(F.complete_state_dict(state), home / "hub" / "checkpoints" / F.PYTORCH_FID_FILE)
    return model, home


def _pytorch_fid(args, torch_home):
    env = {**os.environ, "TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytorch_fid", "--device", "cpu", "--num-workers", "0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("weights", ["random", "converted"])
def test_statistics_equal_pytorch_fid_save_stats(tmp_path, folders, weights):
    """mu and sigma (float64) from diffrep's loader equal `python -m pytorch_fid --save-stats`."""
    model, home = _model_folder(tmp_path, weights)
    _pytorch_fid(["--save-stats", str(folders[0]), str(tmp_path / "theirs.npz")], home)
    theirs = np.load(tmp_path / "theirs.npz")
    mu, sigma, n = F.folder_statistics(list_images(folders[0]), F.load_inception(model), batch_size=50)
    assert n == 4 and mu.dtype == np.float64 and sigma.shape == (2048, 2048)
    assert np.abs(mu).max() > 1e-3  # the network is not dead: a test that could fail
    np.testing.assert_allclose(mu, theirs["mu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, theirs["sigma"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fid_equals_pytorch_fid_command_line(tmp_path, folders):
    """`python -m pytorch_fid A B` and diffrep's reference + fid rules agree to 1e-3 (two 2048² sqrtm:
    about a minute on 2 cores), with the mini study's converted weights."""
    model, home = _model_folder(tmp_path, "converted")
    a, b = folders
    out = _pytorch_fid([str(a), str(b)], home)
    theirs = float(re.search(r"FID:\s+([-\d.e+]+)", out).group(1))
    meta = pd.DataFrame({"id": [p.stem for p in list_images(a)], "file": [p.name for p in list_images(a)]})
    meta.to_parquet(tmp_path / "metadata.parquet")
    gen = tmp_path / "gen"
    gen.mkdir()
    for p in list_images(b):
        (gen / p.name).write_bytes(p.read_bytes())
    pd.DataFrame({"index": range(4), "file": [p.name for p in list_images(b)]}).to_parquet(
        gen / "prompts.parquet"
    )
    n = F.reference_statistics(
        a, tmp_path / "metadata.parquet", model, tmp_path / "reference.npz", 32, device="cpu"
    )
    result = F.fid_of_generations(
        gen, tmp_path / "reference.npz", model, tmp_path / "fid.json", 32, device="cpu"
    )
    assert n == 4
    assert theirs > 1.0  # different folders: a real distance
    assert result["fid"] == pytest.approx(theirs, abs=1e-3)
    on_disk = json.loads((tmp_path / "fid.json").read_text())
    assert on_disk["n_generated"] == 4 and on_disk["n_reference"] == 4 and on_disk["resolution"] == 32
    assert "twice" in on_disk["normalisation"] and "biased" in on_disk["note"]
    assert on_disk["convention"] == "pytorch-fid"
    assert on_disk["method"] == F.LOW_RANK_METHOD


def test_only_off_size_images_are_resized(tmp_path):
    """Images at the study resolution reach Inception untouched (as pytorch-fid reads them); others
    are resized (short side) and centre-cropped to it."""
    Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)).save(tmp_path / "same.png")
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "big.png")
    same = F.image_tensor(tmp_path / "same.png", 32)
    np.testing.assert_array_equal(
        (same.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0),
        np.asarray(Image.open(tmp_path / "same.png")),
    )
    assert tuple(F.image_tensor(tmp_path / "big.png", 32).shape) == (3, 32, 32)
    assert tuple(F.image_tensor(tmp_path / "big.png", None).shape) == (3, 48, 64)


def test_statistics_and_distance_by_hand():
    acts = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = F.statistics(acts)
    np.testing.assert_allclose(mu, [2.0, 4.0])
    np.testing.assert_allclose(sigma, [[4.0, 7.0], [7.0, 13.0]])  # np.cov, ddof 1
    assert F.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    # identity covariances: FID = |mu1 - mu2|^2
    assert F.frechet_distance(np.zeros(2), np.eye(2), np.array([3.0, 4.0]), np.eye(2)) == pytest.approx(25.0)
    with pytest.raises(F.FIDError, match="at least 2 images, got 1"):
        F.statistics(acts[:1])


@pytest.mark.parametrize("n_gen", [5, 48, 300])
def test_low_rank_distance_equals_pytorch_fids(n_gen):
    """For n <= dims generations the exact low-rank trace gives pytorch-fid's number (its sqrtm of a
    singular product is the approximate one: agreement to 1e-6 relative, not bit for bit)."""
    import warnings

    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(n_gen)
    d = 512
    mix = rng.standard_normal((d, 32))
    gen = np.abs(rng.standard_normal((n_gen, 32)) @ mix.T + 0.3)
    ref = np.abs(rng.standard_normal((400, 32)) @ mix.T + 0.1 * rng.standard_normal((400, d)))
    (mu1, s1), (mu2, s2) = F.statistics(gen), F.statistics(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    assert F.frechet_method(n_gen, d) == F.LOW_RANK_METHOD
    assert F.frechet_distance(mu1, s1, mu2, s2, acts1=gen) == pytest.approx(theirs, rel=1e-6)
    # without activations, or with more images than dimensions, pytorch-fid's own function is used
    assert F.frechet_distance(mu1, s1, mu2, s2) == theirs
    assert F.frechet_method(d + 1, d) == F.PYTORCH_FID_METHOD


def test_weights_errors_name_the_file(tmp_path):
    with pytest.raises(F.FIDError, match="does not exist"):
        F.find_weights(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(F.FIDError, match="expected one \\*.safetensors"):
        F.find_weights(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(2, 2)}, str(bad / "w.safetensors"))
    with pytest.raises(F.FIDError, match="w.safetensors: not pytorch-fid's InceptionV3 state dict"):
        F.load_inception(bad)


def test_reference_at_another_resolution_is_refused(tmp_path):
    F.write_reference(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048), 10, 64, "w.safetensors")
    ref = F.read_reference(tmp_path / "ref.npz")
    assert ref["n"] == 10 and ref["resolution"] == 64 and ref["sigma"].dtype == np.float64
    with pytest.raises(F.FIDError, match="computed at resolution 64, this FID asks 32"):
        F.fid_of_generations(tmp_path, tmp_path / "ref.npz", tmp_path, tmp_path / "fid.json", 32)


# ---------------------------------------------------------------- convention: upstream


def _upstream_dcr_activations(files, model, batch_size=50):
    """Transcribed from upstream DCR metrics/fid.py ``get_activations`` (its transform, its batching).

    ``model`` is upstream's ``InceptionV3([3])``: DCR's metrics/inception.py is pytorch-fid 0.3.0's
    inception.py byte for byte, so the network (which resizes to 299 and maps x to 2x - 1 itself)
    is built from pytorch-fid here.
    """
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(299),
            transforms.CenterCrop(299),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    pred_arr = np.empty((len(files), 2048))
    start_idx = 0
    for i in range(0, len(files), batch_size):
        batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i : i + batch_size]])
        with torch.no_grad():
            pred = model(batch)[0]
        pred = pred.squeeze(3).squeeze(2).cpu().numpy()
        pred_arr[start_idx : start_idx + pred.shape[0]] = pred
        start_idx = start_idx + pred.shape[0]
    return pred_arr


@pytest.fixture()
def upstream_network(monkeypatch):
    """Upstream's InceptionV3([3]) with the random test weights (pytorch-fid's class, defaults kept)."""
    import pytorch_fid.inception as pfi

    state = F.complete_state_dict(F.random_inception_state_dict(0))
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *args, **kwargs: state)
    return pfi.InceptionV3([3]).eval()


def test_upstream_convention_equals_transcription_of_dcr_fid(tmp_path, folders, upstream_network):
    """convention upstream: reference statistics and FID equal upstream's get_activations + np.cov on the
    same files (training images of another size than ``resolution`` included: upstream read them as
    stored), its inputs reach Inception in [-3, 1], and the number differs from pytorch-fid's."""
    model, _ = _model_folder(tmp_path, "random")
    train, gen = tmp_path / "train", folders[1]
    train.mkdir()
    for i, p in enumerate(list_images(folders[0])):  # two of them off-size and non-square
        img = Image.open(p)
        (img.resize((48, 40)) if i < 2 else img).save(train / p.name)
    files = list_images(train)
    pd.DataFrame({"id": [p.stem for p in files], "file": [p.name for p in files]}).to_parquet(
        tmp_path / "meta.parquet"
    )
    ref, out = tmp_path / "reference.npz", tmp_path / "fid.json"
    F.reference_statistics(
        train, tmp_path / "meta.parquet", model, ref, 32, device="cpu", convention="upstream"
    )
    theirs_ref = _upstream_dcr_activations(files, upstream_network)
    ours = F.read_reference(ref)
    assert ours["convention"] == "upstream"
    np.testing.assert_allclose(ours["mu"], theirs_ref.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["sigma"], np.cov(theirs_ref, rowvar=False), rtol=1e-4, atol=1e-6)

    seen = []
    net = F.load_inception(model)
    net.blocks[0].register_forward_pre_hook(lambda module, args: seen.append((args[0].min(), args[0].max())))
    acts = F.activations(list_images(gen), net, convention="upstream")
    assert min(float(lo) for lo, _ in seen) < -1.0 and max(float(hi) for _, hi in seen) <= 1.0 + 1e-6
    assert min(float(lo) for lo, _ in seen) >= -3.0 - 1e-6

    result = F.fid_of_generations(gen, ref, model, out, 32, device="cpu", convention="upstream")
    theirs_gen = _upstream_dcr_activations(list_images(gen), upstream_network)
    np.testing.assert_allclose(acts, theirs_gen, rtol=1e-5, atol=1e-6)
    (mu1, s1), (mu2, s2) = F.statistics(theirs_gen), F.statistics(theirs_ref)
    assert result["fid"] == pytest.approx(F.frechet_distance(mu1, s1, mu2, s2, acts1=theirs_gen), rel=1e-5)
    assert result["convention"] == "upstream" and "[-3, 1]" in result["normalisation"]
    assert json.loads(out.read_text()) == result

    F.reference_statistics(train, tmp_path / "meta.parquet", model, ref, 32, device="cpu")
    ours = F.fid_of_generations(gen, ref, model, out, 32, device="cpu")
    assert ours["convention"] == "pytorch-fid" and abs(ours["fid"] - result["fid"]) > 1e-3 * result["fid"]


def test_reference_of_another_convention_is_refused(tmp_path):
    F.write_reference(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048), 10, 32, "w.safetensors", "upstream")
    with pytest.raises(
        F.FIDError, match="computed with fid.convention 'upstream', this FID asks 'pytorch-fid'"
    ):
        F.fid_of_generations(tmp_path, tmp_path / "ref.npz", tmp_path, tmp_path / "fid.json", 32)
    with pytest.raises(
        F.FIDError, match="fid.convention 'torchmetrics' unknown; allowed: pytorch-fid, upstream"
    ):
        F.image_tensor(tmp_path / "any.png", 32, "torchmetrics")
