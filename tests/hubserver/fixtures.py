"""Pytest fixtures for the test Hub (loaded through ``pytest_plugins`` in ``tests/conftest.py``).

``hub_server`` is one server per test module (starting it costs milliseconds, and modules keep
their repos apart). ``hub`` is what a test asks for: the server plus the environment a user would
have, i.e. ``HF_ENDPOINT`` pointing at it, ``HF_TOKEN`` set to Alice's write token, and the client's
offline switch off for the duration of the test (``conftest.py`` turns it on for everything else).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import HubServer, Token, User

ALICE = User("alice", orgs=("adapter-lab",))
BOB = User("bob")
TOKENS = {
    "hf_alice_write": Token(ALICE, "write"),
    "hf_alice_read": Token(ALICE, "read"),
    "hf_bob_write": Token(BOB, "write"),
}


@dataclass(frozen=True)
class HubEnv:
    """A running test Hub as seen by a test."""

    endpoint: str
    token: str
    server: HubServer

    @property
    def root(self) -> Path:
        """Where the bare git repos live (``<root>/models/<ns>/<name>.git``)."""
        return self.server.store.root


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A test Hub with Alice (write + read tokens, org ``adapter-lab``) and Bob."""
    with HubServer(tmp_path_factory.mktemp("hub-repos"), TOKENS) as server:
        yield server


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubEnv:
    """The test Hub with HF_ENDPOINT/HF_TOKEN set and the huggingface_hub client online."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_alice_write")
    return HubEnv(hub_server.endpoint, "hf_alice_write", hub_server)
