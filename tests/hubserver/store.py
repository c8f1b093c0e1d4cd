"""Git-backed repository storage for the test Hub: real bare repos driven through git plumbing.

Every Hub repo is a bare git repository at ``<root>/<type>s/<namespace>/<name>.git`` with a small
``hubserver.json`` beside the objects (visibility, creation time). Commits are built without a
working tree: a private index file is filled from the parent commit (``read-tree``), edited with
``update-index``, written with ``write-tree`` and published with ``commit-tree`` and a
compare-and-swap ``update-ref``, so concurrent writers never lose a commit. Commit shas, branches
and tags are exactly what ``git`` would produce, and a test can inspect a repo with plain git.

Revisions are resolved only as ``refs/heads/<rev>``, ``refs/tags/<rev>`` or a full 40-hex sha;
nothing else reaches ``git rev-parse``, so a revision can never be read as an option or an
expression such as ``HEAD~1``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_INITIAL_ATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


class HubServerError(Exception):
    """An error the test Hub answers with: an HTTP status, an ``X-Error-Code`` and a message."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, commit: str = ""
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit
        super().__init__(message)


@dataclass(frozen=True)
class RepoRecord:
    """One repository: where it lives and its settings."""

    repo_type: str
    repo_id: str
    git_dir: Path
    private: bool
    created_at: str

    @property
    def namespace(self) -> str:
        """The user or organisation that owns the repo."""
        return self.repo_id.split("/", 1)[0]


@dataclass(frozen=True)
class TreeEntry:
    """A file or folder of a commit's tree."""

    path: str
    kind: str  # "file" | "directory"
    oid: str
    size: int


@dataclass(frozen=True)
class CommitEntry:
    """One commit in a branch's history."""

    sha: str
    title: str
    message: str
    author: str
    date: str


def _iso(timestamp: float) -> str:
    """The Hub's date format: ``2024-11-16T00:27:02.000Z`` (the client parses exactly this)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``namespace/name`` with safe segments, else raise a 400."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_SEGMENT.match(p) and ".." not in p for p in parts):
        raise HubServerError(400, f"Invalid repo id {repo_id!r}: expected namespace/name")
    return repo_id


def validate_ref_name(name: str, *, kind: str) -> str:
    """Return a branch or tag name if it is safe for ``refs/heads`` / ``refs/tags``, else a 400."""
    if not _REF_NAME.match(name) or ".." in name or name.endswith((".lock", ".")):
        raise HubServerError(400, f"Invalid {kind} name {name!r}")
    return name


def validate_path(path: str) -> str:
    """Return a file path in a repo if it is relative and has no ``..`` or ``.git`` parts."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
        raise HubServerError(400, f"Invalid path in repo {path!r}")
    if any(ord(c) < 32 for c in path):
        raise HubServerError(400, f"Invalid path in repo {path!r}")
    return path


class GitRepoStore:
    """All repositories of one test Hub, under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # serialises repo creation/deletion and ref updates
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
        }

    # -- plumbing -------------------------------------------------------------------------

    def _git(
        self,
        git_dir: Path,
        *args: str,
        data: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["git", f"--git-dir={git_dir}", *args],
            input=data,
            capture_output=True,
            env={**self._env, **(env or {})},
            check=False,
        )
        if check and proc.returncode != 0:
            raise HubServerError(
                500, f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def _identity(self, user: str) -> dict[str, str]:
        email = f"{user}@users.noreply.hubserver.test"
        return {
            "GIT_AUTHOR_NAME": user,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": user,
            "GIT_COMMITTER_EMAIL": email,
        }

    # -- repositories ---------------------------------------------------------------------

    def _git_dir(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise HubServerError(400, f"Invalid repo type {repo_type!r}")
        return self.root / f"{repo_type}s" / f"{validate_repo_id(repo_id)}.git"

    def get(self, repo_type: str, repo_id: str) -> RepoRecord | None:
        """Return the repo, or None if it does not exist."""
        git_dir = self._git_dir(repo_type, repo_id)
        settings = git_dir / "hubserver.json"
        if not settings.is_file():
            return None
        data = json.loads(settings.read_text())
        return RepoRecord(repo_type, repo_id, git_dir, bool(data["private"]), data["created_at"])

    def create(self, repo_type: str, repo_id: str, *, private: bool, user: str) -> RepoRecord:
        """Create a bare repo whose ``main`` has one commit (``.gitattributes``), as on the Hub.

        Raises:
            HubServerError: 409 if the repo exists.
        """
        git_dir = self._git_dir(repo_type, repo_id)
        with self._lock:
            if (git_dir / "hubserver.json").is_file():
                raise HubServerError(409, f"You already created this {repo_type} repo: {repo_id}")
            git_dir.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "init", "--bare", "--quiet", "--initial-branch=main", str(git_dir)],
                check=True,
                env=self._env,
                capture_output=True,
            )
            created_at = _iso(datetime.now(UTC).timestamp())
            (git_dir / "hubserver.json").write_text(
                json.dumps({"private": private, "created_at": created_at})
            )
        record = RepoRecord(repo_type, repo_id, git_dir, private, created_at)
        self.commit(
            record,
            "main",
            files={".gitattributes": _INITIAL_ATTRIBUTES.encode()},
            summary="initial commit",
            user=user,
            create_branch=True,
        )
        return record

    def delete(self, record: RepoRecord) -> None:
        """Delete a repo and all its history."""
        import shutil

        with self._lock:
            shutil.rmtree(record.git_dir)

    # -- revisions ------------------------------------------------------------------------

    def resolve(self, record: RepoRecord, revision: str) -> str | None:
        """Return the commit sha for a branch, tag or full sha, or None."""
        if _SHA.match(revision):
            proc = self._git(record.git_dir, "cat-file", "-t", revision, check=False)
            return revision if proc.stdout.strip() == b"commit" else None
        if not _REF_NAME.match(revision):
            return None
        for ref in (f"refs/heads/{revision}", f"refs/tags/{revision}"):
            proc = self._git(
                record.git_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False
            )
            if proc.returncode == 0:
                return proc.stdout.decode().strip()
        return None

    def require(self, record: RepoRecord, revision: str) -> str:
        """Like :meth:`resolve`, but a missing revision is a 404 ``RevisionNotFound``."""
        sha = self.resolve(record, revision)
        if sha is None:
            raise HubServerError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return sha

    def refs(self, record: RepoRecord) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Return ``(branches, tags)`` as ``(name, commit sha)`` pairs; tags are peeled."""
        out = self._git(
            record.git_dir,
            "for-each-ref",
            "--format=%(refname)%00%(objectname)%00%(*objectname)",
            "refs/heads",
            "refs/tags",
        ).stdout.decode()
        branches: list[tuple[str, str]] = []
        tags: list[tuple[str, str]] = []
        for line in out.splitlines():
            ref, obj, peeled = line.split("\0")
            if ref.startswith("refs/heads/"):
                branches.append((ref.removeprefix("refs/heads/"), obj))
            else:
                tags.append((ref.removeprefix("refs/tags/"), peeled or obj))
        return branches, tags

    def create_branch(self, record: RepoRecord, name: str, start: str) -> None:
        """Create branch ``name`` at commit ``start``; 409 if it exists."""
        validate_ref_name(name, kind="branch")
        with self._lock:
            proc = self._git(
                record.git_dir, "update-ref", f"refs/heads/{name}", start, "0" * 40, check=False
            )
        if proc.returncode != 0:
            raise HubServerError(409, f"Reference already exists: refs/heads/{name}")

    def delete_branch(self, record: RepoRecord, name: str) -> None:
        """Delete a branch other than ``main``."""
        if name == "main":
            raise HubServerError(403, "Cannot delete the main branch")
        if self.resolve(record, name) is None or name not in dict(self.refs(record)[0]):
            raise HubServerError(404, f"Invalid rev id: {name}", code="RevisionNotFound")
        with self._lock:
            self._git(record.git_dir, "update-ref", "-d", f"refs/heads/{name}")

    def create_tag(
        self, record: RepoRecord, name: str, sha: str, *, message: str | None, user: str
    ) -> None:
        """Tag commit ``sha``: annotated when a message is given, else lightweight; 409 if taken."""
        validate_ref_name(name, kind="tag")
        with self._lock:
            if (
                self._git(
                    record.git_dir,
                    "show-ref",
                    "--verify",
                    "--quiet",
                    f"refs/tags/{name}",
                    check=False,
                ).returncode
                == 0
            ):
                raise HubServerError(409, f"Tag already exists: {name}")
            if message:
                self._git(
                    record.git_dir, "tag", "-a", "-m", message, name, sha, env=self._identity(user)
                )
            else:
                self._git(record.git_dir, "update-ref", f"refs/tags/{name}", sha, "0" * 40)

    def delete_tag(self, record: RepoRecord, name: str) -> None:
        """Delete a tag; 404 ``RevisionNotFound`` if there is none."""
        with self._lock:
            if (
                not _REF_NAME.match(name)
                or self._git(
                    record.git_dir, "update-ref", "-d", f"refs/tags/{name}", check=False
                ).returncode
                != 0
            ):
                raise HubServerError(404, f"Invalid rev id: {name}", code="RevisionNotFound")

    # -- contents -------------------------------------------------------------------------

    def tree(
        self, record: RepoRecord, sha: str, path: str = "", *, recursive: bool = False
    ) -> list[TreeEntry]:
        """List a folder of commit ``sha`` (children only, or everything below it).

        Raises:
            HubServerError: 404 ``EntryNotFound`` if ``path`` is not a folder of that commit.
        """
        if path:
            kind = self._git(record.git_dir, "cat-file", "-t", f"{sha}:{path}", check=False)
            if kind.stdout.strip() != b"tree":
                raise HubServerError(
                    404, f"Entry not found: {path}", code="EntryNotFound", commit=sha
                )
        args = ["ls-tree", "-l", "-z"] + (["-r", "-t"] if recursive else [])
        args += [sha, "--", f"{path}/"] if path else [sha]
        out = self._git(record.git_dir, *args).stdout.decode()
        entries = []
        for item in filter(None, out.split("\0")):
            meta, name = item.split("\t", 1)
            _mode, kind_name, oid, size = meta.split()
            if name == path:  # ``-t`` also shows the folder being listed
                continue
            if kind_name == "blob":
                entries.append(TreeEntry(name, "file", oid, int(size)))
            elif kind_name == "tree":
                entries.append(TreeEntry(name, "directory", oid, 0))
        return entries

    def entry(self, record: RepoRecord, sha: str, path: str) -> TreeEntry | None:
        """Return one file or folder of commit ``sha``, or None."""
        out = self._git(record.git_dir, "ls-tree", "-l", "-z", sha, "--", path).stdout.decode()
        for item in filter(None, out.split("\0")):
            meta, name = item.split("\t", 1)
            _mode, kind_name, oid, size = meta.split()
            if name == path:
                kind = "file" if kind_name == "blob" else "directory"
                return TreeEntry(name, kind, oid, int(size) if kind == "file" else 0)
        return None

    def read_blob(self, record: RepoRecord, oid: str) -> bytes:
        """Return the bytes of blob ``oid``."""
        return self._git(record.git_dir, "cat-file", "blob", oid).stdout

    def last_commit(self, record: RepoRecord, sha: str, path: str) -> CommitEntry:
        """Return the last commit at or before ``sha`` that touched ``path``."""
        return self.log(record, sha, path=path, limit=1)[0]

    def log(
        self, record: RepoRecord, sha: str, *, path: str = "", limit: int = 0
    ) -> list[CommitEntry]:
        """Return the history of ``sha``, newest first."""
        args = ["log", "-z", "--format=%H%x1f%an%x1f%ct%x1f%s%x1f%b"]
        if limit:
            args.append(f"-{limit}")
        args.append(sha)
        if path:
            args += ["--", path]
        out = self._git(record.git_dir, *args).stdout.decode()
        commits = []
        for item in filter(None, out.split("\0")):
            commit_sha, author, stamp, title, body = item.split("\x1f", 4)
            commits.append(CommitEntry(commit_sha, title, body.strip(), author, _iso(int(stamp))))
        return commits

    def commit(
        self,
        record: RepoRecord,
        branch: str,
        *,
        files: Mapping[str, bytes],
        deleted_files: Iterable[str] = (),
        deleted_folders: Iterable[str] = (),
        summary: str,
        description: str = "",
        user: str,
        parent_commit: str | None = None,
        create_branch: bool = False,
    ) -> str:
        """Commit file additions and deletions on top of ``branch`` and move the branch.

        Args:
            record: The repo.
            branch: Branch to commit on; it must exist unless ``create_branch``.
            files: Path in repo -> new content.
            deleted_files: Paths of files to remove; a missing one is a 404 ``EntryNotFound``.
            deleted_folders: Folders to remove with everything under them.
            summary: First line of the commit message.
            description: Rest of the commit message.
            user: Author and committer name.
            parent_commit: When set, the branch must still point there (else 412).
            create_branch: Create the branch (first commit of a repo).

        Returns:
            The new commit sha.
        """
        validate_ref_name(branch, kind="branch")
        head = self.resolve(record, branch) if not create_branch else None
        if head is None and not create_branch:
            raise HubServerError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        if parent_commit is not None and parent_commit != head:
            raise HubServerError(
                412,
                f"A commit has happened since. Parent commit {parent_commit} is not head {head}",
            )
        with tempfile.TemporaryDirectory(prefix="hubserver-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if head is not None:
                self._git(record.git_dir, "read-tree", head, env=env)
            else:
                self._git(record.git_dir, "read-tree", "--empty", env=env)
            tracked = set(
                filter(
                    None,
                    self._git(record.git_dir, "ls-files", "-z", env=env)
                    .stdout.decode()
                    .split("\0"),
                )
            )
            removals = []
            for path in deleted_files:
                if validate_path(path) not in tracked:
                    raise HubServerError(
                        404, f"A file with this name doesn't exist: {path}", code="EntryNotFound"
                    )
                removals.append(path)
            for folder in deleted_folders:
                prefix = validate_path(folder.rstrip("/")) + "/"
                removals += [p for p in tracked if p.startswith(prefix)]
            # ``--index-info`` with mode 0 removes an entry (and needs no work tree).
            index_lines = [f"0 {'0' * 40}\t{path}" for path in removals]
            for path, content in files.items():
                oid = (
                    self._git(record.git_dir, "hash-object", "-w", "--stdin", data=content)
                    .stdout.decode()
                    .strip()
                )
                index_lines.append(f"100644 {oid}\t{validate_path(path)}")
            if index_lines:
                self._git(
                    record.git_dir,
                    "update-index",
                    "--add",
                    "-z",
                    "--index-info",
                    data="\0".join(index_lines).encode() + b"\0",
                    env=env,
                )
            tree = self._git(record.git_dir, "write-tree", env=env).stdout.decode().strip()
        message = summary + (f"\n\n{description}" if description else "")
        parents = ["-p", head] if head else []
        new = (
            self._git(
                record.git_dir,
                "commit-tree",
                tree,
                *parents,
                "-F",
                "-",
                data=message.encode(),
                env=self._identity(user),
            )
            .stdout.decode()
            .strip()
        )
        with self._lock:
            proc = self._git(
                record.git_dir,
                "update-ref",
                f"refs/heads/{branch}",
                new,
                head or "0" * 40,
                check=False,
            )
        if proc.returncode != 0:
            raise HubServerError(412, f"Branch {branch!r} moved during the commit; retry")
        return new
