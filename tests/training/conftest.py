"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterhub import Hub


@pytest.fixture
def hub(home: Path, tiny_base_dir: Path) -> Hub:
    """A fresh hub home on the tiny random base, loaded in fp32 (fast and exact on CPU)."""
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    return hub
