"""Reference digests: the sha256 of a study's artifacts in the order they are made, and the first
one that differs from a committed reference.

A study's results are a chain: dataset → base model → duplication plans and captions → finetuned
weights → generations → embeddings → retrieval → tables. Each link is computed from the ones
before, so the *first* artifact that differs from the reference says where a difference began:
in the data or its build, the base model's training, finetuning, sampling or measurement.
:data:`STAGES` lists the links with what a difference there means.

An artifact is a file or a folder; a folder's digest is the sha256 of its ``<sha256>  <path>``
lines (the files :data:`STAGES` names, sorted), so files that record durations or the machine
(``train_info.json``, ``generation_info.json``, logs) are left out and the digest holds only
what the computation produced.

Reference file (``docs/reference/{study}.sha256``, ``tests/reference/micro.sha256``)::

    # diffrep reference digests: study mini, numerics portable
    # stage dataset
    <sha256>  resources/data/shapes/images.sha256
    ...

Command line::

    python -m diffrep.digests write CONFIG REFERENCE   # after a change meant to change results
    python -m diffrep.digests check CONFIG REFERENCE   # exit 1 naming the first difference
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from diffrep import numerics
from diffrep.checksums import sha256_file
from diffrep.fileio import atomic_path


@dataclass(frozen=True)
class Stage:
    """One link of the chain: where its artifacts are (globs of files or folders; ``{R}`` is
    results/{study}, ``{dataset}`` and ``{base_model}`` come from the config), which files of a
    folder count, and what a difference there means."""

    name: str
    patterns: tuple[str, ...]
    meaning: str
    files: tuple[str, ...] = ("*",)  # for folder artifacts: the files that make the digest


STAGES = (
    Stage(
        "dataset",
        ("resources/data/{dataset}/images.sha256", "resources/data/{dataset}/metadata.parquet"),
        "the dataset differs: its builder, a library it uses, or (numerics native) the CPU changed "
        "how it is drawn",
    ),
    Stage(
        "base model",
        ("resources/models/{base_model}.sha256",),
        "the base model differs: its build trains on this machine, so in native mode your CPU "
        "computes differently from the reference's; in portable mode a kernel still depends on the "
        "CPU, or the code or a library version changed",
    ),
    Stage(
        "plans and captions",
        ("{R}/{dataset}/duplication/*.parquet", "{R}/{dataset}/captions/*.json"),
        "the duplication plans or captions differ: they are drawn from seeded integers, so the code "
        "or the config changed",
    ),
    Stage(
        "finetunes",
        ("{R}/{dataset}/models/*",),
        "finetuning differs: the training code, its settings or the kernels it ran on changed",
        files=("unet/*.safetensors",),
    ),
    Stage(
        "generations",
        ("{R}/{dataset}/generations/*/*",),
        "sampling differs: the generation code, a scheduler, or the kernels it ran on changed",
        files=("*.png", "prompts.parquet"),
    ),
    Stage(
        "embeddings",
        ("{R}/{dataset}/embeddings/*/*.npz", "{R}/{dataset}/embeddings/*/*/*.npz"),
        "the embeddings differ: the descriptor, its preprocessing or the kernels it ran on changed",
    ),
    Stage(
        "retrieval",
        ("{R}/{dataset}/similarity/*/*/*.parquet",),
        "retrieval differs: the search or the similarity statistics changed",
    ),
    Stage(
        "tables",
        ("{R}/tables/summary.csv", "{R}/tables/baselines.csv", "{R}/tables/weightdiff.csv"),
        "the tables differ: how they are assembled changed",
    ),
)
HEADER = "# diffrep reference digests"


class DigestError(RuntimeError):
    """A study's artifacts differ from its reference (the message names the first that does)."""


def folder_digest(folder: Path, patterns: tuple[str, ...]) -> str:
    """sha256 of the ``<sha256>  <relative path>`` lines of the files under `folder` matching
    `patterns` (sorted by path); an empty folder has the digest of no lines."""
    paths = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def artifact_digest(path: Path, stage: Stage) -> str:
    """A file's sha256, or a folder's :func:`folder_digest` over the stage's files."""
    return folder_digest(path, stage.files) if path.is_dir() else sha256_file(path)


def study_names(config_file: str | Path) -> dict:
    """``study``, ``base_model`` and the ``datasets`` of a study config (the keys the chain needs)."""
    with open(config_file) as f:
        config = yaml.safe_load(f)
    missing = [k for k in ("study", "base_model", "datasets") if k not in config]
    if missing:
        raise DigestError(f"{config_file}: no {', '.join(missing)}: not a study config")
    return {
        "study": config["study"],
        "base_model": config["base_model"],
        "datasets": sorted(config["datasets"]),
        "numerics": numerics.settings(config.get("numerics"))["mode"],
    }


def collect(names: dict, root: str | Path = ".") -> list[tuple[str, str, str]]:
    """(stage, path relative to `root`, digest) of every artifact of the study found under `root`,
    in chain order (stages, then datasets, then paths)."""
    root = Path(root)
    out = []
    for stage in STAGES:
        found = []
        for dataset in names["datasets"]:
            for pattern in stage.patterns:
                glob = pattern.format(
                    R=f"results/{names['study']}", dataset=dataset, base_model=names["base_model"]
                )
                found += sorted(root.glob(glob))
        seen = set()
        for path in found:
            rel = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
            if rel not in seen:
                seen.add(rel)
                out.append((stage.name, rel, artifact_digest(path, stage)))
    return out


def format_reference(names: dict, digests: list[tuple[str, str, str]]) -> str:
    """The reference file's text: a header, then per stage a comment line and ``<digest>  <path>`` lines."""
    lines = [f"{HEADER}: study {names['study']}, numerics {names['numerics']}"]
    stage = None
    for name, path, digest in digests:
        if name != stage:
            lines.append(f"# stage {name}")
            stage = name
        lines.append(f"{digest}  {path}")
    return "\n".join(lines) + "\n"


def read_reference(path: str | Path) -> list[tuple[str, str, str]]:
    """(stage, path, digest) of a reference file, in its order."""
    if not Path(path).is_file():
        raise DigestError(f"{path}: no such reference file (make one with `python -m diffrep.digests write`)")
    out, stage = [], None
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.startswith("# stage "):
            stage = line[len("# stage ") :]
        elif line and not line.startswith("#"):
            digest, sep, rel = line.partition("  ")
            if not sep or len(digest) != 64 or stage is None:
                raise DigestError(
                    f"{path}:{n}: not a '<sha256>  <path>' line under a '# stage' line: {line!r}"
                )
            out.append((stage, rel, digest))
    if not out:
        raise DigestError(f"{path}: no digests")
    return out


def _meaning(stage_name: str) -> str:
    return next(s.meaning for s in STAGES if s.name == stage_name)


def compare(reference: list[tuple[str, str, str]], actual: list[tuple[str, str, str]]) -> str | None:
    """None when `actual` equals `reference`; else a message naming the first artifact of the chain
    that differs (or is missing, or is not in the reference) and what a difference there means."""
    have = {path: digest for _, path, digest in actual}
    expected = {path for _, path, _ in reference}
    for stage, path, digest in reference:
        if path not in have:
            return f"first difference, stage {stage}: {path} is missing (an incomplete run, or the config changed)"
        if have[path] != digest:
            return (
                f"first difference, stage {stage}: {path} has digest {have[path][:16]}…, "
                f"the reference {digest[:16]}…: {_meaning(stage)}"
            )
    extra = [(stage, path) for stage, path, _ in actual if path not in expected]
    if extra:
        stage, path = extra[0]
        return f"first difference, stage {stage}: {path} is not in the reference ({len(extra)} such artifacts: the config changed)"
    return None


def check(config_file, reference_file, root=".") -> int:
    """Compare a finished study with its reference; raise :class:`DigestError` naming the first
    difference; return the number of artifacts compared."""
    reference = read_reference(reference_file)
    problem = compare(reference, collect(study_names(config_file), root))
    if problem:
        raise DigestError(f"{problem}\n(reference: {reference_file})")
    return len(reference)


def write(config_file, reference_file, root=".") -> int:
    """Write the reference of a finished study (its artifacts as they are); return their number."""
    names = study_names(config_file)
    digests = collect(names, root)
    if not digests:
        raise DigestError(
            f"no artifacts of study {names['study']} under {Path(root).resolve()}: run it first"
        )
    with atomic_path(reference_file) as tmp:
        tmp.write_text(format_reference(names, digests))
    return len(digests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffrep.digests", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("check", "write"))
    parser.add_argument("config", help="the study's config file (e.g. profiles/mini/study.yaml)")
    parser.add_argument("reference", help="the reference digests file (e.g. docs/reference/mini.sha256)")
    parser.add_argument("--root", default=".", help="the workflow folder holding resources/ and results/")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            n = write(args.config, args.reference, args.root)
            print(f"wrote {n} digests to {args.reference}")
        else:
            n = check(args.config, args.reference, args.root)
            print(f"identical to the reference ({n} artifacts, {args.reference})")
    except DigestError as err:
        print(f"not identical to the reference: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
