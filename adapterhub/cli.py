"""The ``adapterhub`` command line.

Each command is a thin call into :class:`adapterhub.Hub`. Errors of ours become one red line on
stderr and exit code 1 (2 for bad usage), never a traceback; ``ADAPTERHUB_DEBUG=1`` shows it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapterhub.core.progress import ProgressEvent
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
    typer.Option(
        "--home", help="Hub home (default: $ADAPTERHUB_HOME or ~/.adapterhub).", show_default=False
    ),
]


RegistryOption = Annotated[
    str | None,
    typer.Option("--registry", help="Registry database: sqlite:///path or postgresql://user@host/db "
                 "(default: $ADAPTERHUB_REGISTRY_URL, else the home's registry.db).", show_default=False),
]
BlobsOption = Annotated[
    str | None,
    typer.Option("--blobs", help="Where the registry's files live: a folder or s3://bucket/prefix "
                 "(default: $ADAPTERHUB_BLOBS, else beside an SQLite registry).", show_default=False),
]


DeviceOption = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA when present, else the CPU).",
                 show_default=False),
]
ComputeDtypeOption = Annotated[
    str | None,
    typer.Option("--compute-dtype", help="bfloat16, float16 or float32 (default: what the hardware runs fastest).",
                 show_default=False),
]


def _hub(home: Path | None, precision: str | None = None, device: str | None = None,
         compute_dtype: str | None = None, *, registry: str | None = None,
         blobs: str | None = None):  # type: ignore[no-untyped-def]
    from adapterhub.facade import Hub

    quiet_libraries()
    return Hub(home, precision=precision, device=device, compute_dtype=compute_dtype,
               registry=registry, blobs=blobs)


def quiet_libraries() -> None:
    """The CLI shows its own progress; silence the per-tensor bars and chatter of dependencies."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # TRL's per-dataset "Map" bars
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-phase bars; ours are drawn by rich
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="bitsandbytes")
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes inside dependencies
    # Raised by torch at the first backward through a one-row NF4 matmul (bitsandbytes' gemv
    # path): that path only runs for inputs that need no gradient, so nothing is lost.
    warnings.filterwarnings("ignore", message="bitsandbytes::gemv_4bit: an autograd kernel")
    # Preference batches carry no ``input_ids``, so transformers says at every step that it cannot
    # count tokens; the progress line simply shows no tok/s for those methods.
    logging.getLogger("transformers.trainer").addFilter(
        lambda record: "number of tokens seen" not in record.getMessage()
    )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command()
def init(
    base: Annotated[
        str | None,
        typer.Option(help="HF model id or local folder (default SmolLM2-135M-Instruct)."),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="How to load the base: nf4, int8, bf16 or fp32.")
    ] = "nf4",
    force: Annotated[bool, typer.Option(help="Materialise again even if present.")] = False,
    home: HomeOption = None,
) -> None:
    """Materialise the frozen base into the hub home, once."""
    hub = _hub(home)
    started = time.monotonic()
    with err.status("materialising base…") as status:
        info = hub.init(base, precision=precision, force=force, progress=lambda m: status.update(m))
    out.print(f"base [bold]{info.name}[/] ready at {info.path} ({time.monotonic() - started:.1f}s)")
    out.print(
        f"fingerprint {info.fingerprint[:16]}…  template {info.template_hash[:16]}…  precision {precision}"
    )


@app.command("import")
def import_(
    path: Annotated[
        Path,
        typer.Argument(
            help="A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Adapter name in the registry.")],
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Register a PEFT adapter folder trained elsewhere; prints NAME@N."""
    version = _hub(home, registry=registry, blobs=blobs).import_adapter(path, name)
    out.print(version.ref)


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="Only versions of this adapter.")] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="Add a column: TASK:METRIC (newest evaluation) or a training metric "
                     "such as general_ppl_ratio (repeatable).", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """List adapter versions."""
    hub = _hub(home, registry=registry, blobs=blobs)
    versions = hub.list(name)
    columns = [_column(m) for m in metric or []]
    measured = [{c: _measure(hub, v, c) for c in columns} for v in versions]
    if as_json:
        rows = [{**v.to_dict(), **({"measured": m} if columns else {})} for v, m in zip(versions, measured, strict=True)]
        out.print_json(json.dumps(rows))
        return
    if not versions:
        out.print(
            "no adapters yet: `adapterhub import PATH --name NAME` or `adapterhub train RECIPE`"
        )
        return
    table = Table("ref", "method", "aliases", "parent", "created", "base", *columns)
    for v, m in zip(versions, measured, strict=True):
        table.add_row(
            v.ref,
            v.method,
            ", ".join(v.aliases),
            v.parent or "",
            _when(v.created_at),
            v.base_fingerprint[:10],
            *("" if m[c] is None else f"{m[c]:.4g}" for c in columns),
        )
    out.print(table)


def _column(text: str) -> str:
    from adapterhub.registry.gates import METRIC_ALIASES

    return text if ":" in text else METRIC_ALIASES.get(text, text)


def _measure(hub, version, column: str) -> float | None:  # type: ignore[no-untyped-def]
    """The newest evaluation ``task:metric`` of a version, or one of its training metrics."""
    if ":" not in column:
        value = version.metrics.get(column)
        return float(value) if isinstance(value, int | float) else None
    found = {e.subject: e.value for e in hub.registry.evaluations(version, latest=True)}
    return found.get(column)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="name, name@N or name:alias")],
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Show all metadata of a version, its newest evaluations, its aliases' gates and its lineage."""
    hub = _hub(home, registry=registry, blobs=blobs)
    chain = hub.registry.lineage(ref)
    version = chain[0]
    data = version.to_dict()
    data["evaluations"] = [e.to_dict() for e in hub.registry.evaluations(version, latest=True)]
    data["gates"] = {alias: [str(g) for g in hub.registry.gates(version.name, alias)]
                     for alias in version.aliases if hub.registry.gates(version.name, alias)}
    data["lineage"] = [v.ref for v in chain]
    out.print_json(json.dumps(data, default=str))


@app.command()
def tag(
    ref: str,
    alias: str,
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="A rule the alias holds from now on, replacing its old ones, e.g. "
                     "'adapterhub_capitals:acc>=parent' or 'forgetting<=1.2' (repeatable).",
                     show_default=False),
    ] = None,
    clear_gates: Annotated[bool, typer.Option("--clear-gates", help="Remove the alias's rules.")] = False,
    evaluate: Annotated[
        bool, typer.Option(help="Run the evaluations a rule needs and the version or its parent lacks.")
    ] = True,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Point NAME:ALIAS at a version (moves the alias if it exists); a gated alias checks its rules."""
    if gate and clear_gates:
        raise ConfigError("give --gate or --clear-gates, not both")
    hub = _hub(home, registry=registry, blobs=blobs)
    with _eval_bar("evaluating for the gate") as progress:
        version = hub.tag(ref, alias, gates=[] if clear_gates else gate, evaluate_missing=evaluate,
                          progress=progress)
    for check in hub.registry.check_gates(version, hub.registry.gates(version.name, alias)):
        err.print(f"gate {check}", highlight=False, markup=False)
    out.print(f"{version.name}:{alias} -> {version.ref}")


@app.command()
def rm(
    ref: str,
    force: Annotated[
        bool, typer.Option(help="Delete even if other versions name it as parent.")
    ] = False,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Delete a version (or every version of a bare name)."""
    for version in _hub(home, registry=registry, blobs=blobs).delete(ref, force=force):
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
    device: DeviceOption = None,
    compute_dtype: ComputeDtypeOption = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """One chat turn through the base's chat template, with an adapter or --base."""
    if base and prompt is None:
        ref, prompt = None, ref
    if prompt is None or (ref is None and not base):
        raise ConfigError(
            "give `adapterhub generate REF PROMPT` or `adapterhub generate --base PROMPT`"
        )
    hub = _hub(home, precision, device, compute_dtype, registry=registry, blobs=blobs)
    if not base:
        hub.resolve(ref)  # an unknown adapter fails before the base loads
    err.print(hub.base.summary(), highlight=False, soft_wrap=True)
    text = hub.generate(
        None if base else ref, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed
    )
    out.print(text, markup=False, highlight=False)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe field, e.g. --set training.max_steps=20 (repeatable).",
                     show_default=False),
    ] = None,
    show_example: Annotated[
        bool, typer.Option("--show-example", help="Print one rendered training example with its loss mask; no training.")
    ] = False,
    example: Annotated[int, typer.Option(min=0, help="Which example --show-example renders.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue this recipe's interrupted run from its last checkpoint.")] = False,
    processes: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Train data-parallel on N processes (sets training.processes).",
                     show_default=False),
    ] = None,
    device: DeviceOption = None,
    compute_dtype: ComputeDtypeOption = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Train a recipe on the base and register the adapter; prints NAME@N.

    Ctrl-C once stops at the next step with a checkpoint (resume with --resume); twice aborts.
    --processes, --device and --compute-dtype set the recipe's training.processes, training.device
    and training.compute_dtype.
    """
    hub = _hub(home, registry=registry, blobs=blobs)
    set_ = [*(set_ or []),
            *([f"training.processes={processes}"] if processes else []),
            *([f"training.device={device}"] if device else []),
            *([f"training.compute_dtype={compute_dtype}"] if compute_dtype else [])]
    if show_example:
        from rich.text import Text

        view = hub.show_example(recipe, index=example, **_overrides_mapping(set_))
        if out.is_terminal:
            text = Text()
            for chunk, loss in view.segments:
                text.append(chunk, style="bold black on green" if loss else "dim")
            out.print(text)
            out.print(f"[green]highlighted[/]: {view.rendered.num_loss_tokens} of "
                      f"{len(view.rendered.input_ids)} tokens carry loss")
        else:
            out.print(view.text, markup=False, highlight=False)
        return
    version = _run_training(hub, recipe, set_, resume)
    m = version.metrics
    summary = [f"train_loss {m['train_loss']:.4f}"]
    if "eval_loss" in m:
        summary.append(f"eval_loss {m['eval_loss']:.4f}")
    if "general_ppl_ratio" in m:
        summary.append(
            f"general-text ppl {m['general_ppl_base']:.2f} -> {m['general_ppl_adapter']:.2f} "
            f"(x{m['general_ppl_ratio']:.3f})"
        )
    err.print(f"registered {version.ref}: " + ", ".join(summary), highlight=False)
    out.print(version.ref)


def _run_training(hub, recipe: Path, overrides: list[str] | None, resume: bool):  # type: ignore[no-untyped-def]
    """Run with a live bar on stderr (plain lines when not a terminal); Ctrl-C cancels cleanly."""
    import signal

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from adapterhub.core.progress import CancelToken

    cancel = CancelToken()

    def on_sigint(_signum, _frame):  # type: ignore[no-untyped-def]
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        err.print("[yellow]stopping at the next step (Ctrl-C again to abort)…[/]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
            task = bar.add_task("preparing", total=None, stats="")

            def update(event: ProgressEvent) -> None:
                if event.kind == "start" and event.step:  # a resumed run says where it resumed
                    bar.console.print(event.message, highlight=False, markup=False)
                if event.kind in ("message", "failed", "cancelled"):
                    if event.message:
                        bar.console.print(event.message, highlight=False, markup=False)
                    return
                stats = []
                if event.loss is not None:
                    stats.append(f"{'eval ' if event.kind == 'eval' else ''}loss {event.loss:.4f}")
                if event.learning_rate is not None:
                    stats.append(f"lr {event.learning_rate:.2e}")
                if event.tokens_per_s:
                    stats.append(f"{event.tokens_per_s:.0f} tok/s")
                total = event.total_steps or None
                bar.update(task, description="training", total=total, completed=event.step,
                           stats="  ".join(stats))
                if not err.is_terminal and event.kind in ("step", "eval"):
                    eta = f"  eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
                    err.print(f"step {event.step}/{event.total_steps}  " + "  ".join(stats) + eta,
                              highlight=False)

            return hub.train(recipe, progress=update, cancel=cancel, resume=resume,
                             **_overrides_mapping(overrides))
    finally:
        signal.signal(signal.SIGINT, previous)


def _overrides_mapping(overrides: list[str] | None) -> dict[str, object]:
    """``--set a.b=1`` pairs as the ``a__b=1`` keywords ``Hub.train`` takes (values parsed as YAML)."""
    from adapterhub.training.loading import apply_overrides

    nested = apply_overrides({}, overrides or [])
    flat: dict[str, object] = {}

    def walk(node: dict[str, object], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}__")
            else:
                flat[f"{prefix}{key}"] = value

    walk(nested, "")
    return flat


@app.command("eval")
def eval_(
    ref: Annotated[str | None, typer.Argument(help="Version to evaluate; omit with --base.")] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="A task folder or YAML (recipes/evals/capitals) or an lm-eval task "
                     "name (repeatable).", show_default=False),
    ] = None,
    base: Annotated[bool, typer.Option("--base", help="Evaluate the base with no adapter (not recorded).")] = False,
    server: Annotated[
        str | None,
        typer.Option(help="Evaluate through a running server (http://host:port) instead of in process.",
                     show_default=False),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="ADAPTERHUB_API_KEY", help="The server's key.", show_default=False),
    ] = None,
    chat: Annotated[bool, typer.Option(help="Render prompts with the chat template (generation tasks).")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N documents of each task.")] = None,
    num_fewshot: Annotated[int | None, typer.Option(min=0, help="Few-shot examples per prompt.")] = None,
    record: Annotated[bool, typer.Option(help="Store the results as evaluations of the version.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: DeviceOption = None,
    compute_dtype: ComputeDtypeOption = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Run lm-evaluation-harness on a version and record the results next to it."""
    if base == (ref is not None):
        raise ConfigError("give `adapterhub eval REF --task T` or `adapterhub eval --base --task T`")
    hub = _hub(home, device=device, compute_dtype=compute_dtype, registry=registry, blobs=blobs)
    version = hub.resolve(ref) if ref else None  # an unknown adapter fails before anything loads
    if server is None:
        err.print(hub.base.summary(), highlight=False, soft_wrap=True)
    with _eval_bar("evaluating") as progress:
        report = hub.evaluate(version.ref if version else None, list(task or []), server=server,
                              api_key=api_key, chat=chat, limit=limit, num_fewshot=num_fewshot,
                              record=record, progress=progress)
    if as_json:
        out.print_json(json.dumps([e.to_dict() for e in report.evaluations]))
        return
    table = Table("task", "metric", "value", "stderr", "samples")
    for e in report.evaluations:
        table.add_row(e.task, e.metric, f"{e.value:.4f}", "" if e.stderr is None else f"{e.stderr:.4f}",
                      str(e.samples or ""))
    out.print(table)
    if version is not None and record:
        err.print(f"recorded on {version.ref}; `adapterhub show {version.ref}` lists them", highlight=False)


@contextmanager
def _eval_bar(label: str) -> Iterator[Callable[[ProgressEvent], None]]:
    """A bar on stderr (terminals only) over the requests of an evaluation."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(event: ProgressEvent) -> None:
            if event.kind == "start" and not err.is_terminal:
                err.print(event.message, highlight=False, markup=False)
            elif event.kind == "step":
                bar.update(task, description=f"{label}: {event.message}", total=event.total_steps,
                           completed=event.step)

        yield update


@app.command()
def doctor(
    repair: Annotated[
        bool, typer.Option(help="Remove leftovers and unreferenced blobs; checkpoint the WAL.")
    ] = False,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Show the hardware picture, then check the whole registry: checksums, database, leftovers.

    Exit 1 if registry problems remain.
    """
    from adapterhub.core.hardware import detect_platform
    from adapterhub.facade import default_home
    from adapterhub.registry.doctor import diagnose

    quiet_libraries()
    for key, value in detect_platform().as_dict().items():
        out.print(f"{key + ':':16} {value}", markup=False, highlight=False)
    report = diagnose(home or default_home(), repair=repair, url=registry, blobs=blobs)
    for line in report.lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if not report.healthy:
        raise typer.Exit(1)


registry_app = typer.Typer(help="Operations on a whole registry.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("copy")
def registry_copy(
    src: Annotated[str, typer.Argument(metavar="SRC", help="Source: a database URL (sqlite:///path, "
                                       "postgresql://user@host/db) or a hub home folder.")],
    dst: Annotated[str, typer.Argument(metavar="DST", help="Destination, the same way.")],
    src_blobs: Annotated[
        str | None,
        typer.Option("--src-blobs", help="The source's blob location (default: beside an SQLite "
                     "source; required for PostgreSQL).", show_default=False),
    ] = None,
    dst_blobs: Annotated[
        str | None,
        typer.Option("--dst-blobs", help="The destination's blob location, e.g. s3://bucket/prefix "
                     "(default: beside an SQLite destination; required for PostgreSQL).", show_default=False),
    ] = None,
) -> None:
    """Copy every version, alias, gate, evaluation and blob (checked) from SRC into DST.

    Resumable and idempotent: run it again after an interruption and it copies what is missing.
    Versions that exist in DST with other contents are never overwritten; they are reported.
    """
    from adapterhub.registry import Registry
    from adapterhub.registry.copy import copy_registry
    from adapterhub.registry.location import location_of

    quiet_libraries()
    source, target = location_of(src, src_blobs), location_of(dst, dst_blobs)
    with _eval_bar("copying") as progress:
        report = copy_registry(Registry(source.home, url=source.url, blobs=source.blobs),
                               Registry(target.home, url=target.url, blobs=target.blobs),
                               progress=progress)
    for line in report.lines():
        out.print(line, markup=False, highlight=False)


EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co).",
        show_default=False,
    ),
]


@contextmanager
def _transfer_bar(label: str) -> Iterator[Callable[[ProgressEvent], None]]:
    """A byte progress bar on stderr (terminals only) fed by push/pull progress events."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        *Progress.get_default_columns(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(event: ProgressEvent) -> None:
            if event.total_steps:
                bar.update(task, total=event.total_steps)
            if event.kind == "step":
                bar.update(task, completed=event.step, description=f"{label} {event.message}")
            elif event.kind == "done" and event.total_steps:
                bar.update(task, completed=event.total_steps)

        yield update


@app.command()
def push(
    ref: Annotated[str, typer.Argument(help="Version to push: name, name@N or name:alias.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo namespace/name; created if missing.")],
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    revision: Annotated[str, typer.Option(help="Branch to commit on.")] = "main",
    endpoint: EndpointOption = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Push a version to the Hugging Face Hub as one commit tagged vN (no-op if already there)."""
    with _transfer_bar("pushing") as progress:
        result = _hub(home, registry=registry, blobs=blobs).push(
            ref, repo_id, private=private, revision=revision, endpoint=endpoint, progress=progress
        )
    state = "pushed" if result.created else "already on the Hub:"
    out.print(f"{state} {result.repo_id}@{result.tag} commit {result.commit[:12]}  {result.url}")


@app.command()
def pull(
    repo: Annotated[
        str,
        typer.Argument(
            metavar="REPO_ID[@REVISION]",
            help="namespace/name, optionally @ a branch, a tag such as v3, or a commit sha.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Adapter name (default: the pushed name, else the repo name)."),
    ] = None,
    endpoint: EndpointOption = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Pull a PEFT LoRA repo from the Hub and register it; prints NAME@N."""
    import warnings

    from adapterhub.errors import AdapterHubWarning

    repo_id, _, revision = repo.partition("@")
    with warnings.catch_warnings(record=True) as caught, _transfer_bar("pulling") as progress:
        warnings.simplefilter("always", AdapterHubWarning)
        result = _hub(home, registry=registry, blobs=blobs).pull(
            repo_id, revision=revision or None, name=name, endpoint=endpoint, progress=progress
        )
    for warning in caught:
        if issubclass(warning.category, AdapterHubWarning):
            err.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
    if not result.created:
        err.print(f"{result.repo_id}@{result.commit[:12]} was already pulled")
    out.print(result.version.ref)


COMMANDS_GROUP = "adapterhub.commands"


def _add_plugin_commands() -> None:
    """Add the commands other packages register (the server's ``serve``, the TUI's ``tui``).

    They name a ``register(app)`` function under the entry-point group ``adapterhub.commands``,
    so the library never imports the server or UI layers, and a missing extra is a missing command.
    """
    from importlib.metadata import entry_points

    known = {command.name or command.callback.__name__ for command in app.registered_commands}
    for entry in entry_points(group=COMMANDS_GROUP):
        if entry.name in known:
            continue
        try:
            register = entry.load()
        except ImportError as e:  # its extra is not installed: the command says which one
            _add_missing_extra_command(entry.name, entry.extras, e)
        else:
            register(app)


def _add_missing_extra_command(name: str, extras: list[str], error: ImportError) -> None:
    install = f"pip install 'adapterhub[{','.join(extras)}]'" if extras else "reinstall adapterhub"
    missing = getattr(error, "name", None) or str(error)

    @app.command(name, help=f"Not installed here ({install}).", context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True})
    def unavailable() -> None:
        raise ConfigError(f"`adapterhub {name}` needs {missing!r}, which is not installed: {install}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning our errors into one line and an exit code."""
    _add_plugin_commands()
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except AdapterHubError as e:
        if os.environ.get("ADAPTERHUB_DEBUG"):
            raise
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
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
