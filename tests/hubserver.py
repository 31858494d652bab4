"""A tiny fake Hugging Face Hub for tests: serves files the way ``hf_hub_download`` expects.

Only the ``/{repo_id}/resolve/{revision}/{filename}`` route exists; that is the only route
``huggingface_hub`` 2.4's ``hf_hub_download`` (and ``get_hf_file_metadata``) touch for a plain
(non-Xet) file. The client does:

* ``HEAD /{repo_id}/resolve/{revision}/{filename}`` with ``Accept-Encoding: identity`` and
  ``follow_redirects=False``. From the response it needs ``X-Repo-Commit`` (the 40-hex commit the
  revision resolves to; without it the client refuses the endpoint), ``X-Linked-Etag`` or
  ``ETag`` (the cache blob name; for LFS files the Hub sends the sha256 of the content) and
  ``X-Linked-Size`` or ``Content-Length`` (checked against the bytes received). We answer 200
  directly, as a mirror does; the real Hub answers LFS files with a 302 to a CDN on another host.
* ``GET`` on the same URL (or on ``Location`` if the HEAD answered with an off-host redirect),
  streamed; ``Range: bytes=N-`` only when resuming after a broken connection.

Errors are 404s classified by ``X-Error-Code`` (as read by
``huggingface_hub.utils.hf_raise_for_status``): ``RepoNotFound``, ``RevisionNotFound`` and
``EntryNotFound`` (the latter with ``X-Repo-Commit``, which makes the client record the absence
under ``.no_exist/`` in its cache).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Entry:
    data: bytes
    etag: str  # unquoted
    lfs: bool


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    files: dict[tuple[str, str], _Entry] = field(default_factory=dict)  # (commit, filename)


class FakeHub:
    """Threaded HTTP server on 127.0.0.1 (ephemeral port) that impersonates the Hub's resolve route.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``url`` is what to put in
    ``HF_ENDPOINT`` (or pass as ``endpoint=``). ``requests`` logs every request received.
    ``status_override`` (e.g. 503) makes every request fail with that status (only the next
    ``override_count`` requests where that is set; ``override_headers`` go with it).
    ``cut_bodies`` sends only the first third of every file body, then drops the connection
    (a download broken half way).
    """

    def __init__(
        self,
        files: dict[tuple[str, str, str], bytes] | None = None,
        *,
        request_timeout: float = 5.0,
    ) -> None:
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self.requests: list[LoggedRequest] = []
        self.status_override: int | None = None
        self.override_count: int | None = None
        self.override_headers: dict[str, str] = {}
        self.cut_bodies = False
        self._request_timeout = request_timeout
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for (repo_id, revision, filename), data in (files or {}).items():
            self.add(repo_id, revision, filename, data)

    # ----------------------------------------------------------------- content
    @staticmethod
    def commit_for(repo_id: str, revision: str) -> str:
        """The commit ``revision`` resolves to: itself if a commit hash, else a stable fake one."""
        if _COMMIT_RE.fullmatch(revision):
            return revision
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def add(
        self,
        repo_id: str,
        revision: str,
        filename: str,
        data: bytes,
        *,
        lfs: bool = True,
        etag: str | None = None,
    ) -> str:
        """Serve ``data`` as ``filename`` at ``revision`` of ``repo_id``; returns the commit hash.

        ``revision`` may be a 40-hex commit or a branch/tag name (resolved to a stable fake commit,
        so the same file is also reachable by that commit). LFS files advertise the sha256 of
        ``data`` as their etag, like the Hub; ``etag`` overrides what is advertised (to simulate a
        server whose content does not match its metadata, e.g. corruption in transit).
        """
        commit = self.commit_for(repo_id, revision)
        if etag is None:
            etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            if revision != commit:
                repo.refs[revision] = commit
            repo.files[(commit, filename)] = _Entry(bytes(data), etag, lfs)
        return commit

    def move(self, repo_id: str, branch: str, commit: str) -> None:
        """Point ``branch`` of ``repo_id`` at ``commit`` (a push to the branch)."""
        with self._lock:
            self._repos.setdefault(repo_id, _Repo()).refs[branch] = commit

    def add_repo(self, repo_id: str, revision: str = "main") -> str:
        """Make a repo/revision exist without files (EntryNotFound rather than RepoNotFound)."""
        commit = self.commit_for(repo_id, revision)
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            if revision != commit:
                repo.refs[revision] = commit
        return commit

    def _lookup(
        self, repo_id: str, revision: str, filename: str
    ) -> tuple[int, dict[str, str], _Entry | None]:
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                error = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
                return 404, error, None
            commit = repo.refs.get(revision)
            if commit is None and _COMMIT_RE.fullmatch(revision):
                known = set(repo.refs.values()) | {c for c, _ in repo.files}
                commit = revision if revision in known else None
            if commit is None:
                error = {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}
                return 404, error, None
            entry = repo.files.get((commit, filename))
            if entry is None:
                return (
                    404,
                    {
                        "X-Error-Code": "EntryNotFound",
                        "X-Error-Message": "Entry not found",
                        "X-Repo-Commit": commit,
                    },
                    None,
                )
            return 200, {"X-Repo-Commit": commit}, entry

    # --------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def requests_for(
        self, method: str | None = None, filename: str | None = None
    ) -> list[LoggedRequest]:
        with self._lock:
            reqs = list(self.requests)
        return [
            r
            for r in reqs
            if (method is None or r.method == method)
            and (filename is None or r.path.endswith("/" + filename))
        ]

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            timeout = self._request_timeout  # socket timeout: a stuck client cannot hold a thread

            fake_hub = hub

        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block shutdown


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response has a Content-Length

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _reply(self, status: int, headers: dict[str, str], payload: bytes, body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload and self.fake_hub.cut_bodies:
            self.wfile.write(payload[: len(payload) // 3])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif body and payload:
            self.wfile.write(payload)

    def _serve(self, body: bool) -> None:
        hub = self.fake_hub
        with hub._lock:
            hub.requests.append(LoggedRequest(self.command, self.path, dict(self.headers.items())))
        with hub._lock:
            status = hub.status_override
            if status is not None and hub.override_count is not None:
                hub.override_count -= 1
                if hub.override_count <= 0:
                    hub.status_override = hub.override_count = None
        if status is not None:
            self._reply(status, {"Content-Type": "text/plain", **hub.override_headers},
                        f"error {status}\n".encode(), body)
            return
        path = unquote(urlsplit(self.path).path)
        # /{namespace}/{name}/resolve/{revision}/{filename...}  (model repos only)
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._reply(404, {"Content-Type": "text/plain"}, b"not found\n", body)
            return
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        status, headers, entry = hub._lookup(repo_id, revision, filename)
        if entry is None:
            self._reply(status, {**headers, "Content-Type": "text/plain"}, b"not found\n", body)
            return

        data = entry.data
        headers["Content-Type"] = "application/octet-stream"
        headers["Accept-Ranges"] = "bytes"
        headers["ETag"] = f'"{entry.etag}"'
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.etag}"'
            headers["X-Linked-Size"] = str(len(data))
        match = _RANGE_RE.match(self.headers.get("Range", ""))
        if body and match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data) or end < start:
                self._reply(416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._reply(206, headers, data[start : end + 1], body)
            return
        self._reply(status, headers, data, body)
