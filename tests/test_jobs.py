"""The job queue with real job processes on the tiny base: a training job to a registered version,
cancel and resume, a queue that dies, refusals before anything is queued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub import Hub
from adapterhub.core.progress import EventFollower
from adapterhub.errors import AdapterNotFoundError, ConfigError, JobNotFoundError
from adapterhub.jobs import JobQueue
from adapterhub.protocol import FINAL_JOB_STATES, JobInfo


@pytest.fixture
def hub(home: Path, tiny_base_dir: Path) -> Hub:
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    return hub


def wait_for(queue: JobQueue, job_id: str, timeout: float = 180) -> JobInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job.state in FINAL_JOB_STATES:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {queue.get(job_id).state}")


def wait_for_step(events: Path, timeout: float = 180) -> None:
    follower = EventFollower(events, from_start=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.kind == "step" for e in follower.read()):
            return
        time.sleep(0.1)
    raise AssertionError("the job never reached a training step")


def test_a_training_job_registers_its_version_and_logs_its_events(hub: Hub, capitals_recipes: Path) -> None:
    queue = JobQueue(hub, recipes=capitals_recipes)
    try:
        job = queue.submit({"kind": "train", "recipe": "capitals", "overrides": {"training.max_steps": 2}})
        assert job.state == "queued" and job.kind == "train"
        done = wait_for(queue, job.id)
    finally:
        queue.close()
    assert done.state == "done", done.message
    assert done.version_ref == "capitals@1" and done.result["metrics"]["train_steps"] == 2
    assert done.started_at is not None and done.finished_at is not None and done.finished_at >= done.started_at
    events = EventFollower(queue.events_file(job.id), from_start=True).read()
    kinds = [e.kind for e in events]
    assert kinds.index("start") < kinds.index("step") and kinds[-1] == "done"
    assert events[-1].version_ref == "capitals@1"
    assert [v.ref for v in hub.list("capitals")] == ["capitals@1"]
    again = JobQueue(hub, recipes=capitals_recipes)  # a new queue lists it (the first one let go of the home)
    try:
        assert [j.id for j in again.list()] == [job.id]
        with pytest.raises(ConfigError, match=r"another process runs the jobs of .*\(it holds"):
            JobQueue(hub, recipes=capitals_recipes)  # two queues never run one home's jobs
    finally:
        again.close()


def test_cancel_registers_nothing_and_a_resumed_job_finishes(hub: Hub, capitals_recipes: Path) -> None:
    queue = JobQueue(hub, recipes=capitals_recipes)
    long = {"kind": "train", "recipe": "capitals", "overrides": {"training.max_steps": 60, "training.save_steps": 1000}}
    try:
        job = queue.submit(long)
        waiting = queue.submit(long)  # concurrency 1: it waits its turn
        wait_for_step(queue.events_file(job.id))
        assert queue.get(waiting.id).state == "queued"
        assert queue.cancel(waiting.id).state == "cancelled"
        queue.cancel(job.id)
        cancelled = wait_for(queue, job.id)
        assert cancelled.state == "cancelled" and "resume" in cancelled.message
        assert hub.list() == []
        resumed = wait_for(queue, queue.submit({**long, "resume": True}).id)
    finally:
        queue.close()
    assert resumed.state == "done", resumed.message
    assert resumed.version_ref == "capitals@1"
    events = EventFollower(queue.events_file(resumed.id), from_start=True).read()
    assert next(e for e in events if e.kind == "start").message.startswith("resumed at step")


def test_a_job_whose_queue_died_is_interrupted_with_how_to_resume(hub: Hub, capitals_recipes: Path, tmp_path: Path) -> None:
    script = tmp_path / "owner.py"  # (not queue.py: that would shadow the standard library's)
    script.write_text(
        "import sys, time\nfrom adapterhub import Hub\nfrom adapterhub.jobs import JobQueue\n"
        f"queue = JobQueue(Hub({str(hub.home)!r}), recipes={str(capitals_recipes)!r})\n"
        "job = queue.submit({'kind': 'train', 'recipe': 'capitals', "
        "'overrides': {'training.max_steps': 400, 'training.save_steps': 1000}})\n"
        "print(job.id, flush=True)\ntime.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        job_id = owner.stdout.readline().strip()
        wait_for_step(hub.home / "jobs" / job_id / "events.jsonl")
        os.kill(owner.pid, signal.SIGKILL)
    finally:
        owner.kill()
        owner.wait()
    time.sleep(2)  # the orphaned job notices and stops at its next step
    queue = JobQueue(hub, recipes=capitals_recipes)
    try:
        job = wait_for(queue, job_id)
    finally:
        queue.close()
    assert job.state == "interrupted" and '"resume": true' in job.message
    assert hub.list() == []


def test_bad_requests_are_refused_before_anything_is_queued(hub: Hub, capitals_recipes: Path, tmp_path: Path) -> None:
    queue = JobQueue(hub, recipes=capitals_recipes)
    try:
        with pytest.raises(ConfigError, match=r"'nope' is not a bundled recipe .* choose from capitals"):
            queue.submit({"kind": "train", "recipe": "nope"})
        with pytest.raises(ConfigError, match=r"training.max_steps"):
            queue.submit({"kind": "train", "recipe": "capitals", "overrides": {"training.max_steps": 0}})
        with pytest.raises(ConfigError, match=r"kind"):
            queue.submit({"kind": "dance"})
        with pytest.raises(ConfigError, match=r"\.\./"):
            queue.submit({"kind": "train", "recipe": "../capitals"})
        with pytest.raises(AdapterNotFoundError):
            queue.submit({"kind": "eval", "ref": "missing@1", "tasks": ["recipes/evals/capitals"]})
        with pytest.raises(JobNotFoundError):
            queue.get("20260101-000000-deadbeef")
        assert queue.list() == []
    finally:
        queue.close()
