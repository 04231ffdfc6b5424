"""sha256 manifests in `sha256sum -c` format: hash a folder, write a manifest, verify one.

A manifest line is ``<64 hex digits>  <path>`` (two spaces; ``sha256sum`` also accepts ``<hash> *<path>``
for binary mode, which is read too). Model manifests list paths relative to ``resources/models/``
(``<hash>  sd21/unet/diffusion_pytorch_model.safetensors``), so that
``cd resources/models && sha256sum -c sd21.sha256`` checks a model (docs/formats.md).

Hidden files and folders (any path component starting with ``.``) are not part of a model: hub
clients keep their bookkeeping there (``.cache/huggingface``, ``._____temp``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from diffrep.fileio import atomic_path

CHUNK = 1 << 20  # bytes read at a time while hashing
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class ChecksumError(RuntimeError):
    """A file whose sha256 differs from the expected one, or a file missing or unexpected."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def folder_files(folder: str | os.PathLike) -> list[str]:
    """Paths (posix, relative to `folder`, sorted) of the regular files under it, hidden ones skipped."""
    folder = Path(folder)
    if folder.is_file():
        raise ChecksumError(f"{folder}: expected a folder, found a file")
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


def hash_folder(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every (non-hidden) file under `folder`."""
    folder = Path(folder)
    return {rel: sha256_file(folder / rel) for rel in folder_files(folder)}


def format_manifest(hashes: dict[str, str], prefix: str = "") -> str:
    """Manifest text: one ``<hash>  <prefix/path>`` line per file, sorted by path."""
    lead = f"{prefix.rstrip('/')}/" if prefix else ""
    return "".join(f"{hashes[rel]}  {lead}{rel}\n" for rel in sorted(hashes))


def write_manifest(path: str | os.PathLike, hashes: dict[str, str], prefix: str = "") -> Path:
    """Write a manifest atomically (temporary name, then rename) and return its path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(format_manifest(hashes, prefix))
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """{path as written: sha256} of a manifest; raises ChecksumError naming a malformed line."""
    path = Path(path)
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ChecksumError(
                f"{path}:{i}: not a sha256sum line (expected '<64 hex digits>  <file>'): {line[:120]!r}"
            )
        out[m.group(2)] = m.group(1).lower()
    return out


def compare(actual: dict[str, str], expected: dict[str, str], where: str, exact: bool = True) -> None:
    """Raise ChecksumError listing every mismatch between two {file: sha256} maps.

    Each mismatching file is named with the expected and the actual hash; files expected but
    absent are named; with `exact`, files present but not expected are named too.
    """
    problems = []
    for rel in sorted(expected):
        if rel not in actual:
            problems.append(f"{where}/{rel}: missing (expected sha256 {expected[rel]})")
        elif actual[rel] != expected[rel].lower():
            problems.append(
                f"{where}/{rel}: sha256 mismatch: expected {expected[rel].lower()}, actual {actual[rel]}"
            )
    if exact:
        for rel in sorted(set(actual) - set(expected)):
            problems.append(f"{where}/{rel}: not in the expected list (actual sha256 {actual[rel]})")
    if problems:
        raise ChecksumError(
            f"checksum verification failed for {len(problems)} file(s):\n  " + "\n  ".join(problems)
        )


def verify_manifest(
    manifest: str | os.PathLike, root: str | os.PathLike | None = None, exact: bool = True
) -> dict[str, str]:
    """Check the files a manifest lists (relative to `root`, default the manifest's folder).

    With `exact` (default), files in the folders the manifest covers that it does not list are
    errors too (something was added to a model folder). Returns {path: sha256}; raises
    ChecksumError naming each bad file with the expected and the actual hash.
    """
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    expected = read_manifest(manifest)
    if not expected:
        raise ChecksumError(f"{manifest}: empty manifest")
    actual = {rel: sha256_file(root / rel) for rel in expected if (root / rel).is_file()}
    if exact:
        tops = {rel.split("/", 1)[0] for rel in expected if "/" in rel}
        for top in sorted(tops):
            if (root / top).is_dir():
                for rel in folder_files(root / top):
                    actual.setdefault(f"{top}/{rel}", sha256_file(root / top / rel))
    compare(actual, expected, where=str(root), exact=exact)
    return expected
