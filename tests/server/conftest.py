"""Server test fixtures: a hub home with the tiny base and two adapters, in-process clients
(``TestClient`` inside ``with`` so the lifespan runs) and real ``adapterhub serve`` processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_harness import init_home, wait_ready
from tinymodels import make_lora_folder

ADAPTERS = {"pirate": 1, "json": 2}  # name -> seed


@pytest.fixture(scope="session")
def make_lora() -> Callable[..., Path]:
    """``tinymodels.make_lora_folder``: a random PEFT LoRA that changes outputs."""
    return make_lora_folder


@pytest.fixture(scope="session")
def server_loras(
    tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory, make_lora: Callable[..., Path]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server-loras")
    return {name: make_lora(tiny_base_dir, root / name, seed=seed) for name, seed in ADAPTERS.items()}


@pytest.fixture
def served_home(home: Path, tiny_base_dir: Path, server_loras: dict[str, Path]) -> Path:
    return init_home(home, tiny_base_dir, server_loras)


@pytest.fixture
def make_client(served_home: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)`` -> a started TestClient over ``served_home`` (closed after)."""
    from adapterhub_server import create_app, load_settings

    clients: list[TestClient] = []

    def make(ready: bool = True, **overrides: Any) -> TestClient:
        overrides.setdefault("home", served_home)
        client = TestClient(create_app(load_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if ready:
            wait_ready(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """An open (no keys) in-process server over the tiny base with pirate@1 and json@1."""
    return make_client()


