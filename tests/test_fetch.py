"""Model acquisition without network: a local HTTP server for url sources, fakes for the hubs."""

import copy
import hashlib
import http.server
import inspect
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


# ---------------------------------------------------------------- hub sources (fakes)

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


class FakeHub:
    """A hub client: records its calls; writes the whole repo into a cache snapshot (as a cache
    may hold more than asked) unless it is told to fail."""

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


def test_huggingface_passes_repo_revision_patterns_and_token(tmp_path, monkeypatch, caplog):
    import huggingface_hub

    hub = FakeHub(tmp_path / "hfcache")
    monkeypatch.setattr(fetch, "hf_snapshot_download", hub)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with caplog.at_level(logging.INFO, logger="diffrep"):
        info, root = fetch_into(tmp_path, "sd21", sd_spec(HF))
    real = inspect.signature(huggingface_hub.snapshot_download)
    for call in hub.calls:
        real.bind(**call)  # the real client accepts exactly these arguments
        assert call["repo_id"] == HF["repo"] and call["revision"] == HF["revision"]
        assert call["token"] == SECRET
        assert call["allow_patterns"] == fetch.allow_patterns("diffusers")
        assert "*.ckpt" in call["ignore_patterns"] and "*.bin" in call["ignore_patterns"]
    assert [c.get("dry_run", False) for c in hub.calls] == [True, False]
    got = {p.relative_to(root / "sd21").as_posix() for p in (root / "sd21").rglob("*") if p.is_file()}
    assert got == WANTED  # no .ckpt, no .bin, no fp16 duplicate, no single-file checkpoint
    assert set(read_manifest(root / "sd21.sha256")) == {f"sd21/{f}" for f in WANTED}
    assert SECRET not in caplog.text
    assert "token from HF_TOKEN" in caplog.text
    assert "served by source 1/1 (huggingface stabilityai/stable-diffusion-2-1@5cae40e6)" in caplog.text
    assert "8 file(s)" in caplog.text  # the list and total size are logged


def test_huggingface_without_token_never_uses_a_stored_login(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hfcache")
    monkeypatch.setattr(fetch, "hf_snapshot_download", hub)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fetch_into(tmp_path, "sd21", sd_spec(HF))
    assert all(c["token"] is False for c in hub.calls)


def test_variant_fp16_downloads_only_fp16_weights(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hfcache")
    monkeypatch.setattr(fetch, "hf_snapshot_download", hub)
    _, root = fetch_into(tmp_path, "sd21", sd_spec(HF, variant="fp16"))
    weights = sorted(p.name for p in (root / "sd21").rglob("*.safetensors"))
    assert weights == ["diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"]


def test_token_never_logged_even_in_errors(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(
        fetch,
        "hf_snapshot_download",
        FakeHub(tmp_path, fail=RuntimeError(f"401 Unauthorized for token {SECRET}")),
    )
    with caplog.at_level(logging.INFO, logger="diffrep"), pytest.raises(fetch.FetchError) as err:
        fetch_into(tmp_path, "sd21", sd_spec(HF))
    assert "401 Unauthorized" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_modelscope_call_matches_the_real_signature(tmp_path, monkeypatch):
    from modelscope.hub.snapshot_download import snapshot_download

    hub = FakeHub(tmp_path / "mscache")
    monkeypatch.setattr(fetch, "ms_snapshot_download", hub)
    _, root = fetch_into(tmp_path, "sd21", sd_spec(MS))
    (call,) = hub.calls
    inspect.signature(snapshot_download).bind(**call)
    assert call["model_id"] == MS["repo"] and call["revision"] == "master"
    assert call["allow_patterns"] == fetch.allow_patterns("diffusers")
    assert {
        p.relative_to(root / "sd21").as_posix() for p in (root / "sd21").rglob("*") if p.is_file()
    } == WANTED


def test_fallback_to_the_next_source_in_order(tmp_path, monkeypatch, caplog):
    ms = FakeHub(tmp_path / "ms", fail=ConnectionError("modelscope.cn unreachable"))
    hf = FakeHub(tmp_path / "hf")
    monkeypatch.setattr(fetch, "ms_snapshot_download", ms)
    monkeypatch.setattr(fetch, "hf_snapshot_download", hf)
    with caplog.at_level(logging.INFO, logger="diffrep"):
        info, root = fetch_into(tmp_path, "sd21", sd_spec(MS, HF))
    assert len(ms.calls) == 1 and len(hf.calls) == 2
    assert (
        info["index"] == 2 and info["failed"][0][0] == "modelscope AI-ModelScope/stable-diffusion-2-1@master"
    )
    assert "served by source 2/2 (huggingface" in caplog.text
    assert (
        "earlier source modelscope AI-ModelScope/stable-diffusion-2-1@master failed: "
        "ConnectionError: modelscope.cn unreachable" in caplog.text
    )
    assert (root / "sd21.sha256").exists()


def test_incomplete_repo_falls_back(tmp_path, monkeypatch):
    """A repo without safetensors for a component is not a usable source."""
    only_bin = {k: v for k, v in REPO_FILES.items() if not k.startswith("unet/diffusion_pytorch_model.")}
    only_bin["unet/diffusion_pytorch_model.bin"] = b"pickle"
    monkeypatch.setattr(fetch, "ms_snapshot_download", FakeHub(tmp_path / "ms", files=only_bin))
    monkeypatch.setattr(fetch, "hf_snapshot_download", FakeHub(tmp_path / "hf"))
    info, root = fetch_into(tmp_path, "sd21", sd_spec(MS, HF))
    assert info["index"] == 2
    assert "component 'unet' has no safetensors weights" in info["failed"][0][1]


def test_pinned_mismatch_on_every_source_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "ms_snapshot_download", FakeHub(tmp_path / "ms"))
    monkeypatch.setattr(fetch, "hf_snapshot_download", FakeHub(tmp_path / "hf"))
    pins = {rel: sha(REPO_FILES[rel]) for rel in WANTED}
    pins["unet/diffusion_pytorch_model.safetensors"] = "a" * 64
    with pytest.raises(fetch.FetchError) as err:
        fetch_into(tmp_path, "sd21", sd_spec(MS, HF, sha256=pins))
    msg = str(err.value)
    assert (
        msg.count(
            f"sd21/unet/diffusion_pytorch_model.safetensors: sha256 mismatch: expected {'a' * 64}, "
            f"actual {sha(REPO_FILES['unet/diffusion_pytorch_model.safetensors'])}"
        )
        == 2
    )
    assert_no_output(tmp_path / "resources/models", "sd21")


def test_pins_cover_every_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "hf_snapshot_download", FakeHub(tmp_path / "hf"))
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


def test_wrappers_call_the_real_clients(monkeypatch):
    import sys

    import huggingface_hub
    import modelscope.hub.snapshot_download  # noqa: F401 - the module, not the re-exported function

    seen = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: seen.append(("hf", kw)) or "x")
    monkeypatch.setattr(
        sys.modules["modelscope.hub.snapshot_download"],
        "snapshot_download",
        lambda **kw: seen.append(("ms", kw)) or "y",
    )
    assert fetch.hf_snapshot_download(repo_id="a") == "x"
    assert fetch.ms_snapshot_download(model_id="b") == "y"
    assert seen == [("hf", {"repo_id": "a"}), ("ms", {"model_id": "b"})]


def gated_error():
    """huggingface_hub's GatedRepoError as the hub raises it (its constructor wants an HTTP response)."""
    from huggingface_hub.errors import GatedRepoError

    err = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(
        err, "403 Client Error. Cannot access gated repo for url https://huggingface.co/api/models"
    )
    return err


@pytest.mark.parametrize(
    "token, why", [(SECRET, "has not been granted access"), (None, "HF_TOKEN is not set")]
)
def test_gated_repo_names_the_licence_page_and_hf_token(tmp_path, monkeypatch, token, why):
    repo = "stabilityai/stable-diffusion-3.5-medium"
    monkeypatch.setattr(fetch, "hf_snapshot_download", FakeHub(tmp_path, fail=gated_error()))
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(fetch.FetchError) as err:
        fetch_into(
            tmp_path, "sd35_medium", sd_spec({"type": "huggingface", "repo": repo, "revision": "main"})
        )
    msg = str(err.value)
    assert f"huggingface {repo} is a gated repository" in msg and why in msg
    assert f"Accept the licence on https://huggingface.co/{repo}" in msg and "export HF_TOKEN=" in msg
    assert SECRET not in msg


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
    monkeypatch.setattr(fetch, "hf_snapshot_download", FakeHub(tmp_path / "hub", files=SDXL_FILES))
    _, root = fetch_into(tmp_path, "sdxl", sd_spec(HF, variant="fp16"))
    got = {p.relative_to(root / "sdxl").as_posix() for p in (root / "sdxl").rglob("*") if p.is_file()}
    assert got == set(SDXL_FILES) - {"text_encoder_2/model.safetensors"}
    broken = {k: v for k, v in SDXL_FILES.items() if not k.startswith("tokenizer_2/")}
    monkeypatch.setattr(fetch, "hf_snapshot_download", FakeHub(tmp_path / "hub2", files=broken))
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
