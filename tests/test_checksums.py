"""sha256 manifests (`sha256sum -c` format) and pinning them into the config."""

import hashlib
import shutil
import subprocess

import pytest
import yaml

from diffrep import pin_hashes
from diffrep.checksums import (
    ChecksumError,
    hash_folder,
    read_manifest,
    verify_manifest,
    write_manifest,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model(tmp_path):
    """resources/models/toy/ with two files, its manifest, and the bytes written."""
    root = tmp_path / "resources/models"
    files = {
        "model_index.json": b'{"a": 1}\n',
        "unet/diffusion_pytorch_model.safetensors": b"\x00weights" * 100,
    }
    for rel, data in files.items():
        (root / "toy" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "toy" / rel).write_bytes(data)
    (root / "toy/.cache").mkdir()
    (root / "toy/.cache/ignored").write_text("hub bookkeeping")
    manifest = write_manifest(root / "toy.sha256", hash_folder(root / "toy"), prefix="toy")
    return root, manifest, files


def test_manifest_is_sha256sum_format(model):
    root, manifest, files = model
    lines = manifest.read_text().splitlines()
    assert lines == [f"{sha(files[rel])}  toy/{rel}" for rel in sorted(files)]
    assert read_manifest(manifest) == {f"toy/{rel}": sha(d) for rel, d in files.items()}
    if shutil.which("sha256sum"):
        proc = subprocess.run(["sha256sum", "-c", "toy.sha256"], cwd=root, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verify_manifest(manifest) == read_manifest(manifest)


def test_corrupted_file_names_file_and_both_hashes(model):
    root, manifest, files = model
    target = root / "toy/unet/diffusion_pytorch_model.safetensors"
    target.write_bytes(b"\x01weights" * 100)
    with pytest.raises(ChecksumError) as err:
        verify_manifest(manifest)
    msg = str(err.value)
    assert "toy/unet/diffusion_pytorch_model.safetensors" in msg
    assert sha(files["unet/diffusion_pytorch_model.safetensors"]) in msg  # expected
    assert sha(b"\x01weights" * 100) in msg  # actual
    assert "model_index.json" not in msg  # the good file is not blamed


def test_missing_and_extra_files_are_named(model):
    root, manifest, _ = model
    (root / "toy/model_index.json").unlink()
    (root / "toy/unet/extra.safetensors").write_bytes(b"x")
    with pytest.raises(ChecksumError) as err:
        verify_manifest(manifest)
    assert "toy/model_index.json: missing" in str(err.value)
    assert "toy/unet/extra.safetensors: not in the expected list" in str(err.value)
    with pytest.raises(ChecksumError, match="model_index.json: missing"):
        verify_manifest(manifest, exact=False)


def test_malformed_manifest_line_is_named(tmp_path):
    path = tmp_path / "bad.sha256"
    path.write_text(f"{'0' * 64}  ok/file\nnot a hash line\n")
    with pytest.raises(ChecksumError, match=r"bad.sha256:2: not a sha256sum line"):
        read_manifest(path)


CONFIG = """\
# a study config
models:
  # the model
  toy:
    kind: diffusers
    sources:
      - {type: build, builder: mini_sd}
  # another model, untouched
  other:
    kind: sscd
    sources:
      - {type: url, url: "http://example.invalid/x.torchscript.pt"}
datasets: {}
"""


def test_pin_writes_manifest_hashes_into_config(model, tmp_path, monkeypatch):
    root, manifest, files = model
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    assert pin_hashes.main(["--config", str(config), "--model", "toy"]) == 0
    cfg = yaml.safe_load(config.read_text())
    assert cfg["models"]["toy"]["sha256"] == {rel: sha(d) for rel, d in files.items()}
    assert "sha256" not in cfg["models"]["other"]
    assert "# another model, untouched" in config.read_text()
    # pinning again after a change replaces the pins, it does not add a second block
    (root / "toy/model_index.json").write_bytes(b"{}\n")
    write_manifest(manifest, hash_folder(root / "toy"), prefix="toy")
    assert pin_hashes.main(["--config", str(config), "--model", "toy"]) == 0
    text = config.read_text()
    assert text.count("sha256:") == 1
    assert yaml.safe_load(text)["models"]["toy"]["sha256"]["model_index.json"] == sha(b"{}\n")


def test_pin_refuses_a_corrupted_folder(model, tmp_path, capsys):
    root, manifest, _ = model
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    (root / "toy/model_index.json").write_bytes(b"tampered")
    assert pin_hashes.main(["--config", str(config), "--model", "toy", "--manifest", str(manifest)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert config.read_text() == CONFIG


def test_pin_rejects_a_manifest_of_another_model(model, tmp_path):
    _, manifest, _ = model
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    with pytest.raises(pin_hashes.PinError, match="not under other/"):
        pin_hashes.pin(config, "other", manifest)
