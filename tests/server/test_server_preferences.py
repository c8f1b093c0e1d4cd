"""Votes over HTTP on a real ``adapterhub serve``: compare two adapters (``/v1/compare``), vote
(``/v1/preferences``), download the pairs as a dataset, and train the DPO child on them as a job:
the compare -> vote -> DPO loop with every step on the server; and the same with single thumbs
up or down, a KTO child."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from server_harness import assert_error_shape, init_home, start_server

PROMPTS = ["Hello there", "What is two plus two?"]


def test_votes_become_the_dataset_a_dpo_job_trains_on(tiny_base_dir: Path, tmp_path: Path,
                                                      server_loras: dict[str, Path]) -> None:
    home = init_home(tmp_path / "home", tiny_base_dir, server_loras)
    server = start_server(home, tmp_path)
    try:
        for prompt in PROMPTS:
            compared = httpx.post(f"{server.url}/v1/compare", timeout=120, json={
                "models": ["pirate", "json"], "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 8, "temperature": 0.0, "ignore_eos": True}).json()
            pirate, json_answer = (a["choices"][0]["message"]["content"] for a in compared["answers"])
            voted = httpx.post(f"{server.url}/v1/preferences", json={
                "prompt": prompt, "chosen": {"model": "json", "content": json_answer},
                "rejected": [{"model": "pirate", "content": pirate}]})
            assert voted.status_code == 201, voted.text
        stored = voted.json()
        assert stored["stored"] == 1 and stored["total"] == 2
        assert (stored["chosen_ref"], stored["rejected_refs"]) == ("json@1", ["pirate@1"])  # versions, resolved

        unknown = httpx.post(f"{server.url}/v1/preferences", json={
            "prompt": "hi", "chosen": {"model": "ghost", "content": "a"}, "rejected": [{"content": "b"}]})
        assert_error_shape(unknown, 404)

        exported = httpx.get(f"{server.url}/v1/preferences")
        assert exported.headers["content-type"].startswith("application/jsonl")
        records = [json.loads(line) for line in exported.text.splitlines()]
        assert [r["prompt"][0]["content"] for r in records] == PROMPTS
        assert all(r["chosen_ref"] == "json@1" and r["voter"] == "anonymous" for r in records)
        assert all(r["chosen"][0]["role"] == "assistant" and r["rejected"][0]["content"] for r in records)

        job = httpx.post(f"{server.url}/admin/jobs", json={"kind": "train", "recipe": {
            "method": "dpo", "name": "json-dpo", "parent": "json@1",
            "dataset": {"path": stored["dataset"], "eval_fraction": 0}, "forgetting_check": False,
            "training": {"precision": "fp32", "max_steps": 2, "batch_size": 2, "learning_rate": 0.001}}})
        assert job.status_code == 201, job.text
        with httpx.stream("GET", f"{server.url}/admin/jobs/{job.json()['id']}/events", timeout=300) as response:
            final = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                     if line.startswith("data: ")][-1]
        assert final["state"] == "done", final["message"]
        child = httpx.get(f"{server.url}/admin/versions/{final['version_ref']}").json()
        assert (child["ref"], child["method"], child["parent"]) == ("json-dpo@1", "dpo", "json@1")


        # one answer at a time, thumbs up or down: KTO's data, and a KTO child over it
        for prompt in PROMPTS:
            for model, label in (("json", True), ("pirate", False)):
                thumb = httpx.post(f"{server.url}/v1/preferences", json={
                    "prompt": prompt, "completion": {"model": model, "content": f"{model} says hi"}, "label": label})
                assert thumb.status_code == 201, thumb.text
        assert thumb.json()["ref"] == "pirate@1" and thumb.json()["label"] is False and thumb.json()["total"] == 4
        thumbs = [json.loads(line) for line in httpx.get(f"{server.url}/v1/preferences",
                                                         params={"kind": "thumbs"}).text.splitlines()]
        assert [(t["ref"], t["label"]) for t in thumbs] == [("json@1", True), ("pirate@1", False)] * 2
        kto = httpx.post(f"{server.url}/admin/jobs", json={"kind": "train", "recipe": {
            "method": "kto", "name": "json-kto", "parent": "json@1",
            "dataset": {"path": thumb.json()["dataset"], "eval_fraction": 0}, "forgetting_check": False,
            "training": {"precision": "fp32", "max_steps": 2, "batch_size": 4, "learning_rate": 0.001}}})
        assert kto.status_code == 201, kto.text
        with httpx.stream("GET", f"{server.url}/admin/jobs/{kto.json()['id']}/events", timeout=300) as response:
            final = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                     if line.startswith("data: ")][-1]
        assert final["state"] == "done" and final["version_ref"] == "json-kto@1", final["message"]
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()
