"""``python -m diffrep.app --study mini``: serve the results browser and try-a-prompt app."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from diffrep.app import adapter
from diffrep.app.results import Study
from diffrep.app.tryprompt import Engine

log = logging.getLogger("diffrep.app")
DEFAULT_HOST = "127.0.0.1"
NO_AUTH_WARNING = (
    "listening on {host}, which is not this machine only: the app has no authentication, so anyone "
    "who can reach {host}:{port} can browse the results and run the models"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str | None, port: int) -> tuple[str, str | None]:
    """(host to bind, warning or None). Without --host the app binds 127.0.0.1 only."""
    if host is None:
        return DEFAULT_HOST, None
    return host, None if is_loopback(host) else NO_AUTH_WARNING.format(host=host, port=port)


def find_config(study: str, workdir: Path) -> Path | None:
    """The study's config: profiles/{study}/study.yaml, tests/{study}/config.yaml, or config.yaml."""
    import yaml

    for rel in (f"profiles/{study}/study.yaml", f"tests/{study}/config.yaml", "config.yaml"):
        path = workdir / rel
        if path.is_file():
            with open(path) as f:
                if (yaml.safe_load(f) or {}).get("study") == study:
                    return path
    return None


def snakemake_command(study: str, config_path: Path | None, workdir: Path) -> str:
    """How the study is run, for the app's messages: ``snakemake`` and the options that pick the study."""
    if config_path is None:
        return f"snakemake --profile profiles/{study}"
    path = Path(config_path).resolve()
    rel = path.relative_to(workdir.resolve()) if path.is_relative_to(workdir.resolve()) else path
    if rel == Path(f"profiles/{study}/study.yaml"):
        return f"snakemake --profile profiles/{study}"
    if rel == Path("config.yaml"):
        return "snakemake"
    return f"snakemake --configfile {rel} --replace-workflow-config"


def default_cache(study: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "diffrep-app" / study


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m diffrep.app", description=__doc__)
    p.add_argument("--study", required=True, help="the study name: results/{study}/ is served")
    p.add_argument(
        "--host",
        default=None,
        help=f"address to listen on (default {DEFAULT_HOST}); "
        "anything but localhost exposes the app, which has no authentication",
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--results", type=Path, default=Path("results"), help="the results folder (default results)"
    )
    p.add_argument(
        "--resources", type=Path, default=Path("resources"), help="models and datasets (default resources)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the study's config file (default: found from the study name under the working folder)",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="validation prompt set, one prompt per line (default: caption [0] of the first 4 training images)",
    )
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="do not load the base model and training indexes in the background at start",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder for the app's generated images (default ~/.cache/diffrep-app/{study})",
    )
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """(Study, Engine) from the parsed arguments; SystemExit with a message on bad ones."""
    config_path = args.config or find_config(args.study, Path.cwd())
    config = None
    if config_path is not None:
        try:
            config = adapter.load_config(config_path)
        except Exception as err:  # noqa: BLE001 - any invalid config: one line, then exit
            raise SystemExit(f"diffrep.app: {config_path}: invalid study config: {err}") from None
    else:
        log.warning("no config found for study %s: pass --config; try-a-prompt needs it", args.study)
    command = snakemake_command(args.study, config_path, Path.cwd())
    study = Study(args.study, args.results / args.study, args.resources, config, command)
    try:
        engine = Engine(study, args.cache or default_cache(args.study))
    except ValueError as err:
        raise SystemExit(f"diffrep.app: {err}") from None
    return study, engine


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    host, warning = check_host(args.host, args.port)
    if warning:
        log.warning(warning)
    study, engine = build(args)
    if not args.no_warmup:
        import threading

        threading.Thread(target=engine.warm_up, name="warm-up", daemon=True).start()
    import uvicorn

    from diffrep.app.server import make_app

    log.info(
        "serving %s (read-only) on http://%s:%d/, images of the app in %s",
        study.root,
        host,
        args.port,
        engine.cache,
    )
    prompts = None
    if args.prompts is not None:
        from diffrep.app.validation import read_prompt_file

        try:
            prompts = read_prompt_file(args.prompts)
        except ValueError as err:
            raise SystemExit(f"diffrep.app: {err}") from None
    uvicorn.run(make_app(study, engine, prompts), host=host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
