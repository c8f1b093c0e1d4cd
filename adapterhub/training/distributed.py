"""Data-parallel training on several processes: torchrun starts the ranks, accelerate runs DDP.

``training.processes: N`` (``adapterhub train --processes N``) makes :func:`train_on_processes`
the body of a run. The calling process stays the **launcher**: it plans the run and holds its lock
as for one process, starts ``torch.distributed.run`` (torchrun, the launcher ``accelerate launch``
wraps for multi-GPU; on CPUs accelerate itself only launches through MPI) with N ranks of
``python -m adapterhub.training.rank``, and, when they are done, registers the version.
Every rank plans the same run again from the same recipe, loads its own base and trains through
the method's ``transformers.Trainer``, whose accelerate state finds the ranks in the environment
and wraps the model in DDP (gloo on CPUs, NCCL on GPUs, rank N on ``cuda:N``).

The run folder is how they talk:

* **progress**: rank 0's :class:`~adapterhub.training.callbacks.ProgressBridge` writes the step
  log as in one process; the launcher follows the file and forwards each event to its caller.
* **cancel**: the launcher creates ``cancel`` when its token is set; after every optimizer step
  the ranks all-reduce whether any of them sees it (or sees the launcher gone), so all of them
  stop at the same step and save one checkpoint, which ``--resume`` continues.
* **outcome**: each rank writes ``outcome-rank<R>.json`` (atomically) when it stops: rank 0 with
  the metrics of the adapter it saved, any rank with the error that stopped it. A rank killed
  outright writes nothing: torchrun stops the others and the launcher reports the exit.

Exactly one process registers (the launcher, from rank 0's saved adapter, only when torchrun
exited cleanly and rank 0 reported done); a failed, killed or cancelled run registers nothing.
The registry reaches the ranks through ``ADAPTERHUB_REGISTRY_URL``/``ADAPTERHUB_BLOBS`` in their
environment, never through a file, so a database password is not written to disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.core.processes import die_with_parent, require_posix, stop_group, write_json
from adapterhub.core.progress import (
    STEP_LOG,
    CancelToken,
    EventFollower,
    ProgressCallback,
    ProgressEvent,
)
from adapterhub.errors import ConfigError, TrainingCancelled, TrainingError
from adapterhub.registry.location import BLOBS_ENV, REGISTRY_URL_ENV

if TYPE_CHECKING:
    from adapterhub.registry.location import RegistryLocation

JOB_FILE = "job.json"
CANCEL_FILE = "cancel"
WORKERS_LOG = "workers.log"
_POLL_S = 0.2
_STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Job:
    """What every rank needs to plan the launcher's run again (``job.json`` in the run folder)."""

    recipe: Any  # a recipe file's path, or the recipe as a mapping
    overrides: Any
    base: str
    runs: str
    device: str
    compute_dtype: str
    nf4: str
    checkpoint: str | None
    run_dir: str
    launcher_pid: int

    @classmethod
    def read(cls, path: Path) -> Job:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Trained:
    """A run trained to its end, before registration: the adapter folder saved (by this process,
    or by rank 0 of several) and the version's metrics."""

    adapter_dir: Path
    metrics: dict[str, Any]
    steps: int
    max_steps: int


def train_on_processes(
    job: Job, processes: int, registry: RegistryLocation, emit: ProgressCallback, cancel: CancelToken | None
) -> Trained:
    """Train ``job`` on ``processes`` ranks; what rank 0 saved.

    Raises:
        ConfigError: a rank refused the recipe (as one process would have).
        TrainingCancelled: ``cancel`` was set; every rank stopped at the same step with a checkpoint.
        TrainingError: a rank failed or died; nothing registered.
    """
    require_posix("training on several processes")
    run_dir = Path(job.run_dir)
    for stale in [run_dir / CANCEL_FILE, *run_dir.glob("outcome-rank*.json")]:
        stale.unlink(missing_ok=True)
    (run_dir / JOB_FILE).write_text(json.dumps(asdict(job), indent=2), encoding="utf-8")
    emit(ProgressEvent("message", message=f"starting {processes} training processes (torchrun, DDP)"))
    returncode = _run_ranks(run_dir, processes, registry, emit, cancel)

    outcomes = {rank: read_outcome(run_dir, rank) for rank in range(processes)}
    first = outcomes[0]
    if returncode == 0 and first is not None and first["status"] == "done":
        return Trained(Path(first["adapter_dir"]), first["metrics"], first["steps"], first["max_steps"])
    if first is not None and first["status"] == "cancelled":
        raise TrainingCancelled(first["message"])
    failures = [(rank, o) for rank, o in outcomes.items() if o is not None and o["status"] == "failed"]
    if failures:
        rank, failure = failures[0]
        if failure["error"] == "ConfigError":
            raise ConfigError(failure["message"])
        raise TrainingError(f"rank {rank} of {processes}: {failure['message']}")
    silent = [rank for rank, o in outcomes.items() if o is None]
    message = (
        f"training on {processes} processes failed: rank(s) {', '.join(map(str, silent))} stopped "
        f"without a word (killed? out of memory?), torchrun exited with {returncode}; nothing registered. "
        f"Their output is in {str(run_dir / WORKERS_LOG)!r}:\n"
        + _tail(run_dir / WORKERS_LOG)
        + "\nrerun with --resume to continue from the last checkpoint"
    )
    emit(ProgressEvent("failed", message=message))
    raise TrainingError(message)


def portable(recipe: Any) -> Any:
    """The recipe as every rank can read it again: a file by its absolute path, else a mapping
    (relative dataset paths resolve against the working folder the ranks share)."""
    from adapterhub.training.recipe import RecipeBase

    if isinstance(recipe, RecipeBase):
        return recipe.model_dump(mode="json", exclude_unset=True)
    if isinstance(recipe, Mapping):
        return json.loads(json.dumps(recipe))  # a plain copy, and proof it crosses a file
    return str(Path(recipe).expanduser().absolute())


def _run_ranks(
    run_dir: Path, processes: int, registry: RegistryLocation, emit: ProgressCallback, cancel: CancelToken | None
) -> int:
    """Run torchrun to its end, forwarding rank 0's events and the caller's cancel; its exit code.

    torchrun gets a session of its own, so a Ctrl-C in the terminal reaches only this process,
    which turns the first into a cancel at the next step and the second into stopping the ranks.
    """
    env = {
        **os.environ,
        REGISTRY_URL_ENV: registry.url,
        BLOBS_ENV: registry.blobs,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, _cpu_count() // processes)),
        "PYTHONPATH": os.pathsep.join(_added_paths()),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "--max-restarts=0", "-m", "adapterhub.training.rank", str(run_dir / JOB_FILE),
    ]
    follower = EventFollower(run_dir / STEP_LOG)
    with open(run_dir / WORKERS_LOG, "ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)  # its ranks never outlive this process
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                for event in follower.read():
                    emit(event)
                if cancel is not None and cancel.cancelled:
                    (run_dir / CANCEL_FILE).touch()
        except BaseException:
            stop_group(proc, _STOP_GRACE_S)
            raise
    for event in follower.read():
        emit(event)
    return returncode


def _added_paths() -> list[str]:
    """This process's import path beyond the interpreter's own (the working folder, folders a
    program added, ``PYTHONPATH``), so every rank imports what the launcher can: a recipe's reward
    function module, for one."""
    own = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return [p or os.getcwd() for p in sys.path if not any(p.startswith(prefix) for prefix in own if p)]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def read_outcome(run_dir: Path, rank: int) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run_dir / f"outcome-rank{rank}.json").read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


def write_outcome(run_dir: Path, rank: int, outcome: dict[str, Any]) -> None:
    write_json(run_dir / f"outcome-rank{rank}.json", outcome)
