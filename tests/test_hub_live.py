"""Opt-in: push and pull against the real Hugging Face Hub.

Runs only when ``ADAPTERHUB_LIVE_HUB_TOKEN`` holds a write token (``ADAPTERHUB_LIVE_HUB_ENDPOINT``
may point at another Hub, e.g. hub-ci). It creates a private repo under the token's user, pushes two
versions, pulls one back into another home, checks the bytes and deletes the repo.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from tinymodels import make_lora_folder

from adapterhub import Hub
from adapterhub.models.adapters import WEIGHTS_FILE

TOKEN = os.environ.get("ADAPTERHUB_LIVE_HUB_TOKEN")
ENDPOINT = os.environ.get("ADAPTERHUB_LIVE_HUB_ENDPOINT", "https://huggingface.co")

pytestmark = pytest.mark.skipif(not TOKEN, reason="set ADAPTERHUB_LIVE_HUB_TOKEN to run")


def test_push_pull_round_trip_on_the_real_hub(
    tmp_path: Path, tiny_base_dir: Path, lora_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    api = HfApi(endpoint=ENDPOINT, token=TOKEN)
    repo = f"{api.whoami()['name']}/adapterhub-live-{uuid.uuid4().hex[:8]}"
    mine, theirs = Hub(tmp_path / "mine"), Hub(tmp_path / "theirs")
    for hub in (mine, theirs):
        hub.init(str(tiny_base_dir), precision="fp32")
    mine.import_adapter(lora_dir, "live")
    mine.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "lora2", seed=2), "live")
    try:
        first = mine.push("live@1", repo, private=True, endpoint=ENDPOINT, token=TOKEN)
        second = mine.push("live@2", repo, endpoint=ENDPOINT, token=TOKEN)
        assert first.created and second.created and first.commit != second.commit
        assert not mine.push("live@1", repo, endpoint=ENDPOINT, token=TOKEN).created
        pulled = theirs.pull(repo, revision="v1", endpoint=ENDPOINT, token=TOKEN)
        assert pulled.commit == first.commit
        weights = theirs.registry.read_file(pulled.version, WEIGHTS_FILE)
        assert weights == (lora_dir / WEIGHTS_FILE).read_bytes()
        assert {t.name for t in api.list_repo_refs(repo).tags} == {"v1", "v2"}
    finally:
        api.delete_repo(repo, missing_ok=True)
