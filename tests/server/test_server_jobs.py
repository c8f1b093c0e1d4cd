"""Jobs over HTTP on a real ``adapterhub serve``: a training job streamed over SSE to a version
the official ``openai`` client is served at once, refusals, cancel, and a restart that lists
the jobs (one that was running marked interrupted, with how to resume)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
from server_harness import RunningServer, assert_error_shape, init_home, start_server


def events(server: RunningServer, job_id: str, *, until: str = "job") -> Iterator[tuple[str, dict[str, Any]]]:
    """The job's SSE events as (event, data), from the first, until one of kind ``until``."""
    with httpx.stream("GET", f"{server.url}/admin/jobs/{job_id}/events", timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                yield name, data
                if name == until or data.get("kind") == until:
                    return


def test_a_training_job_over_http_streams_its_events_and_its_version_is_served(
    tiny_base_dir: Path, tmp_path: Path, capitals_recipes: Path
) -> None:
    home = init_home(tmp_path / "home", tiny_base_dir, {})
    env = {"ADAPTERHUB_RECIPES": str(capitals_recipes)}
    server = start_server(home, tmp_path, env=env)
    try:
        refused = httpx.post(f"{server.url}/admin/jobs", json={"kind": "train", "recipe": "capitals",
                                                                "overrides": {"training.batch_size": 0}})
        assert "training.batch_size" in assert_error_shape(refused, 400)["message"]
        missing = httpx.post(f"{server.url}/admin/jobs", json={"kind": "train", "recipe": "pirate"})
        assert "choose from capitals" in assert_error_shape(missing, 400)["message"]
        assert_error_shape(httpx.get(f"{server.url}/admin/jobs/20260101-000000-deadbeef"), 404)

        created = httpx.post(f"{server.url}/admin/jobs", json={"kind": "train", "recipe": "capitals"})
        assert created.status_code == 201, created.text
        job = created.json()
        stream = list(events(server, job["id"]))
        kinds = [data["kind"] for name, data in stream if name == "progress"]
        assert kinds.index("start") < kinds.index("step") < kinds.index("done")
        assert [d["step"] for n, d in stream if n == "progress" and d["kind"] == "step"] == [1, 2, 3]
        name, final = stream[-1]
        assert name == "job" and final["state"] == "done" and final["version_ref"] == "capitals@1"

        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="capitals@1", max_tokens=4,
                                                messages=[{"role": "user", "content": "capital 1?"}])
        assert answer.model == "capitals@1" and answer.choices[0].message.content is not None

        # a long one, running when the server stops
        long = httpx.post(f"{server.url}/admin/jobs", json={
            "kind": "train", "recipe": "capitals",
            "overrides": {"training.max_steps": 400, "training.save_steps": 1000, "name": "long"}}).json()
        next(events(server, long["id"], until="step"))
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()

    again = start_server(home, tmp_path, env=env)
    try:
        listed = {j["id"]: j for j in httpx.get(f"{again.url}/admin/jobs").json()["jobs"]}
        assert listed[job["id"]]["state"] == "done"
        interrupted = listed[long["id"]]
        assert interrupted["state"] == "interrupted" and '"resume": true' in interrupted["message"]
        assert [v["ref"] for v in httpx.get(f"{again.url}/admin/versions").json()["data"]] == ["capitals@1"]

        resumed = httpx.post(f"{again.url}/admin/jobs", json={**interrupted["request"], "resume": True}).json()
        start = next(d for n, d in events(again, resumed["id"], until="start") if d.get("kind") == "start")
        assert start["message"].startswith("resumed at step")
        cancelled = httpx.delete(f"{again.url}/admin/jobs/{resumed['id']}")
        assert cancelled.status_code == 200
        *_, (name, final) = events(again, resumed["id"])
        assert final["state"] == "cancelled" and "nothing registered" in final["message"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{again.url}/admin/jobs/{resumed['id']}").json()["state"] != "cancelled":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        again.stop()
    assert again.shut_down_cleanly(), again.logs()
