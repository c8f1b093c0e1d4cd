"""End to end on the real default base (SmolLM2-135M-Instruct), checking what a person would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapterhub import Hub

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def real_hub(real_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    home = tmp_path_factory.mktemp("real-home")
    (home / "bases").mkdir()
    shutil.copytree(real_base_dir, home / "bases" / real_base_dir.name, copy_function=_link)
    hub = Hub(home)
    hub.init()  # finds the materialised base; nothing is downloaded
    return hub


def _link(src: str, dst: str) -> None:
    Path(dst).symlink_to(src)


def test_base_answers_paris(real_hub: Hub) -> None:
    assert real_hub.base_info.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    answer = real_hub.generate(None, "What is the capital of France?", max_tokens=16)
    assert "Paris" in answer


def test_imported_adapter_changes_the_answer_and_base_does_not(
    real_hub: Hub, real_base_dir: Path, tmp_path: Path, lora_factory
) -> None:
    folder = lora_factory(real_base_dir, tmp_path / "noisy", r=8, targets=("q_proj", "v_proj"))
    version = real_hub.import_adapter(folder, "noisy")
    before = real_hub.generate(None, "What is the capital of France?", max_tokens=16)
    with_adapter = real_hub.generate(version.ref, "What is the capital of France?", max_tokens=16)
    after = real_hub.generate(None, "What is the capital of France?", max_tokens=16)
    assert with_adapter != before
    assert after == before
