"""Push and pull as jobs (their own processes) against the test Hub server: the queue's job
environment reaches the Hub with the user's endpoint and token, and the results are recorded."""

from __future__ import annotations

import time
from pathlib import Path

from adapterhub import Hub
from adapterhub.jobs import JobQueue
from adapterhub.protocol import FINAL_JOB_STATES, JobInfo


def finished(queue: JobQueue, job: JobInfo, timeout: float = 180) -> JobInfo:
    deadline = time.monotonic() + timeout
    while (info := queue.get(job.id)).state not in FINAL_JOB_STATES:
        assert time.monotonic() < deadline, f"job {job.id} still {info.state}"
        time.sleep(0.1)
    return info


def test_a_push_job_and_a_pull_job_round_trip_a_version(hub, home: Path, tiny_base_dir: Path, lora_dir: Path) -> None:  # type: ignore[no-untyped-def]
    local = Hub(home)
    local.init(str(tiny_base_dir), precision="fp32")
    local.import_adapter(lora_dir, "pirate")
    queue = JobQueue(local)
    try:
        pushed = finished(queue, queue.submit({"kind": "push", "ref": "pirate@1", "repo_id": "alice/pirate-lora"}))
        assert pushed.state == "done", pushed.message
        assert pushed.result["repo_id"] == "alice/pirate-lora" and pushed.result["tag"] == "v1"
        pulled = finished(queue, queue.submit({"kind": "pull", "repo_id": "alice/pirate-lora", "name": "pulled"}))
    finally:
        queue.close()
    assert pulled.state == "done", pulled.message
    assert pulled.version_ref == "pulled@1" and pulled.result["commit"] == pushed.result["commit"]
    assert local.registry.load_adapter("pulled@1").tensors.keys() == local.registry.load_adapter("pirate@1").tensors.keys()
