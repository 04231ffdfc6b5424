"""Pin a model's checksums: copy the hashes of its manifest into the config's models.<name>.sha256.

    python -m diffrep.pin_hashes --config config.yaml --model sd21
    python -m diffrep.pin_hashes --config config.yaml --model sd21 --manifest other/sd21.sha256

The manifest (default ``resources/models/{model}.sha256``) is first checked against the model
folder next to it (``--no-verify`` skips this), so a corrupted folder is never pinned. The config
file is edited in place as text — comments and layout elsewhere are kept — and the edit is
checked by re-reading the YAML: only ``models.<model>.sha256`` may change. From then on every
fetch of the model verifies each file against these pins.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from diffrep.checksums import ChecksumError, read_manifest, verify_manifest
from diffrep.fileio import atomic_path


class PinError(RuntimeError):
    """The config or manifest cannot be pinned; the message says which and why."""


def manifest_hashes(manifest: str | Path, model: str) -> dict[str, str]:
    """{path relative to the model folder: sha256} from a manifest whose paths start with `model`/."""
    out = {}
    for path, digest in read_manifest(manifest).items():
        if not path.startswith(f"{model}/"):
            raise PinError(
                f"{manifest}: line for {path!r} is not under {model}/ (is this the manifest of {model}?)"
            )
        out[path[len(model) + 1 :]] = digest
    if not out:
        raise PinError(f"{manifest}: empty manifest")
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    """A line that carries YAML content (not blank, not only a comment)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def set_pins_text(text: str, model: str, hashes: dict[str, str]) -> str:
    """Return config `text` with ``models.<model>.sha256`` set to `hashes` (block-style YAML).

    Replaces an existing ``sha256:`` mapping of the model or appends one after the model's last
    line. Raises PinError if the layout is not the plain block style this edit understands.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        top = next(i for i, line in enumerate(lines) if re.match(r"^models:\s*(#.*)?$", line))
    except StopIteration:
        raise PinError("no top-level 'models:' block (block style) in the config") from None
    end = next(
        (j for j in range(top + 1, len(lines)) if _content(lines[j]) and _indent(lines[j]) == 0), len(lines)
    )
    children = [j for j in range(top + 1, end) if _content(lines[j])]
    if not children:
        raise PinError("'models:' is empty")
    child = _indent(lines[children[0]])
    key = re.compile(rf"^ {{{child}}}(['\"]?){re.escape(model)}\1:\s*(#.*)?$")
    start = next((j for j in children if key.match(lines[j])), None)
    if start is None:
        raise PinError(
            f"models.{model}: not found as a block-style entry (`{' ' * child}{model}:` on its own line)"
        )
    body = [j for j in range(start + 1, end) if _content(lines[j])]
    stop = next((k for k, j in enumerate(body) if _indent(lines[j]) <= child), len(body))
    body = body[:stop]
    if not body:
        raise PinError(f"models.{model}: empty entry")
    field = _indent(lines[body[0]])
    new_block = [f"{' ' * field}sha256:\n"] + [
        f"{' ' * (field + 2)}{json.dumps(rel)}: {hashes[rel]}\n" for rel in sorted(hashes)
    ]
    existing = next(
        (j for j in body if _indent(lines[j]) == field and re.match(r"^\s*sha256:", lines[j])), None
    )
    if existing is not None:
        inner = [j for j in body if j > existing]
        last = existing
        for j in inner:
            if _indent(lines[j]) <= field:
                break
            last = j
        return "".join(lines[:existing] + new_block + lines[last + 1 :])
    last = body[-1]
    return "".join(lines[: last + 1] + new_block + lines[last + 1 :])


def _without_pins(cfg: dict, model: str) -> dict:
    cfg = json.loads(json.dumps(cfg))
    cfg["models"][model].pop("sha256", None)
    return cfg


def pin(
    config: str | Path, model: str, manifest: str | Path | None = None, verify: bool = True
) -> dict[str, str]:
    """Write the hashes of `manifest` into `config` as models.<model>.sha256; return them."""
    config = Path(config)
    manifest = Path(manifest) if manifest else Path("resources/models") / f"{model}.sha256"
    if not manifest.exists():
        raise PinError(f"{manifest}: no such manifest; fetch the model first (snakemake {manifest})")
    old_text = config.read_text()
    old = yaml.safe_load(old_text)
    if model not in (old.get("models") or {}):
        raise PinError(
            f"{config}: models.{model} is not defined; defined: {', '.join(old.get('models') or {})}"
        )
    if verify:
        verify_manifest(manifest)
    hashes = manifest_hashes(manifest, model)
    new_text = set_pins_text(old_text, model, hashes)
    new = yaml.safe_load(new_text)
    if new["models"][model].get("sha256") != hashes or _without_pins(new, model) != _without_pins(old, model):
        raise PinError(
            f"{config}: editing models.{model}.sha256 as text would change other keys; edit it by hand"
        )
    with atomic_path(config) as tmp:
        tmp.write_text(new_text)
        tmp.chmod(config.stat().st_mode & 0o777)
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffrep.pin_hashes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", required=True, help="the study config to edit (e.g. config.yaml)")
    parser.add_argument("--model", required=True, help="the models entry to pin (e.g. sd21)")
    parser.add_argument("--manifest", help="manifest to read (default resources/models/{model}.sha256)")
    parser.add_argument(
        "--no-verify", action="store_true", help="do not re-check the folder against the manifest"
    )
    args = parser.parse_args(argv)
    try:
        hashes = pin(args.config, args.model, args.manifest, verify=not args.no_verify)
    except (PinError, ChecksumError) as err:
        print(f"pin_hashes: {err}", file=sys.stderr)
        return 1
    print(f"pinned {len(hashes)} sha256 of model {args.model} in {args.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
