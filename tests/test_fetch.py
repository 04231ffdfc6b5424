"""Model acquisition without network: a local HTTP server for url sources; the real Hugging Face and
ModelScope clients against a local hub (tests/hubserver.py); a stub client where only diffrep's own
logic is under test."""

import copy
import hashlib
import http.server
import json
import logging
import re
import threading
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_workflow, job_counts, load_yaml, snakemake
from diffrep import builders, fetch
from diffrep import config as dconf
from diffrep.checksums import read_manifest, verify_manifest
from hubserver import HubRepo, HubServer, fetch_job

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
SECRET = "hf_NeverLogThisTokenValue123"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """An HTTP server on 127.0.0.1 with scripted behaviour per path.

    `mode[path]`: "good" (Range supported), "norange" (ignores Range), "truncate" (announces the
    full length, sends half, closes), "corrupt" (one byte flipped), "fail:N" (503 for the first N
    requests, then good). `requests` records (path, Range header) of every request.
    """

    def __init__(self):
        self.mode, self.requests, self.counts = {}, [], {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                n = server.counts[self.path] = server.counts.get(self.path, 0) + 1
                mode = server.mode.get(self.path, "missing")
                data = PAYLOAD
                if mode == "missing":
                    self.send_error(404)
                    return
                if mode.startswith("fail:") and n <= int(mode[5:]):
                    self.send_error(503)
                    return
                if mode == "corrupt":
                    data = PAYLOAD[:1000] + bytes([PAYLOAD[1000] ^ 1]) + PAYLOAD[1001:]
                if mode == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                start = 0
                if rng and mode != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


FAST = {"attempts": 3, "backoff": 0.0, "timeout": 10}


def url_model(server, path, mode, **src):
    server.mode[path] = mode
    return {"kind": "sscd", "sources": [{"type": "url", "url": server.url(path), **src}]}


def fetch_into(tmp_path, name, spec, **kw):
    root = tmp_path / "resources/models"
    return fetch.fetch_model(
        name, spec, root / name, root / f"{name}.sha256", download_options=FAST, **kw
    ), root


def assert_no_output(root, name):
    assert not (root / name).exists()
    assert not (root / f"{name}.sha256").exists()
    assert not list(root.glob(f".{name}.*"))  # no staging folder left behind


# ---------------------------------------------------------------- url source


def test_url_good_file_verified_against_pin(server, tmp_path):
    spec = url_model(server, "/m.torchscript.pt", "good")
    spec["sha256"] = {"m.torchscript.pt": PAYLOAD_SHA}
    info, root = fetch_into(tmp_path, "sscd_x", spec)
    assert (root / "sscd_x/m.torchscript.pt").read_bytes() == PAYLOAD
    assert (root / "sscd_x.sha256").read_text() == f"{PAYLOAD_SHA}  sscd_x/m.torchscript.pt\n"
    assert verify_manifest(root / "sscd_x.sha256")
    assert info["source"].startswith("url http://127.0.0.1")
    assert not (root / ".partial/sscd_x").exists()


def test_url_corrupted_file_fails_naming_file_and_both_hashes(server, tmp_path):
    spec = url_model(server, "/m.torchscript.pt", "corrupt")
    spec["sha256"] = {"m.torchscript.pt": PAYLOAD_SHA}
    with pytest.raises(fetch.FetchError) as err:
        fetch_into(tmp_path, "sscd_x", spec)
    bad = PAYLOAD[:1000] + bytes([PAYLOAD[1000] ^ 1]) + PAYLOAD[1001:]
    msg = str(err.value)
    assert "m.torchscript.pt" in msg and PAYLOAD_SHA in msg and sha(bad) in msg
    root = tmp_path / "resources/models"
    assert_no_output(root, "sscd_x")
    assert not list((root / ".partial").rglob("*.part"))  # a bad download is not kept for resuming


def test_url_hash_prefix_is_checked(server, tmp_path):
    spec = url_model(server, "/pt_inception-2015-12-05-deadbeef.pth", "good", hash_prefix="deadbeef")
    spec["kind"] = "fid_inception"
    with pytest.raises(
        fetch.FetchError,
        match=rf"expected sha256 starting with deadbeef \(hash_prefix\), actual {PAYLOAD_SHA}",
    ):
        fetch_into(tmp_path, "fid", spec)
    spec["sources"][0].update(url=server.url("/pt_inception-ok.pth"), hash_prefix=PAYLOAD_SHA[:8])
    server.mode["/pt_inception-ok.pth"] = "good"
    _, root = fetch_into(tmp_path, "fid", spec)
    assert read_manifest(root / "fid.sha256") == {"fid/pt_inception-ok.pth": PAYLOAD_SHA}


def test_url_truncated_then_resumed_with_range(server, tmp_path):
    spec = url_model(server, "/m.torchscript.pt", "truncate")
    spec["sha256"] = {"m.torchscript.pt": PAYLOAD_SHA}
    with pytest.raises(fetch.FetchError, match="download failed after 3 attempt"):
        fetch_into(tmp_path, "sscd_x", spec)
    root = tmp_path / "resources/models"
    assert_no_output(root, "sscd_x")
    part = root / ".partial/sscd_x/m.torchscript.pt.part"
    assert part.stat().st_size == len(PAYLOAD) // 2  # kept for the next run (Snakemake retry)
    server.mode["/m.torchscript.pt"] = "good"
    server.requests.clear()
    fetch_into(tmp_path, "sscd_x", spec)
    assert server.requests == [("/m.torchscript.pt", f"bytes={len(PAYLOAD) // 2}-")]
    assert (root / "sscd_x/m.torchscript.pt").read_bytes() == PAYLOAD
    assert not part.exists()


def test_url_server_ignoring_range_restarts(server, tmp_path):
    part = tmp_path / "x.part"
    part.write_bytes(b"garbage that is not the start of the file")
    server.mode["/f"] = "norange"
    out = fetch.download_url(server.url("/f"), tmp_path / "f", sha256=PAYLOAD_SHA, part=part, **FAST)
    assert out.read_bytes() == PAYLOAD


def test_url_server_fails_then_recovers(server, tmp_path, caplog):
    spec = url_model(server, "/m.torchscript.pt", "fail:2")
    with caplog.at_level(logging.INFO, logger="diffrep"):
        _, root = fetch_into(tmp_path, "sscd_x", spec)
    assert (root / "sscd_x/m.torchscript.pt").read_bytes() == PAYLOAD
    assert server.counts["/m.torchscript.pt"] == 3
    assert "attempt 1/3 failed (HTTP 503" in caplog.text
    assert "no sha256 pinned" in caplog.text  # unpinned: the manifest records what came


def test_url_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        fetch.download_url(server.url("/nothing"), tmp_path / "f", **FAST)
    assert server.counts["/nothing"] == 1


# ---------------------------------------------------------------- hub sources

REPO_FILES = {
    "model_index.json": json.dumps(
        {
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
        }
    ).encode(),
    "unet/config.json": b"{}",
    "unet/diffusion_pytorch_model.safetensors": b"unet fp32",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"unet fp16",
    "unet/diffusion_pytorch_model.bin": b"pickle",
    "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors": b"te fp32",
    "text_encoder/model.fp16.safetensors": b"te fp16",
    "text_encoder/pytorch_model.bin": b"pickle",
    "tokenizer/vocab.json": b"{}",
    "tokenizer/merges.txt": b"#",
    "scheduler/scheduler_config.json": b"{}",
    "v2-1_768-ema-pruned.ckpt": b"ckpt",
    "v2-1_768-ema-pruned.safetensors": b"single-file checkpoint",
    "README.md": b"card",
}


def sd_spec(*sources, **extra):
    return {"kind": "diffusers", "sources": list(sources), **extra}


HF = {"type": "huggingface", "repo": "stabilityai/stable-diffusion-2-1", "revision": "5cae40e6"}
MS = {"type": "modelscope", "repo": "AI-ModelScope/stable-diffusion-2-1", "revision": "master"}
WANTED = {
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
}
UNET = "unet/diffusion_pytorch_model.safetensors"

# ---- the real clients (huggingface_hub, modelscope) against a local hub (tests/hubserver.py)
#
# Each test runs rule fetch_model's script in a fresh process whose environment points both clients
# at the local hub (HF_ENDPOINT, MODELSCOPE_ENDPOINT) and every cache and home into tmp_path: the
# code path, and the way settings reach the clients, of a cluster user's first run.


def hub_files(unet: bytes, text_encoder: bytes) -> dict[str, bytes]:
    """One commit of the SD repo: REPO_FILES with these UNet and text-encoder weights."""
    return {**REPO_FILES, UNET: unet, "text_encoder/model.safetensors": text_encoder}


V1_COMMIT = hashlib.sha1(b"v1.0").hexdigest()
MAIN_COMMIT = hashlib.sha1(b"main").hexdigest()
V1 = hub_files(PAYLOAD, b"text encoder of v1.0")  # a 1 MiB UNet
MAIN = hub_files(PAYLOAD[::-1], b"text encoder of main")
TOKEN_ENV = {"huggingface": "HF_TOKEN", "modelscope": "MODELSCOPE_API_TOKEN"}
REPO_ID = {"huggingface": HF["repo"], "modelscope": MS["repo"]}
GRANTED = "granted-token-4711"  # a token whose account may read a gated repo
STORED = "stored-login-token-0815"  # what `hf auth login` / `modelscope login` would have stored


@pytest.fixture
def hub():
    with HubServer() as h:
        yield h


def sd_repo(hub: HubServer, v1: dict[str, bytes] = V1, **kw) -> HubRepo:
    """The SD repo, the same on both hubs: `main` / `master` at one commit, tag `v1.0` at another."""
    repo = HubRepo(
        commits={V1_COMMIT: v1, MAIN_COMMIT: MAIN},
        refs={"main": MAIN_COMMIT, "master": MAIN_COMMIT, "v1.0": V1_COMMIT},
        **kw,
    )
    for name, repo_id in REPO_ID.items():
        hub.add(name, repo_id, repo)
    return repo


def hub_source(hub_name: str, revision: str, repo: str | None = None) -> dict:
    return {"type": hub_name, "repo": repo or REPO_ID[hub_name], "revision": revision}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under `root` (binary ones too) whose bytes contain `secret`."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes())


def store_logins(work: Path, hub: HubServer) -> None:
    """Leave a stored Hugging Face and ModelScope login (token STORED) where the job's clients look."""
    from modelscope_hub.config import HubConfig

    (work / "hf").mkdir(parents=True, exist_ok=True)
    (work / "hf/token").write_text(STORED)
    home, cache = work / "modelscope/home", work / "modelscope/cache"
    HubConfig(endpoint=hub.url, token=STORED, config_dir=home, cache_dir=cache).save_token(STORED)


def assert_failed_cleanly(run) -> None:
    """The job failed and left no model folder, manifest or staging folder."""
    assert run.returncode != 0, run.log[-3000:]
    assert_no_output(run.out_dir.parent, run.out_dir.name)


@pytest.mark.parametrize(
    "hub_name, revision",
    [("huggingface", V1_COMMIT), ("huggingface", "v1.0"), ("modelscope", "v1.0")],
    ids=["hf-commit", "hf-tag", "ms-tag"],
)
def test_real_client_fetches_the_revision_and_only_the_needed_files(hub, tmp_path, hub_name, revision):
    sd_repo(hub)
    run = fetch_job(
        tmp_path, hub, "sd21", sd_spec(hub_source(hub_name, revision)), **{TOKEN_ENV[hub_name]: SECRET}
    )
    assert run.returncode == 0, run.log[-3000:]
    assert folder_bytes(run.out_dir) == {rel: V1[rel] for rel in WANTED}  # v1.0's bytes, not main's
    assert read_manifest(run.manifest) == {f"sd21/{rel}": sha(V1[rel]) for rel in WANTED}
    fetched = [path for path, _ in hub.downloads()]
    assert UNET in fetched and set(fetched) <= WANTED and len(fetched) == len(set(fetched))  # allow_patterns
    repo_requests = [s for s in hub.seen if s.listener == "hub" and REPO_ID[hub_name] in s.path]
    assert repo_requests and {s.authorization for s in repo_requests} == {f"Bearer {SECRET}"}
    if hub_name == "huggingface":
        commits = {s.path.split("/")[4] for s in hub.seen if "/resolve/" in s.path}
        assert commits == {V1_COMMIT}  # every file at the commit the revision names
        looked_up = [s.path for s in hub.seen if "/revision/" in s.path]  # a commit needs no lookup
        assert looked_up == ([] if revision == V1_COMMIT else [f"/api/models/{HF['repo']}/revision/v1.0"] * 2)
        assert f"revision {revision} resolves to commit {V1_COMMIT}" in run.log
        assert [s.authorization for s in hub.seen if s.listener == "cdn"] == [None, None]  # not off the hub
        assert (tmp_path / f"hf/hub/models--stabilityai--stable-diffusion-2-1/snapshots/{V1_COMMIT}").is_dir()
    else:
        assert {s.query["Revision"] for s in hub.seen if "Revision" in s.query} == {"v1.0"}
        assert (
            tmp_path / "modelscope/cache/models/AI-ModelScope--stable-diffusion-2-1/snapshots/v1.0"
        ).is_dir()
    assert not (tmp_path / "home/.cache").exists()  # nothing went to a default cache
    assert files_holding(tmp_path, SECRET) == [] and SECRET not in run.stderr
    assert f"token from {TOKEN_ENV[hub_name]}" in run.log


@pytest.mark.parametrize(
    "hub_name, token, why",
    [
        ("huggingface", None, "(HF_TOKEN is not set)"),
        ("huggingface", SECRET, "(the account of the token in HF_TOKEN has not been granted access)"),
        ("modelscope", None, "(HTTP 401: MODELSCOPE_API_TOKEN is not set)"),
        ("modelscope", SECRET, "(HTTP 403: the account of the token in MODELSCOPE_API_TOKEN has no access)"),
    ],
    ids=["hf-401", "hf-403", "ms-401", "ms-403"],
)
def test_gated_repo_says_what_to_do_and_stored_logins_stay_unused(hub, tmp_path, hub_name, token, why):
    sd_repo(hub, gated=True, granted=frozenset({GRANTED}))
    store_logins(tmp_path, hub)
    env = {TOKEN_ENV[hub_name]: token} if token else {}
    run = fetch_job(tmp_path, hub, "sd21", sd_spec(hub_source(hub_name, "v1.0")), **env)
    assert_failed_cleanly(run)
    repo = REPO_ID[hub_name]
    if hub_name == "huggingface":
        assert (
            f"huggingface {repo} is a gated repository and refused the download {why}. Accept the " in run.log
        )
        assert f"licence on https://huggingface.co/{repo} (logged in to Hugging Face" in run.log
        assert "then export HF_TOKEN=<a read token of that account> and re-run" in run.log
    else:
        assert (
            f"modelscope {repo} refused the download {why}. If the model asks for it, accept its " in run.log
        )
        assert (
            f"licence on https://modelscope.cn/models/{repo} (logged in to ModelScope); then export "
            in run.log
        )
        assert (
            "MODELSCOPE_API_TOKEN=<an access token of that account, from https://modelscope.cn/my/" in run.log
        )
    sent = {s.authorization for s in hub.seen if repo in s.path}
    assert sent == {f"Bearer {token}" if token else None}  # the environment's token, never a stored one
    assert not any(STORED in f"{s.authorization}{s.cookie}" for s in hub.seen)
    assert files_holding(tmp_path, SECRET) == [] and SECRET not in run.stderr


def test_missing_repo_or_revision_is_named_and_the_next_source_serves(hub, tmp_path):
    sd_repo(hub)
    spec = sd_spec(
        hub_source("modelscope", "master", repo="AI-ModelScope/no-such-model"),
        hub_source("huggingface", "v9.9"),
        hub_source("huggingface", "main", repo="stabilityai/no-such-model"),
        hub_source("huggingface", "v1.0"),
    )
    run = fetch_job(tmp_path, hub, "sd21", spec)
    assert run.returncode == 0, run.log[-3000:]
    assert folder_bytes(run.out_dir) == {rel: V1[rel] for rel in WANTED}
    assert (
        "model sd21: served by source 4/4 (huggingface stabilityai/stable-diffusion-2-1@v1.0); earlier source "
        "modelscope AI-ModelScope/no-such-model@master failed: FetchError: modelscope repository "
        "AI-ModelScope/no-such-model or its revision 'master' was not found (MODELSCOPE_API_TOKEN is not set). "
        "Check repo and revision of this source in models.sd21.sources; if the repository is private, export "
        "MODELSCOPE_API_TOKEN=<a token of an account that can read it> and re-run; earlier source "
        "huggingface stabilityai/stable-diffusion-2-1@v9.9 failed: FetchError: huggingface "
        "stabilityai/stable-diffusion-2-1 has no revision 'v9.9': set the revision of this source in "
        "models.sd21.sources to a branch, a tag or a commit of that repository (its history: "
        "https://huggingface.co/stabilityai/stable-diffusion-2-1/commits/main); earlier source huggingface "
        "stabilityai/no-such-model@main failed: FetchError: huggingface repository stabilityai/no-such-model "
        "was not found (HF_TOKEN is not set). Check the repo of this source in models.sd21.sources; if the "
        "repository is private, export HF_TOKEN=<a token of an account that can read it> and re-run"
    ) in run.log


@pytest.mark.parametrize("hub_name", ["huggingface", "modelscope"])
def test_interrupted_transfer_is_resumed_with_a_range_request(hub, tmp_path, hub_name):
    """The first answer for a 24 MiB UNet announces it all, sends 12 MiB and hangs up: the client asks
    for the rest. (huggingface_hub keeps what it received in pieces of its 10 MiB read size,
    ``constants.DOWNLOAD_CHUNK_SIZE``: it resumes at 10 MiB, and a file cut before its first 10 MiB
    starts over; ModelScope's client resumes at the last byte received.)"""
    big = bytes(range(256)) * (96 * 1024)
    repo = sd_repo(hub, v1={**V1, UNET: big})
    repo.faults[UNET] = "cut"
    run = fetch_job(tmp_path, hub, "sd21", sd_spec(hub_source(hub_name, "v1.0")))
    assert run.returncode == 0, run.log[-3000:]
    assert (run.out_dir / UNET).read_bytes() == big
    resumed_at = 10 * 2**20 if hub_name == "huggingface" else len(big) // 2
    assert [s.range for path, s in hub.downloads() if path == UNET] == [None, f"bytes={resumed_at}-"]


def test_modelscope_resumes_a_partial_file_in_the_next_job(hub, tmp_path):
    """A job that fails mid-file (client retries off) leaves ModelScope's partial file in its cache; the
    next job (Snakemake's retry) asks only for the rest."""
    repo = sd_repo(hub)
    repo.faults[UNET] = "cut"
    spec = sd_spec(hub_source("modelscope", "v1.0"))
    first = fetch_job(tmp_path, hub, "sd21", spec, MODELSCOPE_DOWNLOAD_MAX_RETRIES="0")
    assert_failed_cleanly(first)
    assert "FileDownloadError" in first.log and f"- {UNET}: " in first.log
    repo.faults.clear()
    second = fetch_job(tmp_path, hub, "sd21", spec, MODELSCOPE_DOWNLOAD_MAX_RETRIES="0")
    assert second.returncode == 0, second.log[-3000:]
    assert (second.out_dir / UNET).read_bytes() == V1[UNET]
    assert [s.range for path, s in hub.downloads() if path == UNET] == [None, f"bytes={len(PAYLOAD) // 2}-"]


@pytest.mark.parametrize("hub_name", ["huggingface", "modelscope"])
def test_file_served_shorter_than_declared_fails_naming_it(hub, tmp_path, hub_name):
    """The UNet comes whole but half as long as the listing and the HEAD declare: the client refuses it."""
    repo = sd_repo(hub)
    repo.faults[UNET] = "short"
    run = fetch_job(tmp_path, hub, "sd21", sd_spec(hub_source(hub_name, "v1.0")))
    assert_failed_cleanly(run)
    full, half = len(PAYLOAD), len(PAYLOAD) // 2
    if hub_name == "huggingface":
        assert (
            f"OSError: Consistency check failed: file should be of size {full} but has size {half} "
            "(diffusion_pytorch_model.safetensors)"
        ) in run.log
    else:
        assert f"Server announced {half} bytes for {UNET} but the repository lists {full} bytes" in run.log


def flipped(data: bytes) -> bytes:
    """`data` with the middle byte changed, as hubserver's ``corrupt`` fault serves it."""
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1 :]


def test_file_corrupted_in_transit_fails_on_the_listed_or_pinned_sha256(hub, tmp_path):
    """One byte of the UNet flipped on the wire, the hubs' listings right: ModelScope's client checks the
    listed sha256; the Hugging Face client does not, and diffrep's pin names the file and both hashes."""
    repo = sd_repo(hub)
    repo.faults[UNET] = "corrupt"
    pins = {rel: sha(V1[rel]) for rel in WANTED}
    spec = sd_spec(hub_source("modelscope", "v1.0"), hub_source("huggingface", "v1.0"), sha256=pins)
    run = fetch_job(tmp_path, hub, "sd21", spec)
    assert_failed_cleanly(run)
    good, bad = sha(V1[UNET]), sha(flipped(V1[UNET]))
    assert (
        f"Hash mismatch for diffusion_pytorch_model.safetensors: expected {good[:16]}..., got {bad[:16]}"
        in run.log
    )
    assert f"sd21/{UNET}: sha256 mismatch: expected {good}, actual {bad}" in run.log


def test_hub_content_other_than_pinned_fails_on_every_source_leaving_nothing(hub, tmp_path):
    """Both hubs serve, consistently with their listings, a truncated UNet at v1.0 (a changed or broken
    upload): the clients accept it, diffrep's pins refuse it on each source."""
    truncated = PAYLOAD[: len(PAYLOAD) // 3]
    sd_repo(hub, v1={**V1, UNET: truncated})
    pins = {rel: sha(V1[rel]) for rel in WANTED}
    spec = sd_spec(hub_source("modelscope", "v1.0"), hub_source("huggingface", "v1.0"), sha256=pins)
    run = fetch_job(tmp_path, hub, "sd21", spec)
    assert_failed_cleanly(run)
    mismatch = f"sd21/{UNET}: sha256 mismatch: expected {sha(PAYLOAD)}, actual {sha(truncated)}"
    error = run.log[run.log.index("ERROR diffrep.fetch: model sd21: no source provided") :]
    assert error.split("Traceback")[0].count(mismatch) == 2


# ---- a stand-in for the clients, where only diffrep's own logic is under test


class StubClient:
    """Stands in for a hub client's snapshot_download: records its calls; writes the whole repo into
    a cache snapshot (as a cache may hold more than asked) unless it is told to fail."""

    def __init__(self, cache: Path, fail: Exception | None = None, files=REPO_FILES):
        self.cache, self.fail, self.files, self.calls = cache, fail, files, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        if kwargs.get("dry_run"):
            return [
                type(
                    "Info",
                    (),
                    {"filename": f, "file_size": len(d), "will_download": True, "commit_hash": "c0ffee"},
                )()
                for f, d in self.files.items()
            ]
        snap = self.cache / "snapshot"
        for rel, data in self.files.items():
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            (snap / rel).write_bytes(data)
        return str(snap)


def test_variant_fp16_downloads_only_fp16_weights(tmp_path, monkeypatch):
    hub = StubClient(tmp_path / "hfcache")
    monkeypatch.setattr(fetch, "hf_snapshot_download", hub)
    _, root = fetch_into(tmp_path, "sd21", sd_spec(HF, variant="fp16"))
    weights = sorted(p.name for p in (root / "sd21").rglob("*.safetensors"))
    assert weights == ["diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"]
    assert all(c["allow_patterns"] == fetch.allow_patterns("diffusers", "fp16") for c in hub.calls)


def test_token_never_logged_even_in_errors(tmp_path, monkeypatch, caplog):
    """A hub error that echoes the token: the error and the log show it masked."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(
        fetch,
        "hf_snapshot_download",
        StubClient(tmp_path, fail=RuntimeError(f"401 Unauthorized for token {SECRET}")),
    )
    with caplog.at_level(logging.INFO, logger="diffrep"), pytest.raises(fetch.FetchError) as err:
        fetch_into(tmp_path, "sd21", sd_spec(HF))
    assert "RuntimeError: 401 Unauthorized for token ***" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_incomplete_repo_falls_back(tmp_path, monkeypatch):
    """A repo without safetensors for a component is not a usable source."""
    only_bin = {k: v for k, v in REPO_FILES.items() if not k.startswith("unet/diffusion_pytorch_model.")}
    only_bin["unet/diffusion_pytorch_model.bin"] = b"pickle"
    monkeypatch.setattr(fetch, "ms_snapshot_download", StubClient(tmp_path / "ms", files=only_bin))
    monkeypatch.setattr(fetch, "hf_snapshot_download", StubClient(tmp_path / "hf"))
    info, root = fetch_into(tmp_path, "sd21", sd_spec(MS, HF))
    assert info["index"] == 2
    assert "component 'unet' has no safetensors weights" in info["failed"][0][1]


def test_pins_cover_every_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "hf_snapshot_download", StubClient(tmp_path / "hf"))
    pins = {rel: sha(REPO_FILES[rel]) for rel in WANTED - {"tokenizer/merges.txt"}}
    with pytest.raises(fetch.FetchError, match="tokenizer/merges.txt: not in the expected list"):
        fetch_into(tmp_path, "sd21", sd_spec(HF, sha256=pins))
    pins["tokenizer/merges.txt"] = sha(REPO_FILES["tokenizer/merges.txt"])
    _, root = fetch_into(tmp_path, "sd21", sd_spec(HF, sha256=pins))
    assert read_manifest(root / "sd21.sha256") == {f"sd21/{k}": v for k, v in pins.items()}


# ---------------------------------------------------------------- build source


def fake_builder(out_dir, seed, width=1):
    """A registered stand-in for diffrep.tinysd.build_mini_sd: a minimal pipeline folder."""
    out = Path(out_dir)
    for rel, data in REPO_FILES.items():
        if rel in WANTED:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
    (out / "build_info.json").write_text(json.dumps({"seed": seed, "width": width}))
    return out


def broken_builder(out_dir, seed):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "model_index.json").write_text("{}")
    raise RuntimeError("training diverged")


def test_build_source_calls_the_registered_builder(tmp_path, monkeypatch):
    monkeypatch.setitem(builders.MODEL_BUILDERS, "fake_sd", f"{__name__}:fake_builder")
    monkeypatch.setitem(builders.MODEL_BUILDERS, "broken_sd", f"{__name__}:broken_builder")
    spec = sd_spec(
        {"type": "build", "builder": "broken_sd"},
        {"type": "build", "builder": "fake_sd", "options": {"width": 3}},
    )
    info, root = fetch_into(tmp_path, "mini", spec, seed=7)
    assert json.loads((root / "mini/build_info.json").read_text()) == {"seed": 7, "width": 3}
    assert "RuntimeError: training diverged" in info["failed"][0][1]
    assert "mini/build_info.json" in read_manifest(root / "mini.sha256")
    verify_manifest(root / "mini.sha256")


def test_unknown_builder_is_reported(tmp_path):
    with pytest.raises(fetch.FetchError, match="unknown model builder 'nope'"):
        fetch_into(tmp_path, "mini", sd_spec({"type": "build", "builder": "nope"}))


# ---------------------------------------------------------------- the rules


def test_paper_dry_run_fetches_every_model(workflow_copy, paper_config):
    proc = snakemake(["-n", "models"], cwd=workflow_copy, check=True)
    counts = job_counts(proc.stdout)
    assert counts.get("fetch_model") == len(paper_config["models"]), proc.stdout[-2000:]
    for name in paper_config["models"]:
        assert f"resources/models/{name}.sha256" in proc.stdout
    # the full study fetches every model it uses (and no other)
    used = {
        paper_config["base_model"],
        paper_config["fid"]["model"],
        dconf.fill_defaults(copy.deepcopy(paper_config))["clipscore"]["model"],
        paper_config["captions"]["blip"]["model"] if "captions" in paper_config else "blip",
    }
    used |= {e["model"] for e in paper_config["embedders"].values() if "model" in e}
    used |= {
        r.split("-", 1)[1]
        for s in paper_config["sweeps"].values()
        for r in s["runs"]
        if r.startswith("pretrained-")
    }
    used |= {s["model"] for s in paper_config.get("webscale", {}).get("searches", [])}
    full = snakemake(["-n"], cwd=workflow_copy, check=True).stdout
    fetched = set(re.findall(r"output: resources/models/([\w-]+), resources/models/\1\.sha256", full))
    assert fetched == used and job_counts(full)["fetch_model"] == len(used)


def test_fetch_rule_verifies_and_fails_cleanly(server, tmp_path):
    """The fetch_model rule end to end: a pinned good file passes; a pin mismatch fails the job,
    names the file and both hashes in the log, and leaves neither folder nor manifest."""
    wf = copy_workflow(tmp_path / "wf")
    server.mode["/sscd_toy.torchscript.pt"] = "good"
    cfg = load_yaml(REPO / "tests/micro/config.yaml")
    cfg["models"]["sscd_toy"] = {
        "kind": "sscd",
        "sources": [{"type": "url", "url": server.url("/sscd_toy.torchscript.pt")}],
        "sha256": {"sscd_toy.torchscript.pt": PAYLOAD_SHA},
    }
    (wf / "toy.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--cores", "1", "--configfile", "toy.yaml", "--replace-workflow-config"]
    snakemake([*args, "resources/models/sscd_toy.sha256"], cwd=wf, check=True)
    assert verify_manifest(wf / "resources/models/sscd_toy.sha256")
    cfg["models"]["sscd_toy"]["sha256"] = {"sscd_toy.torchscript.pt": "b" * 64}
    (wf / "toy.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake([*args, "--forceall", "--retries", "0", "resources/models/sscd_toy.sha256"], cwd=wf)
    assert proc.returncode != 0
    log = (wf / "logs/models/fetch_sscd_toy.log").read_text()
    assert f"expected sha256 {'b' * 64} (pinned), actual {PAYLOAD_SHA}" in log
    assert not (wf / "resources/models/sscd_toy").exists()
    assert not (wf / "resources/models/sscd_toy.sha256").exists()


SDXL_FILES = {
    "model_index.json": json.dumps(
        {
            "_class_name": "StableDiffusionXLPipeline",
            "unet": ["diffusers", "U"],
            "text_encoder_2": ["transformers", "T"],
            "tokenizer_2": ["transformers", "C"],
            "vae": ["diffusers", "A"],
        }
    ).encode(),
    "unet/config.json": b"{}",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"unet fp16",
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.fp16.safetensors": b"vae fp16",
    "text_encoder_2/config.json": b"{}",
    "text_encoder_2/model.fp16.safetensors": b"te2 fp16",
    "text_encoder_2/model.safetensors": b"te2 fp32",
    "tokenizer_2/vocab.json": b"{}",
    "tokenizer_2/merges.txt": b"#",
    "scheduler/scheduler_config.json": b"{}",
}


def test_sdxl_second_text_encoder_and_tokenizer_are_fetched_and_required(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "hf_snapshot_download", StubClient(tmp_path / "hub", files=SDXL_FILES))
    _, root = fetch_into(tmp_path, "sdxl", sd_spec(HF, variant="fp16"))
    got = {p.relative_to(root / "sdxl").as_posix() for p in (root / "sdxl").rglob("*") if p.is_file()}
    assert got == set(SDXL_FILES) - {"text_encoder_2/model.safetensors"}
    broken = {k: v for k, v in SDXL_FILES.items() if not k.startswith("tokenizer_2/")}
    monkeypatch.setattr(fetch, "hf_snapshot_download", StubClient(tmp_path / "hub2", files=broken))
    with pytest.raises(fetch.FetchError, match="no tokenizer_2/ files"):
        fetch_into(tmp_path / "b", "sdxl", sd_spec(HF, variant="fp16"))


def test_every_hugging_face_source_of_the_paper_config_is_a_pinned_commit(paper_config):
    """A moving `main` would fetch other weights tomorrow: every Hugging Face source names a commit."""
    unpinned = [
        f"models.{name}.sources[{i}]: {src['repo']}@{src.get('revision')}"
        for name, model in paper_config["models"].items()
        for i, src in enumerate(model["sources"])
        if src["type"] == "huggingface" and not re.fullmatch(r"[0-9a-f]{40}", str(src.get("revision")))
    ]
    assert not unpinned, unpinned
