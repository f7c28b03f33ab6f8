"""A tiny Hugging Face Hub on 127.0.0.1, speaking the file endpoints huggingface_hub uses.

It serves fake model repos so the converter's Hub path can be tested without the
network. The endpoints are the ones ``snapshot_download`` / ``hf_hub_download``
call in huggingface_hub 2.x:

- ``GET /api/models/{owner}/{name}[/revision/{rev}]``: repo info (``sha``, ``siblings``);
- ``GET /api/models/{owner}/{name}/tree/{rev}``: the recursive file listing;
- ``HEAD|GET /{owner}/{name}/resolve/{rev}/{path}``: file metadata and content.

Like the real Hub, LFS files (``*.safetensors``, ``*.bin``, big files) don't come
from the Hub host itself: ``resolve`` answers 302 with ``X-Linked-Etag`` (the
sha256) and ``X-Linked-Size``, pointing at a "CDN" on ``localhost`` — another
origin, so the client must not send its token there. Small files answer 200 with
their git blob id as ETag. Every response carries ``X-Repo-Commit``; ``Range``
requests get 206. Errors use the Hub's ``X-Error-Code`` values (RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo). Every request is recorded (method,
path, headers) so tests can check what was fetched and what was sent.

Why one ~400-line module: it is one protocol, the repo store and the handler share
its rules, and tests read it as the spec of what edgekit expects from the Hub.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores big files in LFS whatever their name


@dataclass(frozen=True)
class RepoFile:
    path: str
    blob: Path  # where the bytes are on disk
    size: int
    git_oid: str
    sha256: str | None  # set for LFS files

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_oid


@dataclass
class Repo:
    repo_id: str
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit sha
    commits: dict[str, dict[str, RepoFile]] = field(default_factory=dict)
    token: str | None = None  # private repo: only this token may read it
    gated: bool = False  # gated repo: a token is needed, and only `token` has access


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


class FakeHub:
    """A threaded HTTP server holding fake repos. Use as a context manager, or start()/stop()."""

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fakehub-")) if root is None else Path(root)
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.fail_status: int | None = None  # answer every request with this status (e.g. 503)
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection drops (next GET only)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._blob_count = 0
        self.port = 0

    # -- repos ------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | Path],
        *,
        revision: str = "main",
        private_token: str | None = None,
        gated: bool = False,
    ) -> str:
        """Add (or add a revision to) a repo; return the commit sha of that revision.

        ``files`` maps repo paths to bytes, text or a local file to copy.
        """
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        if private_token is not None:
            repo.token = private_token
        repo.gated = repo.gated or gated
        entries: dict[str, RepoFile] = {}
        for path, content in sorted(files.items()):
            self._blob_count += 1
            data_path = self.root / "blobs" / str(self._blob_count)
            data_path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, data_path)
            else:
                data_path.write_bytes(content.encode() if isinstance(content, str) else content)
            entries[path] = _describe(path, data_path)
        commit = hashlib.sha1(
            json.dumps([repo_id, revision, [(p, f.etag) for p, f in entries.items()]]).encode()
        ).hexdigest()
        repo.commits[commit] = entries
        repo.refs[revision] = commit
        return commit

    # -- server -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections: the port then refuses connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns.clear()
        self._server = None

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests inspect -----------------------------------------------------------------------

    def downloaded(self) -> list[str]:
        """Repo paths whose content was fetched with GET (through resolve or the CDN)."""
        names = []
        for req in self.requests:
            if req.method == "GET" and "/resolve/" in req.path:
                names.append(unquote(req.path.split("/resolve/", 1)[1].split("/", 1)[1]))
            elif req.method == "GET" and req.path.startswith("/cdn/"):
                names.append(unquote(req.path.split("/", 3)[3].split("?")[0]))
        return names

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


def _git_blob_oid(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(repo_path: str, blob: Path) -> RepoFile:
    size = blob.stat().st_size
    sha256 = None
    if repo_path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE:
        digest = hashlib.sha256()
        with blob.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        sha256 = digest.hexdigest()
    return RepoFile(repo_path, blob, size, _git_blob_oid(blob), sha256)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake_hub: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake_hub._lock:
            self.fake_hub._conns.add(self.connection)

    def finish(self) -> None:
        with self.fake_hub._lock:
            self.fake_hub._conns.discard(self.connection)
        super().finish()

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- routing ----------------------------------------------------------------------------------

    def _dispatch(self, head: bool) -> None:
        hub = self.fake_hub
        raw_path = urlsplit(self.path).path
        with hub._lock:
            hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if hub.fail_status is not None:
            return self._error(hub.fail_status, None, "Simulated failure")
        parts = raw_path.strip("/").split("/")
        if parts[:1] == ["cdn"] and len(parts) >= 3:
            return self._cdn(parts[1], unquote("/".join(parts[2:])), head)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            repo = self._authorized_repo(repo_id)
            if repo is None:
                return
            if not rest:
                return self._info(repo, "main")
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo, unquote(rest[1]))
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, unquote(rest[1]))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._authorized_repo(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return
            return self._resolve(repo, unquote(parts[3]), unquote("/".join(parts[4:])), head)
        self._error(404, None, "Not found")

    def _authorized_repo(self, repo_id: str) -> Repo | None:
        repo = self.fake_hub.repos.get(repo_id)
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token is not None and not token.startswith("hf_"):
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        if repo is None or (repo.token is not None and not repo.gated and token != repo.token):
            self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and token != repo.token:
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            self._error(401 if token is None else 403, "GatedRepo", msg)
            return None
        return repo

    def _commit(self, repo: Repo, revision: str) -> str | None:
        if revision in repo.commits:
            return revision
        commit = repo.refs.get(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- endpoints --------------------------------------------------------------------------------

    def _info(self, repo: Repo, revision: str) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        files = repo.commits[commit]
        with_blobs = "blobs=" in (urlsplit(self.path).query or "")
        siblings = []
        for f in files.values():
            sibling: dict = {"rfilename": f.path}
            if with_blobs:
                sibling.update(size=f.size, blobId=f.git_oid)
                if f.sha256:
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sibling)
        body = {"_id": commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit,
                "private": repo.token is not None and not repo.gated, "gated": "manual" if repo.gated else False,
                "disabled": False, "tags": [], "siblings": siblings}
        self._json(body, commit)

    def _tree(self, repo: Repo, revision: str) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        listing, folders = [], set()
        for f in repo.commits[commit].values():
            entry: dict = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.sha256:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            listing.append(entry)
            parts = f.path.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        listing += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)]
        self._json(listing, commit)

    def _resolve(self, repo: Repo, revision: str, path: str, head: bool) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        f = repo.commits[commit].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=commit)
        if f.sha256 is not None:
            # LFS: redirect to the CDN on another origin, with the file's real etag and size.
            host = f"localhost:{self.fake_hub.port}"
            self.send_response(302)
            self.send_header("Location", f"http://{host}/cdn/{f.sha256}/{quote(f.path)}?signed=1")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
            self.send_header("ETag", f'"{f.git_oid}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._file(f, commit, head)

    def _cdn(self, sha256: str, path: str, head: bool) -> None:
        for repo in self.fake_hub.repos.values():
            for files in repo.commits.values():
                f = files.get(path)
                if f is not None and f.sha256 == sha256:
                    return self._file(f, None, head)
        self._error(404, None, "No such blob")

    def _file(self, f: RepoFile, commit: str | None, head: bool) -> None:
        start, end = 0, f.size - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first or 0)
            end = min(int(last), f.size - 1) if last else f.size - 1
            if start >= f.size:
                return self._error(416, None, "Range not satisfiable")
        length = end - start + 1
        self.send_response(206 if rng else 200)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if head:
            return
        with self.fake_hub._lock:
            cut = self.fake_hub.cut_after.pop(f.path, None)
        with f.blob.open("rb") as src:
            src.seek(start)
            remaining = length if cut is None else min(length, cut)
            while remaining > 0:
                chunk = src.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if cut is not None and cut < length:
            # Simulate a dropped connection mid-file.
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- helpers ----------------------------------------------------------------------------------

    def _json(self, body: object, commit: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
