"""``make demo``'s server step: start ``adapterhub serve``, ask the base and an adapter the same
question through the official ``openai`` client, print both answers, stop the server.

    .venv/bin/python -m adapterhub_server.demo --adapter pirate --prompt "What is the capital of France?"

With no ``--adapter`` it uses the most recently registered adapter version. The server runs as a
real subprocess on 127.0.0.1 with a free port, exactly as a user would start it, and is stopped
(SIGTERM, graceful) however the demo ends.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see its output above")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server was not ready after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Same prompt to the base and an adapter, over HTTP.")
    parser.add_argument("--adapter", help="adapter ref (default: the latest registered version)")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--home", type=Path, help="hub home (default: $ADAPTERHUB_HOME or ~/.adapterhub)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    try:
        import openai
    except ImportError:
        raise SystemExit("the demo needs the openai client: pip install 'adapterhub[test]'") from None
    from adapterhub import Hub

    hub = Hub(args.home)
    adapter = args.adapter
    if adapter is None:
        versions = sorted(hub.list(), key=lambda v: v.created_at)
        if not versions:
            raise SystemExit("no adapter registered yet: train or `adapterhub import` one first")
        adapter = versions[-1].ref

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "adapterhub.cli", "serve", "--home", str(hub.home), "--port", str(port)]
    print(f"$ adapterhub serve --port {port}", flush=True)
    process = subprocess.Popen(command, env={**os.environ, "ADAPTERHUB_LOG_LEVEL": "warning"})
    try:
        _wait_ready(url, process, args.timeout)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        base = client.models.list().data[0].id
        messages = [{"role": "user", "content": args.prompt}]
        print(f"\nprompt: {args.prompt}")
        for model in (base, adapter):
            reply = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=args.max_tokens, temperature=0)  # type: ignore[arg-type]
            served = reply.headers.get("x-adapter-version", model)
            text = (reply.parse().choices[0].message.content or "").strip()
            label = "base" if model == base else "adapter"
            print(f"\n── {label}: {served} " + "─" * max(0, 60 - len(served)))
            print(text)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        print("\nserver stopped")


if __name__ == "__main__":
    main()
