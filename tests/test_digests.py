"""Reference digests (diffrep.digests): a study's artifacts in chain order, and the first that differs."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from diffrep import digests
from diffrep.embeddings import write_embeddings


def _study(root: Path) -> Path:
    """A tiny finished 'study' on disk: one of each artifact kind; returns its config file."""
    files = {
        "resources/data/toy/images.sha256": "a" * 64 + "  images/0.png\n",
        "resources/data/toy/metadata.parquet": "meta",
        "resources/models/base.sha256": "b" * 64 + "  base/unet/w.safetensors\n",
        "results/t/toy/duplication/nodup.parquet": "plan",
        "results/t/toy/captions/classlevel.json": "{}",
        "results/t/toy/models/nodup.classlevel.none/unet/diffusion_pytorch_model.safetensors": "weights",
        "results/t/toy/models/nodup.classlevel.none/train_info.json": '{"duration_s": 1.0}',
        "results/t/toy/generations/base/default/00000.png": "png0",
        "results/t/toy/generations/base/default/prompts.parquet": "prompts",
        "results/t/toy/generations/base/default/generation_info.json": '{"duration_s": 2.0}',
        "results/t/toy/embeddings/pixel/train.npz": None,
        "results/t/toy/embeddings/pixel/base/default.npz": None,
        "results/t/toy/similarity/pixel/base/default.parquet": "sim",
        "results/t/tables/summary.csv": "run,p95\nbase,0.5\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if text is None:  # embeddings: an npz as diffrep.embeddings writes it
            write_embeddings(root / rel, ["a", "b"], np.eye(2, 3), "pixel", "none")
        else:
            (root / rel).write_text(text)
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({"study": "t", "base_model": "base", "datasets": {"toy": {}}}))
    return config


def test_the_chain_is_in_stage_order_and_leaves_out_what_records_the_machine(tmp_path):
    config = _study(tmp_path)
    found = digests.collect(digests.study_names(config), tmp_path)
    assert [stage for stage, _, _ in found] == [
        "dataset", "dataset", "base model", "plans and captions", "plans and captions",
        "finetunes", "generations", "embeddings", "embeddings", "retrieval", "tables",
    ]  # fmt: skip
    before = dict((p, d) for _, p, d in found)
    (tmp_path / "results/t/toy/models/nodup.classlevel.none/train_info.json").write_text('{"duration_s": 9}')
    (tmp_path / "results/t/toy/generations/base/default/generation_info.json").write_text("{}")
    after = dict((p, d) for _, p, d in digests.collect(digests.study_names(config), tmp_path))
    assert after == before  # durations are not results


def test_write_then_check_and_the_first_difference_is_named_with_its_meaning(tmp_path):
    config = _study(tmp_path)
    ref = tmp_path / "ref.sha256"
    assert digests.write(config, ref, tmp_path) == 11
    assert ref.read_text().startswith(
        "# diffrep reference digests: study t, numerics portable\n# stage dataset\n"
    )
    assert digests.check(config, ref, tmp_path) == 11
    # a different generation and a different table: the generation comes first in the chain
    (tmp_path / "results/t/tables/summary.csv").write_text("run,p95\nbase,0.6\n")
    (tmp_path / "results/t/toy/generations/base/default/00000.png").write_text("other")
    with pytest.raises(digests.DigestError) as err:
        digests.check(config, ref, tmp_path)
    assert str(err.value).startswith(
        "first difference, stage generations: results/t/toy/generations/base/default/"
    )
    assert "sampling differs" in str(err.value)
    assert digests.main(["check", str(config), str(ref), "--root", str(tmp_path)]) == 1


def test_a_missing_or_an_unexpected_artifact_is_named(tmp_path):
    config = _study(tmp_path)
    ref = tmp_path / "ref.sha256"
    digests.write(config, ref, tmp_path)
    (tmp_path / "results/t/toy/embeddings/pixel/train.npz").unlink()
    with pytest.raises(
        digests.DigestError, match=r"stage embeddings: results/t/toy/embeddings/pixel/train.npz is missing"
    ):
        digests.check(config, ref, tmp_path)
    write_embeddings(
        tmp_path / "results/t/toy/embeddings/pixel/train.npz", ["a", "b"], np.eye(2, 3), "pixel", "none"
    )
    (tmp_path / "results/t/toy/duplication/dup_both.parquet").write_text("plan2")
    with pytest.raises(
        digests.DigestError, match=r"dup_both.parquet is not in the reference \(1 such artifacts"
    ):
        digests.check(config, ref, tmp_path)


def test_a_damaged_reference_names_its_line(tmp_path):
    ref = tmp_path / "ref.sha256"
    ref.write_text("# stage dataset\nnot-a-digest  x\n")
    with pytest.raises(digests.DigestError, match=r"ref.sha256:2: not a '<sha256>  <path>' line"):
        digests.read_reference(ref)


def test_a_missing_reference_is_named(tmp_path):
    with pytest.raises(digests.DigestError, match=r"nothere.sha256: no such reference file"):
        digests.read_reference(tmp_path / "nothere.sha256")
