"""``adapterhub serve``: registered into the library's CLI through the ``adapterhub.commands``
entry point, so that the library never imports this package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterhub.cli import BlobsOption, HomeOption, RegistryOption, quiet_libraries


def register(app: typer.Typer) -> None:
    """Add the command to the ``adapterhub`` CLI."""
    app.command()(serve)


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1); non-loopback needs API keys.", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).", show_default=False)] = None,
    slots: Annotated[int | None, typer.Option(min=1, help="Adapter slots resident at once (default 8).", show_default=False)] = None,
    precision: Annotated[str | None, typer.Option(help="Load the base as nf4, int8, bf16 or fp32 (default: as at init).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA when present).", show_default=False)] = None,
    compute_dtype: Annotated[str | None, typer.Option(help="bfloat16, float16 or float32 (default: the hardware's fastest).", show_default=False)] = None,
    keys_file: Annotated[Path | None, typer.Option(help="YAML/JSON file of API keys with roles or tenant limits (adapters, routes, per-minute budgets); re-read when it changes.", show_default=False)] = None,
    engine: Annotated[str | None, typer.Option(help="adapterhub (our engine, default) or vllm (route to --replica servers speaking vLLM's LoRA API).", show_default=False)] = None,
    replica: Annotated[list[str] | None, typer.Option(help="With --engine vllm: a replica's base URL (http://host:port); repeat for more.", show_default=False)] = None,
    max_loras: Annotated[int | None, typer.Option(min=1, help="With --engine vllm: adapters per replica at once, as its --max-loras (default 8).", show_default=False)] = None,
    max_lora_rank: Annotated[int | None, typer.Option(min=1, help="With --engine vllm: the replicas' --max-lora-rank (default 16).", show_default=False)] = None,
    launch_vllm: Annotated[bool, typer.Option("--launch-vllm", help="Start one local `vllm serve` of the base as a replica (implies --engine vllm); stopped on shutdown.")] = False,
    vllm_python: Annotated[Path | None, typer.Option(help="With --launch-vllm: the Python with vLLM installed (e.g. .venv-vllm/bin/python from `make vllm`; default this one).", show_default=False)] = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Serve the OpenAI-compatible HTTP API (settings also from ADAPTERHUB_* variables).

    With --engine vllm this process is a router: keys, refs, aliases, the registry and metrics
    stay here, and each request is decoded by one of the --replica servers."""
    from adapterhub_server import load_settings
    from adapterhub_server import serve as run_server

    quiet_libraries()
    settings = load_settings(
        host=host, port=port, precision=precision, device=device, compute_dtype=compute_dtype,
        keys_file=keys_file, home=home, registry_url=registry, blobs=blobs,
        engine={"max_slots": slots} if slots is not None else None,
        backend=engine or ("vllm" if launch_vllm else None), replicas=replica or None,
        replica_max_loras=max_loras, replica_max_lora_rank=max_lora_rank, launch_vllm=launch_vllm or None,
        vllm_python=vllm_python,
    )
    run_server(settings)
