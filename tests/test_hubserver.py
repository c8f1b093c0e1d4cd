"""The test Hub answers the real huggingface_hub 2.4 client the way the Hub does.

These tests pin the server itself (routes, headers, errors, git-backed history), so that the
push/pull tests in ``test_hub.py`` can trust it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hubserver.fixtures import HubEnv
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def _git(hub: HubEnv, repo_id: str, *args: str) -> str:
    git_dir = hub.root / "models" / f"{repo_id}.git"
    out = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=True)
    return out.stdout.decode().strip()


@pytest.fixture
def api(hub: HubEnv) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=hub.token)


def _folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / name
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def test_whoami_and_bad_token(hub: HubEnv) -> None:
    me = HfApi(endpoint=hub.endpoint).whoami(token="hf_alice_write")
    assert me["name"] == "alice"
    assert [org["name"] for org in me["orgs"]] == ["adapter-lab"]
    assert me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=hub.endpoint).whoami(token="hf_nobody")
    assert info.value.response.status_code == 401


def test_upload_tag_and_download_each_revision(api: HfApi, hub: HubEnv, tmp_path: Path) -> None:
    url = api.create_repo("roundtrip")  # namespace defaults to the token's user
    assert url.repo_id == "alice/roundtrip"
    first = api.upload_folder(
        repo_id="alice/roundtrip",
        folder_path=_folder(tmp_path, "v1", {"weights.bin": b"\x00\x01one", "sub/a.txt": b"a1"}),
        commit_message="first",
    )
    api.create_tag("alice/roundtrip", tag="v1", revision=first.oid, tag_message="version 1")
    second = api.upload_folder(
        repo_id="alice/roundtrip",
        folder_path=_folder(tmp_path, "v2", {"weights.bin": b"two", "sub/a.txt": b"a1"}),
        commit_message="second",
    )
    assert first.oid != second.oid
    # The shas are real git commits, one parent apart.
    assert _git(hub, "alice/roundtrip", "rev-parse", "main") == second.oid
    assert _git(hub, "alice/roundtrip", "rev-parse", "main~1") == first.oid
    assert _git(hub, "alice/roundtrip", "rev-parse", "v1^{commit}") == first.oid

    cache = tmp_path / "cache"
    at_tag = hf_hub_download(
        "alice/roundtrip", "weights.bin", revision="v1", endpoint=hub.endpoint, cache_dir=cache
    )
    at_sha = hf_hub_download(
        "alice/roundtrip",
        "weights.bin",
        revision=second.oid,
        endpoint=hub.endpoint,
        cache_dir=cache,
    )
    at_main = hf_hub_download(
        "alice/roundtrip", "sub/a.txt", endpoint=hub.endpoint, cache_dir=cache
    )
    assert Path(at_tag).read_bytes() == b"\x00\x01one"
    assert Path(at_sha).read_bytes() == b"two"
    assert Path(at_main).read_bytes() == b"a1"

    snap = Path(
        snapshot_download("alice/roundtrip", revision="v1", endpoint=hub.endpoint, cache_dir=cache)
    )
    assert snap.name == first.oid
    assert sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()) == [
        ".gitattributes",
        "sub/a.txt",
        "weights.bin",
    ]

    refs = api.list_repo_refs("alice/roundtrip")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second.oid)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)]
    commits = api.list_repo_commits("alice/roundtrip")
    assert [c.title for c in commits] == ["second", "first", "initial commit"]
    assert commits[0].authors == ["alice"]

    info = api.model_info("alice/roundtrip", revision="v1", files_metadata=True)
    assert info.sha == first.oid
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    assert sizes["weights.bin"] == 5


def test_tree_paths_info_and_unchanged_upload(api: HfApi, hub: HubEnv, tmp_path: Path) -> None:
    api.create_repo("alice/tree")
    folder = _folder(
        tmp_path,
        "f",
        {
            "README.md": b"---\nlibrary_name: peft\ntags: [sft]\n---\n# hi\n",
            "a/b/c.txt": b"c",
            "a/d.txt": b"dd",
        },
    )
    commit = api.upload_folder(repo_id="alice/tree", folder_path=folder)
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("alice/tree")}
    assert top == {".gitattributes": "RepoFile", "README.md": "RepoFile", "a": "RepoFolder"}
    deep = sorted(e.path for e in api.list_repo_tree("alice/tree", "a", recursive=True))
    assert deep == ["a/b", "a/b/c.txt", "a/d.txt"]
    infos = api.get_paths_info("alice/tree", ["a/d.txt", "a/b", "missing.txt"], expand=True)
    assert [(i.path, type(i).__name__) for i in infos] == [
        ("a/d.txt", "RepoFile"),
        ("a/b", "RepoFolder"),
    ]
    assert infos[0].size == 2 and infos[0].last_commit is not None
    assert infos[0].last_commit.oid == commit.oid
    info = api.model_info("alice/tree")
    assert info.library_name == "peft" and info.tags == ["sft"]
    assert info.card_data is not None and info.card_data.library_name == "peft"
    # The client skips files whose git blob oid the server already has: no new commit.
    again = api.upload_folder(repo_id="alice/tree", folder_path=folder)
    assert again.oid == commit.oid
    assert len(api.list_repo_commits("alice/tree")) == 2


def test_branches_deletes_and_stale_parent(api: HfApi, tmp_path: Path) -> None:
    api.create_repo("alice/branches")
    main = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/branches")
    api.create_branch("alice/branches", branch="dev")
    api.upload_file(
        path_or_fileobj=b"y", path_in_repo="y.txt", repo_id="alice/branches", revision="dev"
    )
    assert api.file_exists("alice/branches", "y.txt", revision="dev")
    assert not api.file_exists("alice/branches", "y.txt")
    api.delete_file("x.txt", "alice/branches", revision="dev")
    assert not api.file_exists("alice/branches", "x.txt", revision="dev")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_branch("alice/branches", branch="dev")
    assert conflict.value.response.status_code == 409
    api.delete_branch("alice/branches", branch="dev")
    assert [b.name for b in api.list_repo_refs("alice/branches").branches] == ["main"]
    api.upload_file(path_or_fileobj=b"z", path_in_repo="z.txt", repo_id="alice/branches")
    with pytest.raises(HfHubHTTPError) as stale:
        api.upload_file(
            path_or_fileobj=b"w",
            path_in_repo="w.txt",
            repo_id="alice/branches",
            parent_commit=main.oid,
        )
    assert stale.value.response.status_code == 412
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(
            path_or_fileobj=b"w",
            path_in_repo="w.txt",
            repo_id="alice/branches",
            revision="no-such-branch",
        )


def test_not_found_errors_carry_hub_error_codes(api: HfApi, hub: HubEnv, tmp_path: Path) -> None:
    api.create_repo("alice/errors")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/does-not-exist", "a.txt", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/errors", revision="v99")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            "alice/errors",
            ".gitattributes",
            revision="v99",
            endpoint=hub.endpoint,
            cache_dir=tmp_path,
        )
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/errors", "nope.txt", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError) as bad:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").model_info("alice/errors")
    assert bad.value.response.status_code == 401


def test_visibility_and_write_permissions(api: HfApi, hub: HubEnv) -> None:
    api.create_repo("alice/secret", private=True)
    api.create_repo("adapter-lab/shared")  # an org Alice belongs to
    bob = HfApi(endpoint=hub.endpoint, token="hf_bob_write")
    reader = HfApi(endpoint=hub.endpoint, token="hf_alice_read")
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    assert api.model_info("alice/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        bob.model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("alice/secret")
    assert reader.model_info("alice/secret").id == "alice/secret"
    for client, status in ((bob, 403), (reader, 403), (anonymous, 401)):
        with pytest.raises(HfHubHTTPError) as denied:
            client.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="adapter-lab/shared")
        assert denied.value.response.status_code == status
    with pytest.raises(HfHubHTTPError) as denied:
        bob.create_repo("alice/not-yours")
    assert denied.value.response.status_code == 403
    api.delete_repo("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/secret")


def test_invalid_readme_metadata_is_refused_before_upload(api: HfApi) -> None:
    api.create_repo("alice/card")
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(
            path_or_fileobj=b"---\nkey: [unclosed\n---\n",
            path_in_repo="README.md",
            repo_id="alice/card",
        )
