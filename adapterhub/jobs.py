"""The job queue of a hub home: training, evaluation, push and pull, each in its own process.

A server (``POST /admin/jobs``) or any program submits a :data:`~adapterhub.protocol.JobRequest`
to a :class:`JobQueue`; the queue keeps every job in a folder of its own under ``<home>/jobs/``
and starts queued jobs, ``concurrency`` at a time, as ``python -m adapterhub.jobs JOB_FOLDER``.

A job's folder::

    request.json   what was asked (and the recipe file a bundled recipe name resolved to)
    state.json     the queue's record: state, times, pid; written by the queue alone, atomically
    events.jsonl   the job's progress events, as the CLI shows them (a training run's step log
                   events, an evaluation's or a transfer's), appended by the job's process
    outcome.json   how the job's process ended (done with its version / result, failed,
                   cancelled, interrupted), written by it alone, atomically, as its last act
    cancel         created to ask the job to stop

Design choices:

* **A process per job**, not a thread: a training run holds gigabytes and a GIL-bound loop; a
  crash or an out-of-memory kill takes the job, never the server. The job reads nothing from its
  submitter but its folder and the environment (the registry's URL and blobs travel there).
* **Files, not a database**: one writer per file, atomic renames; a job folder is readable with
  ``cat`` and survives the queue. One queue runs a home's jobs at a time (it holds
  ``jobs/.queue.lock``; a second server on the home is refused). A queue opened on a home lists
  the jobs an earlier queue left; one that was running when its queue died is ``interrupted``
  (with how to resume, for training), once its process, which notices, has stopped.
* **Nothing outlives its owner**: on Linux a job's process gets SIGTERM when its queue's process
  dies (``PR_SET_PDEATHSIG``), as a training run's ranks do when their launcher dies; a job's
  environment carries the registry's location but none of the server's API keys.
* **Cancel**: training stops at the next step with a checkpoint (resumable, nothing registered);
  an evaluation or a transfer stops at once (neither records anything until it is done). A job
  whose queue's process is gone stops the same way and reports ``interrupted``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from adapterhub.core.processes import (
    alive,
    die_with_parent,
    require_posix,
    signal_group,
    write_json,
)
from adapterhub.core.progress import CancelToken, ProgressEvent
from adapterhub.errors import AdapterHubError, ConfigError, JobNotFoundError, TrainingCancelled
from adapterhub.protocol import FINAL_JOB_STATES, JobInfo, JobRequest, TrainJobRequest
from adapterhub.registry.location import BLOBS_ENV, REGISTRY_URL_ENV, RegistryLocation

if TYPE_CHECKING:
    from adapterhub.facade import Hub

JOBS_FOLDER = "jobs"
REQUEST_FILE, CONTEXT_FILE, STATE_FILE, EVENTS_FILE, OUTCOME_FILE, CANCEL_FILE = (
    "request.json", "context.json", "state.json", "events.jsonl", "outcome.json", "cancel")
_SECRETS = frozenset({"ADAPTERHUB_API_KEYS", "ADAPTERHUB_ADMIN_KEYS", "ADAPTERHUB_REPLICA_API_KEY"})
"""The server's keys: a job needs none of them, so its environment does not carry them."""
_REQUEST = TypeAdapter(JobRequest)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_POLL_S = 0.2
log = logging.getLogger("adapterhub.jobs")
NameCheck = Callable[[str | None, bool], None]
"""``check(ref_or_name, registers)`` of :meth:`JobQueue.submit` (None: a pull that gives no name)."""


class JobQueue:
    """The jobs of one hub home, and the thread that starts them.

    Args:
        hub: the hub whose home keeps the jobs and whose base and registry they use (nothing is
            loaded: the queue only checks requests against it before queueing them).
        recipes: the folder bundled recipe names are looked up in.
        concurrency: how many jobs run at once.
    """

    def __init__(self, hub: Hub, *, recipes: Path = Path("recipes"), concurrency: int = 1) -> None:
        require_posix("the job queue")
        self.hub = hub
        self.home = hub.home
        self.folder = self.home / JOBS_FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.registry: RegistryLocation = hub.registry.location
        self.recipes = Path(recipes)
        self.concurrency = max(1, concurrency)
        self._owner = _own(self.folder)
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted: dict[str, int] = {}  # jobs an earlier queue started that still run: their pids
        self._wake = threading.Event()
        self._closing = False
        self._recover()
        self._thread = threading.Thread(target=self._schedule, name="adapterhub-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the API

    def submit(self, request: Any, *, check_names: NameCheck | None = None, owner: str | None = None) -> JobInfo:
        """Queue a job (a :data:`JobRequest` or its JSON mapping); returns it, ``queued``.

        Args:
            check_names: called, before the job is queued, with each adapter ref the job reads
                (``check_names(ref, False)``: a train job's parent, an eval or push job's ref)
                and each name it registers (``True``: the recipe's name, a pull job's ``name``,
                None when the pull gives none); it raises to refuse the job (a server's per-key
                allowlist).
            owner: recorded as the job's ``owner`` (the server's key name).

        Raises:
            ConfigError: the request is malformed, names no bundled recipe, or its recipe fails the
                checks training does first (against this hub's base and data).
            AdapterNotFoundError: it names a version that does not exist.
        """
        from pydantic import ValidationError

        from adapterhub.errors import describe_validation_error

        try:
            parsed = _REQUEST.validate_python(request if isinstance(request, dict) else request.model_dump())
        except ValidationError as e:
            raise ConfigError([line for _, line in describe_validation_error(e.errors(), root="job")]) from None
        stored = parsed.model_dump(mode="json")
        if isinstance(parsed, TrainJobRequest):
            if isinstance(parsed.recipe, str):
                stored["recipe_file"] = str(self._bundled(parsed.recipe))
            source = stored.get("recipe_file") or parsed.recipe
            if check_names is not None:  # from the recipe alone: what exists must not change the answer
                from adapterhub.training.loading import load_recipe

                recipe, _ = load_recipe(source, parsed.overrides or None)
                if recipe.parent is not None:
                    check_names(recipe.parent, False)
                check_names(recipe.name, True)
            self.hub.plan_run(source, overrides=parsed.overrides)
        elif parsed.kind in ("eval", "push") and parsed.ref is not None:
            if check_names is not None:
                check_names(parsed.ref, False)
            self.hub.resolve(parsed.ref)
        elif parsed.kind == "pull" and check_names is not None:
            check_names(parsed.name, True)
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        folder = self.folder / job_id
        folder.mkdir()
        write_json(folder / REQUEST_FILE, stored)
        info = JobInfo(id=job_id, kind=parsed.kind, state="queued", request=parsed.model_dump(mode="json"),
                       created_at=time.time(), owner=owner)
        self._save(info)
        self._wake.set()
        return info

    def list(self) -> list[JobInfo]:
        """Every job, newest first (a folder that cannot be read, being removed or damaged, is left out)."""
        jobs = []
        for folder in self.folder.iterdir():
            try:
                jobs.append(self._read(folder.name))
            except (JobNotFoundError, ValueError, OSError):
                continue
        return sorted(jobs, key=lambda job: job.created_at, reverse=True)

    def get(self, job_id: str) -> JobInfo:
        """Raises: JobNotFoundError."""
        return self._read(job_id)

    def cancel(self, job_id: str) -> JobInfo:
        """Ask a job to stop: a queued one is cancelled at once, a running one stops as the module
        docstring says; a finished one is left as it is."""
        with self._lock:
            info = self._read(job_id)
            if info.state == "queued":
                info = info.model_copy(update={"state": "cancelled", "finished_at": time.time(),
                                               "message": "cancelled before it started"})
                self._save(info)
            elif info.state == "running":
                (self.folder / job_id / CANCEL_FILE).touch()
        return info

    def events_file(self, job_id: str) -> Path:
        """The job's ``events.jsonl`` (it may not exist yet). Raises: JobNotFoundError."""
        self._read(job_id)
        return self.folder / job_id / EVENTS_FILE

    def close(self, timeout: float = 10.0) -> None:
        """Stop starting jobs and stop the running ones (each gets SIGTERM: a training run saves a
        checkpoint and reports ``interrupted``); waits up to ``timeout`` seconds for them."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            running = dict(self._running)
        for proc in running.values():
            signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for job_id, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait()
            self._finish(job_id, proc.returncode)
        self._owner.close()  # another queue may run this home's jobs now

    # ------------------------------------------------------------------ the queue's records

    def _read(self, job_id: str) -> JobInfo:
        if not _SAFE_NAME.fullmatch(job_id):
            raise JobNotFoundError(f"no job {job_id!r}; GET /admin/jobs lists them")
        try:
            return JobInfo.model_validate_json((self.folder / job_id / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobNotFoundError(f"no job {job_id!r}; GET /admin/jobs lists them") from None

    def _save(self, info: JobInfo) -> None:
        write_json(self.folder / info.id / STATE_FILE, info.model_dump(mode="json"))

    def _bundled(self, name: str) -> Path:
        path = self.recipes / f"{name}.yaml"
        if not _SAFE_NAME.fullmatch(name) or not path.is_file():
            known = sorted(p.stem for p in self.recipes.glob("*.yaml")) if self.recipes.is_dir() else []
            raise ConfigError(f"job.recipe: {name!r} is not a bundled recipe in {str(self.recipes)!r}; "
                              f"choose from {', '.join(known) or '(none)'} or send the recipe itself")
        return path.absolute()

    def _recover(self) -> None:
        """Settle the jobs an earlier queue left running: by their outcome, else interrupted; one
        whose process still runs (it stops at its next step once it sees its queue gone) is
        followed until it ends, and counts against ``concurrency`` meanwhile."""
        for info in self.list():
            if info.state == "running" and info.pid is not None and alive(info.pid):
                self._adopted[info.id] = info.pid
            elif info.state == "running":
                self._finish(info.id, None)

    def _finish(self, job_id: str, returncode: int | None) -> None:
        """Record how a job's process ended (it has exited, or its queue died)."""
        folder = self.folder / job_id
        with self._lock:
            self._running.pop(job_id, None)
            self._adopted.pop(job_id, None)
            info = self._read(job_id)
            if info.state in FINAL_JOB_STATES:
                return
            try:
                outcome = json.loads((folder / OUTCOME_FILE).read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                outcome = {"state": "interrupted",
                           "message": _interrupted(info.kind, "its process ended without reporting"
                                                   + (f" (exit {returncode})" if returncode is not None else
                                                      " while the queue was down"))}
                if (folder / CANCEL_FILE).exists():
                    outcome = {"state": "cancelled", "message": "cancelled; nothing recorded"}
            update = {k: outcome[k] for k in ("state", "message", "version_ref", "result") if k in outcome}
            self._save(info.model_copy(update={**update, "finished_at": time.time()}))

    # ------------------------------------------------------------------ the scheduler thread

    def _schedule(self) -> None:
        while not self._closing:
            self._wake.wait(_POLL_S)
            self._wake.clear()
            if self._closing:
                return
            try:
                self._step()
            except Exception:  # a full disk, a folder removed underneath: log it, keep scheduling
                log.exception("the job queue's scheduler failed a round; trying again")

    def _step(self) -> None:
        """One round: record the jobs that ended, start queued ones while there is room."""
        for job_id, proc in list(self._running.items()):
            if proc.poll() is not None:
                self._finish(job_id, proc.returncode)
        for job_id, pid in list(self._adopted.items()):
            if not alive(pid):
                self._finish(job_id, None)
        with self._lock:
            free = self.concurrency - len(self._running) - len(self._adopted)
            if free <= 0:  # no room: no need to read every job's state this round
                return
            queued = [j for j in reversed(self.list()) if j.state == "queued"][:free]
            for info in queued:
                try:
                    self._start(info)
                except OSError as e:  # no memory or file handles for one more process
                    self._save(info.model_copy(update={"state": "failed", "finished_at": time.time(),
                                                       "message": f"could not start its process: {e}"}))

    def _start(self, info: JobInfo) -> None:
        folder = self.folder / info.id
        env = {k: v for k, v in os.environ.items() if k not in _SECRETS}
        env.update({REGISTRY_URL_ENV: self.registry.url, BLOBS_ENV: self.registry.blobs,
                    "ADAPTERHUB_HOME": str(self.home)})
        write_json(folder / CONTEXT_FILE, self.hub.choices())
        with open(folder / "process.log", "ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", __name__, str(folder), str(os.getpid())],
                                    env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent)
        self._running[info.id] = proc
        self._save(info.model_copy(update={"state": "running", "started_at": time.time(), "pid": proc.pid}))


def _own(folder: Path) -> Any:
    """Hold ``folder/.queue.lock`` for this queue's life: one queue runs a home's jobs at a time.

    Raises:
        ConfigError: another process (another server on this home) holds it.
    """
    import fcntl

    handle = open(folder / ".queue.lock", "w")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"another process runs the jobs of {str(folder.parent)!r} (it holds "
                          f"{str(folder / '.queue.lock')!r}); stop it, or serve another hub home") from None
    return handle


def _interrupted(kind: str, why: str) -> str:
    if kind == "train":
        return (f"interrupted: {why}; resubmit the same training job with \"resume\": true to continue "
                "from its last checkpoint")
    return f"interrupted: {why}; submit it again"


# --------------------------------------------------------------------------- a job's process


def run_job(folder: Path, queue_pid: int) -> int:
    """Run the job in ``folder`` in this process (``python -m adapterhub.jobs FOLDER QUEUE_PID``)."""
    from adapterhub.facade import Hub

    stored = json.loads((folder / REQUEST_FILE).read_text(encoding="utf-8"))
    request = _REQUEST.validate_python({k: v for k, v in stored.items() if k != "recipe_file"})
    ending = _Ending(folder)
    token = CancelToken()

    def stop(reason: str) -> None:
        if not ending.stop(reason):
            return
        token.cancel()
        # nothing but training can stop at a step: stop at once, unless the work has just ended
        if request.kind != "train" and ending.end(*_stopped_outcome(reason, request.kind)):
            os._exit(0)

    def watch() -> None:
        while True:
            if (folder / CANCEL_FILE).exists():
                stop("cancelled")
            elif not alive(queue_pid):
                stop("its queue's process is gone")
            time.sleep(_POLL_S)

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop, args=("the server stopped",)).start())
    threading.Thread(target=watch, daemon=True).start()
    context = json.loads((folder / CONTEXT_FILE).read_text(encoding="utf-8")) if (folder / CONTEXT_FILE).exists() else {}
    hub = Hub(os.environ.get("ADAPTERHUB_HOME"), **context)
    try:
        outcome = _perform(hub, request, stored.get("recipe_file"), ending.emit, token)
    except TrainingCancelled as e:
        state, message = _stopped_outcome(ending.reason or "cancelled", request.kind)
        outcome = {"state": state, "message": message if state == "interrupted" else str(e)}
    except AdapterHubError as e:
        outcome = {"state": "failed", "message": str(e)}
    except Exception as e:  # a bug or a library's own error: the job fails, with what it was
        outcome = {"state": "failed", "message": f"{type(e).__name__}: {e}"}
    ending.end(**outcome)
    return 0


class _Ending:
    """A job's events and its one ending: the first of the main thread's result and a stop
    request (cancel, the server stopping) is the outcome written; the other is dropped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.reason: str | None = None  # why it was asked to stop
        self._lock = threading.Lock()
        self._ended = False
        self._last_kind = ""
        self._events = open(folder / EVENTS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed at exit

    def emit(self, event: ProgressEvent) -> None:
        self._events.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
        self._events.flush()
        self._last_kind = event.kind

    def stop(self, reason: str) -> bool:
        """Note a stop request; False when one was already noted or the job has ended."""
        with self._lock:
            if self.reason is not None or self._ended:
                return False
            self.reason = reason
            return True

    def end(self, state: str, message: str = "", **rest: Any) -> bool:
        """Write the outcome (and the final event, unless the work sent one); False when it had ended."""
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            if self._last_kind not in ("done", "failed", "cancelled"):
                kind = {"done": "done", "cancelled": "cancelled"}.get(state, "failed")
                self.emit(ProgressEvent(kind, message=message, version_ref=rest.get("version_ref")))  # type: ignore[arg-type]
            write_json(self.folder / OUTCOME_FILE, {"state": state, "message": message, **rest})
            return True


def _perform(hub: Any, request: Any, recipe_file: str | None, emit: Any, token: CancelToken) -> dict[str, Any]:
    """Do what the request asks; the outcome of a job that got to its end."""
    if request.kind == "train":
        recipe = recipe_file or request.recipe
        version = hub.train(recipe, progress=emit, cancel=token, resume=request.resume, overrides=request.overrides)
        return {"state": "done", "version_ref": version.ref, "message": f"registered {version.ref}",
                "result": {"metrics": version.metrics}}
    if request.kind == "eval":
        report = hub.evaluate(request.ref, list(request.tasks), limit=request.limit,
                              num_fewshot=request.num_fewshot, chat=request.chat, progress=emit)
        numbers = {f"{e.task}:{e.metric}": e.value for e in report.evaluations}
        return {"state": "done", "version_ref": report.ref, "result": {"evaluations": numbers},
                "message": ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())}
    if request.kind == "push":
        pushed = hub.push(request.ref, request.repo_id, private=request.private, revision=request.revision,
                          progress=emit)
        return {"state": "done", "message": f"{request.ref} at {pushed.url} ({pushed.tag})",
                "result": {"repo_id": pushed.repo_id, "tag": pushed.tag, "commit": pushed.commit,
                           "url": pushed.url, "created": pushed.created}}
    pulled = hub.pull(request.repo_id, revision=request.revision, name=request.name, progress=emit)
    return {"state": "done", "version_ref": pulled.version.ref, "message": f"registered {pulled.version.ref}",
            "result": {"repo_id": pulled.repo_id, "commit": pulled.commit, "created": pulled.created}}


def _stopped_outcome(reason: str, kind: str) -> tuple[str, str]:
    if reason == "cancelled":
        return "cancelled", ("cancelled; nothing registered, checkpoint kept (resubmit with \"resume\": true)"
                             if kind == "train" else "cancelled; nothing recorded")
    return "interrupted", _interrupted(kind, reason)


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1]), int(sys.argv[2])))
