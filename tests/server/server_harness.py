"""What the server tests share besides fixtures: keys, request bodies, error-shape checks, and
real ``adapterhub serve`` processes. (Imported by name: ``import conftest`` is ambiguous when
several test folders have one.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

INFERENCE_KEY = "inference-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef-xyz"

def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/ready")
        if response.status_code == 200:
            return
        if response.json().get("status") == "failed":
            return  # tests of the failed state look at it themselves
        time.sleep(0.05)
    raise TimeoutError("the app did not become ready")


def base_name(client: TestClient | httpx.Client) -> str:
    return str(client.get("/v1/models", headers=auth("admin")).json()["data"][0]["id"])


def auth(role: str | None) -> dict[str, str]:
    """Headers for a role: ``inference``, ``admin``, ``bad`` (unknown key) or None (no header)."""
    key = {"inference": INFERENCE_KEY, "admin": ADMIN_KEY, "bad": "not-a-key-0123456789abcdef"}.get(role or "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def chat_body(model: str, content: str = "What is two plus two?", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "temperature": 0, **extra}


def assert_error_shape(response: httpx.Response, status: int, error_type: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with OpenAI's error object (and no traceback)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and "Traceback" not in error["message"]
    if error_type is not None:
        assert error["type"] == error_type, error
    return dict(error)


# ---------------------------------------------------------------------------- real processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    """An ``adapterhub serve`` subprocess on 127.0.0.1."""

    url: str
    process: subprocess.Popen[bytes]
    home: Path
    log: Path

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit status (uvicorn re-raises the signal after a clean
        shutdown, so -SIGTERM is a clean exit too — :meth:`shut_down_cleanly` checks)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def shut_down_cleanly(self) -> bool:
        status = self.process.returncode
        return status in (0, -signal.SIGTERM) and "Finished server process" in self.logs() \
            and "Traceback" not in self.logs()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(home: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 180.0) -> RunningServer:
    """Start ``adapterhub serve --home HOME --port FREE *args`` and wait until ``/ready``."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    full_env.pop("ADAPTERHUB_HOME", None)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "adapterhub.cli", "serve", "--home", str(home), "--port", str(port), *args],
            stdout=sink, stderr=subprocess.STDOUT, env=full_env,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, home, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"server not ready in {timeout}s:\n{server.logs()}")


def init_home(home: Path, base_dir: Path, loras: dict[str, Path]) -> Path:
    """Materialise the tiny base (fp32) into ``home`` and import the adapters."""
    from adapterhub import Hub

    hub = Hub(home)
    hub.init(str(base_dir), precision="fp32")
    for name, folder in loras.items():
        hub.import_adapter(folder, name)
    return home
