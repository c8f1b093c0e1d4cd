"""The HTTP side of the test Hub: the routes, headers and JSON shapes huggingface_hub 2.4 uses.

Each route was written by reading the 2.4 client (``hf_api.py``, ``file_download.py``,
``_commit_api.py``, ``utils/_http.py``); the client's own parsing is the contract. Routes are
matched on the *raw* request path split at ``/`` with each segment unquoted afterwards, because
the client quotes revisions and tree paths with ``safe=""`` (``refs%2Fpr%2F1``) and a router that
decodes first would split them.

Errors follow the Hub: a JSON body ``{"error": ...}``, ``X-Error-Message`` and, for not-found,
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) which the client turns
into its typed errors. An unknown token is a 401 with the Hub's exact message
``Invalid credentials in Authorization header``; a missing or private repo the caller cannot see is
a 404 ``RepoNotFound`` (the real Hub sometimes says 401 here; the client maps both to
``RepositoryNotFoundError``). Handlers are synchronous (they run git) and run in a thread pool.

Uploads are inline only: ``preupload`` answers ``regular`` for every file, so tests set
``HF_HUB_DISABLE_XET=1`` and no LFS or Xet transfer is involved; an ``lfsFile`` commit line is a
400.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .store import REPO_TYPES, GitRepoStore, HubServerError, RepoRecord, validate_path

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class User:
    """A Hub account: its name and the organisations it belongs to."""

    name: str
    orgs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Token:
    """An access token: whose it is and whether it may write (``"write"``) or only read."""

    user: User
    role: str = "write"


@dataclass
class Call:
    """One request as the handlers see it."""

    method: str
    parts: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    base_url: str
    token: Token | None

    def json(self) -> Any:
        """The body as JSON (400 if it is not)."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError as e:
            raise HubServerError(400, f"Body is not JSON: {e}") from e

    def flag(self, name: str) -> bool:
        """A boolean query parameter (``1``/``true``)."""
        return any(v.lower() in ("1", "true") for v in self.query.get(name, []))


Handler = Callable[["HubApp", Call], Response]


@dataclass
class _Route:
    method: tuple[str, ...]
    pattern: re.Pattern[str]
    handler: Handler


_ROUTES: list[_Route] = []
_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_RESOLVE = (
    r"(?:/(?P<type>datasets|spaces))?/(?P<ns>[^/]+)/(?P<name>[^/]+)"
    r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)"
)


def route(methods: str, pattern: str) -> Callable[[Handler], Handler]:
    """Register a handler for a raw-path regex (segments are unquoted after matching)."""

    def register(handler: Handler) -> Handler:
        _ROUTES.append(_Route(tuple(methods.split()), re.compile(f"^{pattern}$"), handler))
        return handler

    return register


@dataclass
class HubApp:
    """The ASGI app: a :class:`GitRepoStore` behind the Hub's HTTP API, with a token table.

    Args:
        store: Where the repositories live.
        tokens: Token string -> :class:`Token`.
    """

    store: GitRepoStore
    tokens: dict[str, Token] = field(default_factory=dict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        request = Request(scope, receive)
        raw_path = scope.get("raw_path", scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        try:
            for candidate in _ROUTES:
                match = candidate.pattern.match(raw_path)
                if match and request.method in candidate.method:
                    call = Call(
                        method=request.method,
                        parts={
                            k: unquote(v) for k, v in match.groupdict().items() if v is not None
                        },
                        query=parse_qs(request.url.query, keep_blank_values=True),
                        headers={k.lower(): v for k, v in request.headers.items()},
                        body=await request.body(),
                        base_url=str(request.base_url).rstrip("/"),
                        token=self._token(request),
                    )
                    response = await run_in_threadpool(candidate.handler, self, call)
                    break
            else:
                raise HubServerError(404, f"No route for {request.method} {raw_path}")
        except HubServerError as e:
            response = _error(e)
        await response(scope, receive, send)

    def _token(self, request: Request) -> Token | None:
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            raise HubServerError(401, INVALID_CREDENTIALS)
        return token

    # -- permissions ----------------------------------------------------------------------

    def readable(self, call: Call, repo_type: str, repo_id: str) -> RepoRecord:
        """The repo if the caller may read it, else 404 ``RepoNotFound`` (no existence leak)."""
        record = self.store.get(repo_type, repo_id)
        if record is None or (record.private and not _member(call.token, record.namespace)):
            raise HubServerError(404, "Repository not found", code="RepoNotFound")
        return record

    def writable(self, call: Call, repo_type: str, repo_id: str) -> tuple[RepoRecord, Token]:
        """The repo and token if the caller may write; 401 without a token, 403 without rights."""
        if call.token is None:
            raise HubServerError(401, "You must be authenticated to do this; pass a token")
        record = self.readable(call, repo_type, repo_id)
        return record, _require_write(call, record.namespace)


def _member(token: Token | None, namespace: str) -> bool:
    return token is not None and namespace in (token.user.name, *token.user.orgs)


def _require_write(call: Call, namespace: str) -> Token:
    if call.token is None:
        raise HubServerError(401, "You must be authenticated to do this; pass a token")
    if not _member(call.token, namespace):
        raise HubServerError(403, f"You don't have the rights to write to namespace {namespace}")
    if call.token.role != "write":
        raise HubServerError(403, "This token is read-only; use a token with the write role")
    return call.token


def _error(e: HubServerError) -> Response:
    headers = {"X-Error-Message": e.message}
    if e.code:
        headers["X-Error-Code"] = e.code
    if e.commit:
        headers["X-Repo-Commit"] = e.commit
    return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)


def _repo(call: Call) -> tuple[str, str]:
    repo_type = call.parts.get("type", "models")[:-1]
    return repo_type, f"{call.parts['ns']}/{call.parts['name']}"


def _card_data(readme: bytes) -> dict[str, Any] | None:
    """Parse the YAML front matter of a README (None when there is none)."""
    text = readme.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise ValueError("metadata must be a mapping")
    return data or {}


# -- account ------------------------------------------------------------------------------


@route("GET", r"/api/whoami-v2")
def whoami(app: HubApp, call: Call) -> Response:
    """Who the token belongs to, with its orgs and role."""
    if call.token is None:
        raise HubServerError(401, INVALID_CREDENTIALS)
    user = call.token.user
    return JSONResponse(
        {
            "type": "user",
            "id": f"id-{user.name}",
            "name": user.name,
            "fullname": user.name,
            "email": f"{user.name}@hubserver.test",
            "emailVerified": True,
            "isPro": False,
            "orgs": [{"type": "org", "name": org, "fullname": org} for org in user.orgs],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "test token", "role": call.token.role},
            },
        }
    )


# -- repositories -------------------------------------------------------------------------


@route("POST", r"/api/repos/create")
def create_repo(app: HubApp, call: Call) -> Response:
    """Create a repo (409 if it exists); the namespace defaults to the token's user."""
    body = call.json()
    if call.token is None:
        raise HubServerError(401, "You must be authenticated to create a repo; pass a token")
    namespace = body.get("organization") or call.token.user.name
    repo_type = body.get("type") or "model"
    if repo_type not in REPO_TYPES:
        raise HubServerError(400, f"Invalid repo type {repo_type!r}")
    repo_id = f"{namespace}/{body.get('name', '')}"
    _require_write(call, namespace)
    private = body.get("visibility", "private" if body.get("private") else "public") == "private"
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    url = f"{call.base_url}/{prefix}{repo_id}"
    try:
        app.store.create(repo_type, repo_id, private=private, user=call.token.user.name)
    except HubServerError as e:
        if e.status == 409:
            return JSONResponse(
                {"error": e.message, "url": url},
                status_code=409,
                headers={"X-Error-Message": e.message},
            )
        raise
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@route("DELETE", r"/api/repos/delete")
def delete_repo(app: HubApp, call: Call) -> Response:
    """Delete a repo and its history."""
    body = call.json()
    namespace = body.get("organization") or (call.token.user.name if call.token else "")
    repo_id = f"{namespace}/{body.get('name', '')}"
    record, _ = app.writable(call, body.get("type") or "model", repo_id)
    app.store.delete(record)
    return JSONResponse({})


@route("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?")
def repo_info(app: HubApp, call: Call) -> Response:
    """``model_info`` / ``dataset_info`` at a revision: sha, siblings, card data, tags."""
    repo_type, repo_id = _repo(call)
    record = app.readable(call, repo_type, repo_id)
    sha = app.store.require(record, call.parts.get("rev", "main"))
    files = [e for e in app.store.tree(record, sha, recursive=True) if e.kind == "file"]
    last = app.store.log(record, sha, limit=1)[0]
    card: dict[str, Any] | None = None
    readme = next((e for e in files if e.path == "README.md"), None)
    if readme is not None:
        try:
            card = _card_data(app.store.read_blob(record, readme.oid))
        except (yaml.YAMLError, ValueError):
            card = None
    siblings = [
        {"rfilename": e.path, **({"size": e.size, "blobId": e.oid} if call.flag("blobs") else {})}
        for e in files
    ]
    card = card or {}
    tags = [str(t) for t in card.get("tags") or [] if isinstance(t, (str, int, float))]
    info: dict[str, Any] = {
        "_id": f"id-{repo_id}",
        "id": repo_id,
        "author": record.namespace,
        "sha": sha,
        "lastModified": last.date,
        "createdAt": record.created_at,
        "private": record.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "siblings": siblings,
        "cardData": card or None,
        "usedStorage": sum(e.size for e in files),
    }
    if repo_type == "model":
        info["modelId"] = repo_id
        info["library_name"] = card.get("library_name")
        info["pipeline_tag"] = card.get("pipeline_tag")
    return JSONResponse(info)


@route("POST", r"/api/validate-yaml")
def validate_yaml(app: HubApp, call: Call) -> Response:
    """Check a README's YAML front matter; 400 with ``errors`` when it does not parse."""
    content = str(call.json().get("content", ""))
    try:
        _card_data(content.encode())
    except (yaml.YAMLError, ValueError) as e:
        return JSONResponse(
            {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}, status_code=400
        )
    return JSONResponse({"errors": [], "warnings": []})


# -- writes -------------------------------------------------------------------------------


@route("POST", _REPO + r"/preupload/(?P<rev>[^/]+)")
def preupload(app: HubApp, call: Call) -> Response:
    """Upload mode per file: always ``regular`` (inline base64), plus the current blob oid."""
    repo_type, repo_id = _repo(call)
    record, _ = app.writable(call, repo_type, repo_id)
    sha = app.store.resolve(record, call.parts["rev"])
    answer = []
    for item in call.json().get("files", []):
        path = validate_path(str(item.get("path", "")))
        entry = app.store.entry(record, sha, path) if sha else None
        answer.append(
            {
                "path": path,
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": entry.oid if entry and entry.kind == "file" else None,
            }
        )
    return JSONResponse({"files": answer, "commitOid": sha})


@route("POST", _REPO + r"/commit/(?P<rev>[^/]+)")
def commit(app: HubApp, call: Call) -> Response:
    """Apply an NDJSON commit (header, base64 ``file`` lines, ``deletedFile``/``deletedFolder``)."""
    repo_type, repo_id = _repo(call)
    record, token = app.writable(call, repo_type, repo_id)
    if call.flag("create_pr"):
        raise HubServerError(400, "This test Hub does not support pull requests (create_pr)")
    header: dict[str, Any] | None = None
    files: dict[str, bytes] = {}
    deleted_files: list[str] = []
    deleted_folders: list[str] = []
    for number, line in enumerate(call.body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as e:
            raise HubServerError(400, f"Bad NDJSON commit line {number}: {e}") from e
        if key == "header":
            header = value
        elif key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubServerError(400, f"Unsupported encoding {value.get('encoding')!r}")
            files[validate_path(value["path"])] = base64.b64decode(value["content"])
        elif key == "deletedFile":
            deleted_files.append(value["path"])
        elif key == "deletedFolder":
            deleted_folders.append(value["path"])
        elif key == "lfsFile":
            raise HubServerError(400, "This test Hub takes regular (inline) uploads only, not LFS")
        else:
            raise HubServerError(400, f"Unknown commit operation {key!r}")
    if header is None or not header.get("summary"):
        raise HubServerError(400, "The commit has no header line with a summary")
    sha = app.store.commit(
        record,
        call.parts["rev"],
        files=files,
        deleted_files=deleted_files,
        deleted_folders=deleted_folders,
        summary=header["summary"],
        description=header.get("description") or "",
        user=token.user.name,
        parent_commit=header.get("parentCommit"),
    )
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return JSONResponse(
        {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{call.base_url}/{prefix}{repo_id}/commit/{sha}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }
    )


@route("POST DELETE", _REPO + r"/branch/(?P<branch>[^/]+)")
def branch(app: HubApp, call: Call) -> Response:
    """Create a branch (from ``startingPoint``, else ``main``) or delete one."""
    repo_type, repo_id = _repo(call)
    record, _ = app.writable(call, repo_type, repo_id)
    if call.method == "DELETE":
        app.store.delete_branch(record, call.parts["branch"])
    else:
        start = app.store.require(record, call.json().get("startingPoint") or "main")
        app.store.create_branch(record, call.parts["branch"], start)
    return JSONResponse({})


@route("POST DELETE", _REPO + r"/tag/(?P<rev>[^/]+)")
def tag(app: HubApp, call: Call) -> Response:
    """POST tags the revision in the path with ``{"tag", "message"}``; DELETE removes that tag."""
    repo_type, repo_id = _repo(call)
    record, token = app.writable(call, repo_type, repo_id)
    if call.method == "DELETE":
        app.store.delete_tag(record, call.parts["rev"])
        return JSONResponse({})
    body = call.json()
    sha = app.store.require(record, call.parts["rev"])
    app.store.create_tag(
        record, str(body.get("tag", "")), sha, message=body.get("message"), user=token.user.name
    )
    return JSONResponse({})


# -- reads --------------------------------------------------------------------------------


@route("GET", _REPO + r"/refs")
def refs(app: HubApp, call: Call) -> Response:
    """Branches and tags with the commit each points at."""
    repo_type, repo_id = _repo(call)
    branches, tags = app.store.refs(app.readable(call, repo_type, repo_id))
    body: dict[str, Any] = {
        "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in branches],
        "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in tags],
        "converts": [],
    }
    if call.flag("include_prs"):
        body["pullRequests"] = []
    return JSONResponse(body)


@route("GET", _REPO + r"/commits/(?P<rev>[^/]+)")
def commits(app: HubApp, call: Call) -> Response:
    """History of a revision, newest first; each author carries the ``user`` field."""
    repo_type, repo_id = _repo(call)
    record = app.readable(call, repo_type, repo_id)
    sha = app.store.require(record, call.parts["rev"])
    return JSONResponse(
        [
            {
                "id": c.sha,
                "title": c.title,
                "message": c.message,
                "date": c.date,
                "authors": [{"user": c.author, "avatar": None}],
            }
            for c in app.store.log(record, sha)
        ]
    )


def _entry_json(
    app: HubApp, record: RepoRecord, sha: str, entry: Any, expand: bool
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": entry.kind,
        "oid": entry.oid,
        "size": entry.size,
        "path": entry.path,
    }
    if expand:
        last = app.store.last_commit(record, sha, entry.path)
        item["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
    return item


@route("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?")
def tree(app: HubApp, call: Call) -> Response:
    """Files and folders under a path (``recursive`` for everything below it)."""
    repo_type, repo_id = _repo(call)
    record = app.readable(call, repo_type, repo_id)
    sha = app.store.require(record, call.parts["rev"])
    path = call.parts.get("path", "").strip("/")
    if path:
        validate_path(path)
    entries = app.store.tree(record, sha, path, recursive=call.flag("recursive"))
    expand = call.flag("expand")
    return JSONResponse([_entry_json(app, record, sha, e, expand) for e in entries])


@route("POST", _REPO + r"/paths-info/(?P<rev>[^/]+)")
def paths_info(app: HubApp, call: Call) -> Response:
    """Info on the listed paths (form-encoded ``paths``); missing paths are left out."""
    repo_type, repo_id = _repo(call)
    record = app.readable(call, repo_type, repo_id)
    sha = app.store.require(record, call.parts["rev"])
    if call.headers.get("content-type", "").startswith("application/json"):
        form = call.json()
        paths, expand = form.get("paths", []), bool(form.get("expand"))
    else:
        form = parse_qs(call.body.decode(), keep_blank_values=True)
        paths, expand = form.get("paths", []), form.get("expand", ["False"])[0].lower() == "true"
    found = []
    for path in paths:
        entry = app.store.entry(record, sha, validate_path(path.strip("/")))
        if entry is not None:
            found.append(_entry_json(app, record, sha, entry, expand))
    return JSONResponse(found)


@route("GET HEAD", _RESOLVE)
def resolve(app: HubApp, call: Call) -> Response:
    """Serve a file at a revision with ``X-Repo-Commit``, ``ETag`` and byte ranges."""
    repo_type = (call.parts.get("type") or "models")[:-1]
    record = app.readable(call, repo_type, f"{call.parts['ns']}/{call.parts['name']}")
    sha = app.store.require(record, call.parts["rev"])
    path = validate_path(call.parts["path"])
    entry = app.store.entry(record, sha, path)
    if entry is None or entry.kind != "file":
        raise HubServerError(404, f"Entry not found: {path}", code="EntryNotFound", commit=sha)
    headers = {
        "X-Repo-Commit": sha,
        "ETag": f'"{entry.oid}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if call.method == "HEAD":
        return Response(b"", headers={**headers, "Content-Length": str(entry.size)})
    data = app.store.read_blob(record, entry.oid)
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", call.headers.get("range", ""))
    if match:
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else len(data) - 1
        if start >= len(data) or end < start:
            return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
        end = min(end, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(data[start : end + 1], status_code=206, headers=headers)
    return Response(data, headers=headers)
