"""A local Hugging Face Hub and ModelScope on 127.0.0.1 that the real hub clients download from.

:class:`HubServer` serves repos held in memory through the endpoints that
``huggingface_hub.snapshot_download`` and ``modelscope``'s ``snapshot_download`` call:

- Hugging Face (``HF_ENDPOINT``): ``GET /api/models/{repo}/revision/{rev}`` (a branch or tag to its
  commit), ``GET /api/models/{repo}/tree/{commit}?recursive=…`` (the file list, with the LFS sha256
  and size of each weight file), ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``,
  ``ETag``, ``Content-Length``; a weight file answers 302 to a second listener, the "CDN", with
  ``X-Linked-Etag`` / ``X-Linked-Size``, as the real hub does), errors with ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``);
- ModelScope (``MODELSCOPE_ENDPOINT``): ``GET /api/v1/models/{repo}/repo/files?Revision=…`` (the file
  list with ``Size`` and ``Sha256``), ``GET /api/v1/models/{repo}/repo?Revision=…&FilePath=…`` (the
  file), ``GET /api/v1/models/{repo}``; errors as JSON with HTTP 401 / 403 / 404.

Both honour ``Range`` (206 with ``Content-Range``). A repo can be gated (a token of ``granted`` is
needed for its files: 401 without a token, 403 with another one) and can carry a fault per file:
``cut`` (the first whole-file answer announces the full length, sends half and closes), ``short``
(the file is served whole but shorter than the listing and the HEAD declare) or ``corrupt`` (one
byte flipped, the listing's sha256 unchanged). Every request is recorded in :attr:`HubServer.seen`.

The server is bounded: it stops when its ``with`` block (the test's fixture) ends, by itself after
``lifetime`` seconds, answers 503 after ``max_requests`` requests (a client retrying forever
fails instead of hanging the test), and drops a connection idle for 30 s.

Run as a script (``python tests/hubserver.py job.json``), it is the Snakemake job of rule
``fetch_model`` in a fresh process: :func:`run_job` builds the ``snakemake`` object and runs
``scripts/fetch_model.py``, so the hub clients read their settings from the environment exactly as
on a cluster.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import runpy
import subprocess
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
LFS_SUFFIXES = (".safetensors",)  # served from the "CDN" with X-Linked-* headers, as on the real hub


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    """The git object id of a file (the ``oid`` / ``ETag`` of a file kept outside LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    """One repository: its commits' files, its branches and tags, its access rule and faults."""

    commits: dict[str, dict[str, bytes]]  # {40-hex commit: {path: bytes}}
    refs: dict[str, str]  # {branch or tag: commit}
    gated: bool = False  # files need a token of `granted`
    granted: frozenset[str] = frozenset()
    faults: dict[str, str] = field(default_factory=dict)  # {path: "cut" | "short" | "corrupt"}

    def commit(self, revision: str) -> str | None:
        """The commit a branch, tag or commit names; None if the repo has no such revision."""
        return revision if revision in self.commits else self.refs.get(revision)


@dataclass(frozen=True)
class Seen:
    """One request as the hub saw it."""

    listener: str  # "hub" or "cdn"
    method: str
    path: str  # unquoted
    query: dict[str, str]
    authorization: str | None
    cookie: str | None
    range: str | None


def _match(pattern: str, path: str) -> list[str] | None:
    m = re.fullmatch(pattern, path)
    return [unquote(g) for g in m.groups()] if m else None


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes one request to the Hugging Face, ModelScope or CDN answer of the owning HubServer."""

    timeout = 30  # seconds a connection may stay idle
    server_version = "diffrep-hubserver"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool):
        hub: HubServer = self.server.hub
        url = urlsplit(self.path)
        self.url_path = unquote(url.path)
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.head = head
        if not hub.record(self):
            return self._error(503, "request budget of the test hub exhausted")
        if self.server.listener == "cdn":
            return self._cdn()
        route = self._route(url.path)
        if route is None:
            return self._error(404, f"no such endpoint: {self.path}")
        method, args = route
        method(*args)

    def _route(self, raw_path: str):
        """(handler, arguments) for a hub path, or None."""
        routes = [
            (r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", self._hf_info),
            (r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", self._hf_tree),
            (r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self._hf_resolve),
            (r"/api/v1/models/([^/]+/[^/]+)/repo/files", self._ms_files),
            (r"/api/v1/models/([^/]+/[^/]+)/repo", self._ms_file),
            (r"/api/v1/models/([^/]+/[^/]+)", self._ms_info),
        ]
        for pattern, method in routes:
            args = _match(pattern, raw_path)
            if args is not None:
                return method, args
        return None

    # ------------------------------------------------------------ responses

    def _send(self, status: int, headers: dict[str, str], body: bytes = b""):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not self.head and body:
            self.wfile.write(body)

    def _json(self, value, status: int = 200, headers: dict[str, str] | None = None):
        body = json.dumps(value).encode()
        self._send(
            status,
            {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})},
            body,
        )

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None):
        self._json({"error": message, "Message": message, "Success": False}, status, headers)

    def _token(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None

    def _refused(self, repo: HubRepo) -> int | None:
        """401 (no token) or 403 (a token without access) for a gated repo, else None."""
        if not repo.gated:
            return None
        token = self._token()
        if token is None:
            return 401
        return None if token in repo.granted else 403

    def _body(self, data: bytes, fault: str | None, headers: dict[str, str]):
        """The file's bytes, from the requested Range on, with the file's fault applied."""
        if fault == "corrupt":
            data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]
        elif fault == "short":
            data = data[: len(data) // 2]
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        start = int(m.group(1)) if m else 0
        end = int(m.group(2)) if m and m.group(2) else len(data) - 1
        if m and start >= len(data):
            return self._send(
                416, {**headers, "Content-Range": f"bytes */{len(data)}", "Content-Length": "0"}
            )
        part = data[start : end + 1]
        if m:
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        headers = {**headers, "Content-Length": str(len(part)), "Accept-Ranges": "bytes"}
        if fault == "cut" and not m and not self.head:  # announce everything, send half, hang up
            self._send(200, headers, part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(206 if m else 200, headers, part)

    # ------------------------------------------------------------ Hugging Face

    def _hf_repo(self, repo_id: str) -> HubRepo | None:
        repo = self.server.hub.repos.get(("huggingface", repo_id))
        if repo is None:
            self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
        return repo

    def _hf_commit(self, repo: HubRepo, revision: str) -> str | None:
        commit = repo.commit(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", {"X-Error-Code": "RevisionNotFound"})
        return commit

    def _hf_info(self, repo_id: str, revision: str):
        repo = self._hf_repo(repo_id)
        commit = repo and self._hf_commit(repo, revision)
        if commit:
            files = [{"rfilename": p} for p in sorted(repo.commits[commit])]
            self._json(
                {"id": repo_id, "sha": commit, "siblings": files, "gated": "manual" if repo.gated else False}
            )

    def _hf_tree(self, repo_id: str, revision: str):
        repo = self._hf_repo(repo_id)
        commit = repo and self._hf_commit(repo, revision)
        if commit:
            self._json([self._hf_entry(path, data) for path, data in sorted(repo.commits[commit].items())])

    @staticmethod
    def _hf_entry(path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
        return entry

    def _hf_resolve(self, repo_id: str, revision: str, path: str):
        repo = self._hf_repo(repo_id)
        commit = repo and self._hf_commit(repo, revision)
        if not commit:
            return
        refused = self._refused(repo)
        if refused:
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(refused, msg, {"X-Error-Code": "GatedRepo", "X-Error-Message": msg})
        data = repo.commits[commit].get(path)
        if data is None:
            return self._error(
                404, "Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            )
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}
        if path.endswith(LFS_SUFFIXES):
            query = f"repo={quote(repo_id)}&commit={commit}&file={quote(path)}"
            cdn = f"{self.server.hub.cdn_url}/{sha256(data)}?{query}"
            linked = {"X-Linked-Etag": f'"{sha256(data)}"', "X-Linked-Size": str(len(data))}
            return self._send(302, {**headers, **linked, "Location": cdn, "Content-Length": "0"})
        self._body(data, repo.faults.get(path), {**headers, "Content-Type": "application/octet-stream"})

    def _cdn(self):
        repo = self.server.hub.repos.get(("huggingface", self.query.get("repo", "")))
        files = repo.commits.get(self.query.get("commit", ""), {}) if repo else {}
        path = self.query.get("file", "")
        if path not in files or sha256(files[path]) != self.url_path.strip("/"):
            return self._error(404, "no such object")
        disposition = f"inline; filename*=UTF-8''{Path(path).name}; filename=\"{Path(path).name}\";"
        self._body(files[path], repo.faults.get(path), {"Content-Disposition": disposition})

    # ------------------------------------------------------------ ModelScope

    def _ms_repo(self, repo_id: str, need_access: bool) -> tuple[HubRepo, str] | None:
        """(repo, commit of the Revision parameter), or None after answering the error."""
        repo = self.server.hub.repos.get(("modelscope", repo_id))
        if repo is None:
            return self._error(404, f"model {repo_id} does not exist")
        refused = self._refused(repo) if need_access else None
        if refused:
            return self._error(
                refused, "Unauthorized" if refused == 401 else f"no permission for model {repo_id}"
            )
        commit = repo.commit(self.query.get("Revision", "master"))
        if commit is None:
            return self._error(
                404, f"revision {self.query.get('Revision')} of model {repo_id} does not exist"
            )
        return repo, commit

    def _ms_info(self, repo_id: str):
        found = self._ms_repo(repo_id, need_access=False)
        if found:
            self._json({"Code": 200, "Data": {"Path": repo_id.split("/")[0], "Name": repo_id.split("/")[1]}})

    def _ms_files(self, repo_id: str):
        found = self._ms_repo(repo_id, need_access=True)
        if not found:
            return
        repo, commit = found
        root = self.query.get("Root", "")
        files = [
            {
                "Name": Path(p).name,
                "Path": p,
                "Type": "blob",
                "Size": len(d),
                "Sha256": sha256(d),
                "Revision": commit,
            }
            for p, d in sorted(repo.commits[commit].items())
            if p.startswith(root)
        ]
        self._json({"Code": 200, "Data": {"Files": files}, "Success": True})

    def _ms_file(self, repo_id: str):
        found = self._ms_repo(repo_id, need_access=True)
        if not found:
            return
        repo, commit = found
        path = self.query.get("FilePath", "")
        data = repo.commits[commit].get(path)
        if data is None:
            return self._error(404, f"file {path} does not exist")
        self._body(data, repo.faults.get(path), {"Content-Type": "application/octet-stream"})


class HubServer:
    """Both hubs on 127.0.0.1 (:attr:`url`), with a second listener as the file CDN (:attr:`cdn_url`)."""

    def __init__(self, lifetime: float = 300.0, max_requests: int = 2000):
        self.repos: dict[tuple[str, str], HubRepo] = {}  # {("huggingface" | "modelscope", repo id): repo}
        self.seen: list[Seen] = []
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self._servers = [self._listen("hub"), self._listen("cdn")]
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            for s in self._servers
        ]
        for thread in self._threads:
            thread.start()
        self._watchdog = threading.Timer(lifetime, self.close)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _listen(self, listener: str) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.hub, server.listener = self, listener
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def add(self, hub: str, repo_id: str, repo: HubRepo) -> HubRepo:
        self.repos[(hub, repo_id)] = repo
        return repo

    def record(self, handler: _Handler) -> bool:
        """Record a request; False once the request budget is spent."""
        seen = Seen(
            listener=handler.server.listener,
            method=handler.command,
            path=handler.url_path,
            query=handler.query,
            authorization=handler.headers.get("Authorization"),
            cookie=handler.headers.get("Cookie"),
            range=handler.headers.get("Range"),
        )
        with self._lock:
            self.seen.append(seen)
            return len(self.seen) <= self.max_requests

    def downloads(self) -> list[tuple[str, Seen]]:
        """(repo file, request) of every GET of a file's bytes, in the order the hub saw them."""
        out = []
        for seen in self.seen:
            resolve = re.fullmatch(r"/[^/]+/[^/]+/resolve/[^/]+/(.+)", seen.path)
            if seen.method != "GET":
                continue
            if seen.listener == "cdn":
                out.append((seen.query.get("file", ""), seen))
            elif "FilePath" in seen.query:
                out.append((seen.query["FilePath"], seen))
            elif resolve:
                out.append((resolve.group(1), seen))
        return out

    def close(self):
        self._watchdog.cancel()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- the fetch_model job


@dataclass
class FetchRun:
    """What a fetch_model job left: its exit code, log, stderr, model folder and manifest."""

    returncode: int
    log: str
    stderr: str
    out_dir: Path
    manifest: Path


def job_environment(work: Path, hub: HubServer, **extra: str) -> dict[str, str]:
    """A clean environment pointing both hub clients at `hub`, every cache and home under `work`.

    Nothing is inherited but PATH (no proxy, no token, no offline switch of the caller's shell):
    HOME, XDG_CACHE_HOME, HF_HOME, MODELSCOPE_CACHE and MODELSCOPE_HOME are folders of `work`.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "home"),
        "XDG_CACHE_HOME": str(work / "home/.cache"),
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "0",
        "MODELSCOPE_ENDPOINT": hub.url,
        "MODELSCOPE_CACHE": str(work / "modelscope/cache"),
        "MODELSCOPE_HOME": str(work / "modelscope/home"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


def fetch_job(
    work: Path, hub: HubServer, name: str, spec: dict, timeout: float = 180, **env: str
) -> FetchRun:
    """Run rule fetch_model's script for model `name` in a fresh process, in folder `work`."""
    work.mkdir(parents=True, exist_ok=True)
    job = {
        "name": name,
        "spec": spec,
        "out_dir": str(work / f"resources/models/{name}"),
        "manifest": str(work / f"resources/models/{name}.sha256"),
        "log": str(work / f"logs/models/fetch_{name}.log"),
    }
    (work / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, __file__, str(work / "job.json")],
        cwd=work,
        env=job_environment(work, hub, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = Path(job["log"])
    return FetchRun(
        returncode=proc.returncode,
        log=log.read_text() if log.exists() else "",
        stderr=proc.stdout + proc.stderr,
        out_dir=Path(job["out_dir"]),
        manifest=Path(job["manifest"]),
    )


class _Wildcards(dict):
    """Snakemake's wildcards: a mapping whose keys are attributes too."""

    __getattr__ = dict.__getitem__


def run_job(job_file: str) -> None:
    """Run scripts/fetch_model.py with the ``snakemake`` object rule fetch_model would give it."""
    job = json.loads(Path(job_file).read_text())
    snakemake = types.SimpleNamespace(
        rule="fetch_model",
        scriptdir=str(REPO / "scripts"),
        wildcards=_Wildcards(model=job["name"]),
        params=types.SimpleNamespace(model=job["spec"]),
        output=types.SimpleNamespace(dir=job["out_dir"], manifest=job["manifest"]),
        log=[job["log"]],
        threads=1,
    )
    runpy.run_path(
        str(REPO / "scripts/fetch_model.py"), init_globals={"snakemake": snakemake}, run_name="__main__"
    )


if __name__ == "__main__":
    run_job(sys.argv[1])
