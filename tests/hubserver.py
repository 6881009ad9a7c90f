"""A loopback server speaking the small part of the Hugging Face Hub protocol robustzoo uses.

``HubServer`` runs a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (port 0) and a second origin
(same process, reached as ``localhost``) that plays the CDN. It serves:

* ``HEAD|GET /{org}/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (sha256 of the body,
  as the Hub does for LFS files), ``Content-Length``, ``Range`` (206) and ``If-Range``; unknown repos,
  revisions and files answer 404 with ``X-Error-Code: RepoNotFound|RevisionNotFound|EntryNotFound``;
* plain files for the URL source (``add_url``), with ``Range``/``If-Range`` and an ``ETag``;
* the commit API calls ``HfApi.create_repo`` / ``create_commit`` make for small regular files.

Every request is logged as ``(method, path)``; ``inject`` arms faults that fire a given number of
times: ``drop`` (close the connection mid-body), ``status`` (answer 500/503...), ``stall`` (sleep before
answering), ``length`` (a wrong Content-Length) and ``corrupt`` (different bytes than the ETag claims).
``cdn = True`` turns every resolve into a 302 to the second origin with ``X-Linked-Etag``/``X-Linked-Size``.

Hostile-server knobs (issue 11): ``hub_headers`` replaces headers of every resolve answer (404s included;
a value of None removes the header), e.g. ``{"ETag": '"../../x"'}`` or ``{"X-Repo-Commit": "../.."}``;
``url_headers`` does the same for plain URL files (``{"ETag": None, "Last-Modified": ...}``: no ETag);
``redirects`` maps a path to a ``Location`` (a loop, or ``file:///etc/passwd``). Reassigning
``urls[path]`` between requests plays a file that changes on the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = ["HubServer", "Fault"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Fault:
    kind: str  # drop | status | stall | length | corrupt
    times: int = 1
    method: str = "GET"  # "GET", "HEAD" or "*"
    path: str = ""  # substring the request path must contain ("" = any)
    at: int | None = None  # drop: byte offset where the connection is cut (default: half the file); stall: where
    #                        the body pauses (default: before the response)
    code: int = 500  # status
    seconds: float = 5.0  # stall
    delta: int = 1000  # length: Content-Length announced = true length + delta
    fired: int = 0


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: bytes}
    lfs_etag: bool = True  # ETag = sha256 (LFS files on the Hub); False = git blob sha1 (regular files)


class HubServer:
    """Loopback Hub + plain file server; use as a context manager or call ``close()``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.urls: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cdn = False
        self.hub_headers: dict[str, str | None] = {}
        self.url_headers: dict[str, str | None] = {}
        self.redirects: dict[str, str] = {}
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
        for srv in self._servers:
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_endpoint = f"http://localhost:{self._servers[1].server_address[1]}"

    # ---- content --------------------------------------------------------------------------
    def add_commit(self, repo_id: str, files: dict[str, bytes], *, branch: str | None = "main",
                   lfs_etag: bool = True) -> str:
        """Add a commit holding ``files`` (on top of the branch's files); returns its 40-hex id."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(lfs_etag=lfs_etag))
            base = repo.commits.get(repo.refs.get(branch or "", ""), {})
            commit = secrets.token_hex(20)
            repo.commits[commit] = {**base, **files}
            if branch:
                repo.refs[branch] = commit
            return commit

    def add_url(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns the full URL."""
        self.urls[path] = data
        return self.endpoint + path

    def inject(self, kind: str, times: int = 1, **kw) -> Fault:
        fault = Fault(kind, times, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()
            self.ranges.clear()
        self.cdn = False
        self.hub_headers, self.url_headers, self.redirects = {}, {}, {}

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for m, p in list(self.log) if m == method and contains in p)

    def close(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals used by the handler ---------------------------------------------------
    def _take_fault(self, method: str, path: str, kinds: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind in kinds and f.fired < f.times and f.method in ("*", method) and f.path in path:
                    f.fired += 1
                    return f
        return None

    def _resolve(self, repo_id: str, rev: str, path: str) -> tuple[int, dict[str, str], bytes | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, None
        commit = rev if rev in repo.commits else repo.refs.get(rev)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, None
        data = repo.commits[commit].get(path)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                         "X-Repo-Commit": commit}, None
        etag = sha256(data) if repo.lfs_etag else git_sha1(data)
        return 200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, data

    def _blob(self, digest: str) -> bytes | None:
        for data in self.urls.values():
            if sha256(data) == digest:
                return data
        for repo in self.repos.values():
            for files in repo.commits.values():
                for data in files.values():
                    if sha256(data) == digest:
                        return data
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        with hub._lock:
            hub.log.append((method, path))
            hub.ranges.append((method, path, self.headers.get("Range")))
        stall = hub._take_fault(method, path, ("stall",))
        if stall and stall.at is not None and method == "GET":
            self._mid_stall = stall
        elif stall:
            time.sleep(stall.seconds)
        status = hub._take_fault(method, path, ("status",))
        if status:
            return self._reply(status.code, b"server error\n", {"Content-Type": "text/plain"})
        if method == "POST" or path.startswith("/api/"):
            return _api(self, method, path)
        if path in hub.redirects:
            return self._reply(302, b"", {"Location": hub.redirects[path]})
        parts = unquote(path).lstrip("/").split("/")
        if path.startswith("/cdn/"):
            data = hub._blob(parts[1])
            return self._send_file(method, path, data, {}) if data else self._reply(404, b"no such blob\n")
        if len(parts) >= 5 and parts[2] == "resolve":
            code, headers, data = hub._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            headers = _override(headers, hub.hub_headers)
            if data is None:
                return self._reply(code, b"not found\n", headers)
            if hub.cdn:
                digest = sha256(data)
                headers.update({"Location": f"{hub.cdn_endpoint}/cdn/{digest}", "X-Linked-Etag": f'"{digest}"',
                                "X-Linked-Size": str(len(data))})
                return self._reply(302, b"", headers)
            return self._send_file(method, path, data, headers)
        if path in hub.urls:
            data = hub.urls[path]
            if hub.cdn:
                return self._reply(302, b"", {"Location": f"{hub.cdn_endpoint}/cdn/{sha256(data)}"})
            return self._send_file(method, path, data, _override({"ETag": f'"{sha256(data)}"'}, hub.url_headers))
        self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, method: str, path: str, data: bytes, headers: dict[str, str]) -> None:
        hub = self.hub
        start, end, code = 0, len(data), 200
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        validators = {headers.get("ETag"), headers.get("Last-Modified")} - {None}
        if rng and rng.startswith("bytes=") and (if_range is None or if_range in validators):
            a, _, b = rng[6:].partition("-")
            start, end, code = int(a), (int(b) + 1 if b else len(data)), 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        headers["Accept-Ranges"] = "bytes"
        body = data[start:end]
        if hub._take_fault(method, path, ("corrupt",)):
            body = bytes([body[0] ^ 0xFF]) + body[1:] if body else body
        length = hub._take_fault(method, path, ("length",))
        drop = hub._take_fault(method, path, ("drop",)) if method == "GET" else None
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) + (length.delta if length else 0)))
        self.end_headers()
        if method == "HEAD":
            return
        if length and length.delta < 0:
            body = body[: len(body) + length.delta]
        if drop:
            cut = drop.at if drop.at is not None else len(data) // 2
            body = body[: max(0, cut - start)]
        stall, self._mid_stall = getattr(self, "_mid_stall", None), None
        try:
            if stall:  # send up to `at`, pause, then the rest (a slow or hung transfer)
                cut = max(0, stall.at - start)
                self.wfile.write(body[:cut])
                self.wfile.flush()
                time.sleep(stall.seconds)
                body = body[cut:]
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) or was killed meanwhile
            self.close_connection = True
            return
        if drop or length:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _override(headers: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    out = {**headers, **changes}
    return {k: v for k, v in out.items() if v is not None}


def _api(h: _Handler, method: str, path: str) -> None:
    """The commit API subset: create repo, preupload (all regular), NDJSON commit."""
    hub = h.hub
    length = int(h.headers.get("Content-Length") or 0)
    raw = h.rfile.read(length) if length else b""
    js = {"Content-Type": "application/json"}
    if method == "POST" and path == "/api/repos/create":
        body = json.loads(raw or b"{}")
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        with hub._lock:
            exists = repo_id in hub.repos
            hub.repos.setdefault(repo_id, Repo())
        if exists:
            return h._reply(409, json.dumps({"error": "You already created this model repo"}).encode(), js)
        return h._reply(200, json.dumps({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id}).encode(), js)
    if method == "POST" and path == "/api/validate-yaml":  # model card front matter check
        return h._reply(200, b"{}", js)
    parts = path.split("/")  # ['', 'api', 'models', org, name, op, rev]
    if method == "POST" and len(parts) >= 7 and parts[5] == "preupload":
        files = json.loads(raw).get("files", [])
        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
        return h._reply(200, json.dumps({"files": out, "commitOid": None}).encode(), js)
    if method == "POST" and len(parts) >= 7 and parts[5] == "commit":
        repo_id, branch = f"{parts[3]}/{parts[4]}", unquote(parts[6])
        files = {}
        for line in raw.splitlines():
            item = json.loads(line)
            if item.get("key") == "file":
                value = item["value"]
                files[value["path"]] = base64.b64decode(value["content"])
        if repo_id not in hub.repos:
            return h._reply(404, b"{}", {**js, "X-Error-Code": "RepoNotFound"})
        commit = hub.add_commit(repo_id, files, branch=branch)
        url = f"{hub.endpoint}/{repo_id}/commit/{commit}"
        return h._reply(200, json.dumps({"commitUrl": url, "commitOid": commit, "success": True}).encode(), js)
    h._reply(404, b"{}", js)  # anything else (repo_info...) is not implemented
