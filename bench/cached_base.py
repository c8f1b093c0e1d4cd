"""A temporary hub home on the default base that the test suite caches (no second download).

The suite materialises the real default base once into ``.tmp/test-home`` (or
``$ADAPTERHUB_TEST_CACHE``); the benches link it into a fresh home instead of converting it again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def hub_on_cached_base(root: Path, precision: str) -> Any:
    """An ``adapterhub.Hub`` in ``root / "home"`` whose base is a link to the cached one."""
    from adapterhub import Hub
    from adapterhub.models.base import DEFAULT_BASE, base_slug

    cache = Path(os.environ.get("ADAPTERHUB_TEST_CACHE", REPO / ".tmp" / "test-home"))
    cached = cache / "bases" / base_slug(DEFAULT_BASE)
    if not (cached / "base.json").exists():
        sys.exit(f"no cached default base at {cached}; run the e2e tests (or `adapterhub init`) first")
    home = root / "home"
    (home / "bases").mkdir(parents=True)
    (home / "bases" / cached.name).symlink_to(cached, target_is_directory=True)
    hub = Hub(home)
    hub.init(precision=precision)
    return hub
