"""The ``adapterhub`` command line.

Each command is a thin call into :class:`adapterhub.Hub`. Errors of ours become one red line on
stderr and exit code 1 (2 for bad usage), never a traceback; ``ADAPTERHUB_DEBUG=1`` shows it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapterhub.errors import AdapterHubError, ConfigError

app = typer.Typer(
    name="adapterhub",
    help="One frozen quantized base, many LoRA adapters: train, version, share and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Hub home (default: $ADAPTERHUB_HOME or ~/.adapterhub).", show_default=False),
]


def _hub(home: Path | None, precision: str | None = None):  # type: ignore[no-untyped-def]
    from adapterhub.facade import Hub

    _quiet_libraries()
    return Hub(home, precision=precision)


def _quiet_libraries() -> None:
    """The CLI shows its own progress; silence the per-tensor bars and chatter of dependencies."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="bitsandbytes")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command()
def init(
    base: Annotated[str | None, typer.Option(help="HF model id or local folder (default SmolLM2-135M-Instruct).")] = None,
    precision: Annotated[str, typer.Option(help="How to load the base: nf4, int8, bf16 or fp32.")] = "nf4",
    force: Annotated[bool, typer.Option(help="Materialise again even if present.")] = False,
    home: HomeOption = None,
) -> None:
    """Materialise the frozen base into the hub home, once."""
    hub = _hub(home)
    started = time.monotonic()
    with err.status("materialising base…") as status:
        info = hub.init(base, precision=precision, force=force, progress=lambda m: status.update(m))
    out.print(f"base [bold]{info.name}[/] ready at {info.path} ({time.monotonic() - started:.1f}s)")
    out.print(f"fingerprint {info.fingerprint[:16]}…  template {info.template_hash[:16]}…  precision {precision}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).")],
    name: Annotated[str, typer.Option("--name", help="Adapter name in the registry.")],
    home: HomeOption = None,
) -> None:
    """Register a PEFT adapter folder trained elsewhere; prints NAME@N."""
    version = _hub(home).import_adapter(path, name)
    out.print(version.ref)


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="Only versions of this adapter.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """List adapter versions."""
    versions = _hub(home).list(name)
    if as_json:
        out.print_json(json.dumps([v.to_dict() for v in versions]))
        return
    if not versions:
        out.print("no adapters yet: `adapterhub import PATH --name NAME` or `adapterhub train RECIPE`")
        return
    table = Table("ref", "method", "aliases", "parent", "created", "base")
    for v in versions:
        table.add_row(v.ref, v.method, ", ".join(v.aliases), v.parent or "", _when(v.created_at),
                      v.base_fingerprint[:10])
    out.print(table)


@app.command()
def show(ref: Annotated[str, typer.Argument(help="name, name@N or name:alias")], home: HomeOption = None) -> None:
    """Show all metadata of a version and its lineage chain."""
    hub = _hub(home)
    chain = hub.registry.lineage(ref)
    data = chain[0].to_dict()
    data["lineage"] = [v.ref for v in chain]
    out.print_json(json.dumps(data, default=str))


@app.command()
def tag(ref: str, alias: str, home: HomeOption = None) -> None:
    """Point NAME:ALIAS at a version (moves the alias if it exists)."""
    version = _hub(home).tag(ref, alias)
    out.print(f"{version.name}:{alias} -> {version.ref}")


@app.command()
def rm(
    ref: str,
    force: Annotated[bool, typer.Option(help="Delete even if other versions name it as parent.")] = False,
    home: HomeOption = None,
) -> None:
    """Delete a version (or every version of a bare name)."""
    for version in _hub(home).delete(ref, force=force):
        out.print(f"deleted {version.ref}")


@app.command()
def generate(
    ref: Annotated[str | None, typer.Argument(help="Adapter ref; omit with --base.")] = None,
    prompt: Annotated[str | None, typer.Argument(help="The user message.")] = None,
    base: Annotated[bool, typer.Option("--base", help="Use the base with no adapter.")] = False,
    max_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: Annotated[int | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option(help="Override the base precision.")] = None,
    home: HomeOption = None,
) -> None:
    """One chat turn through the base's chat template, with an adapter or --base."""
    if base and prompt is None:
        ref, prompt = None, ref
    if prompt is None or (ref is None and not base):
        raise ConfigError("give `adapterhub generate REF PROMPT` or `adapterhub generate --base PROMPT`")
    text = _hub(home, precision).generate(
        None if base else ref, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed
    )
    out.print(text, markup=False, highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning our errors into one line and an exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except AdapterHubError as e:
        if os.environ.get("ADAPTERHUB_DEBUG"):
            raise
        err.print(f"[red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # typer/click usage errors and aborts
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
