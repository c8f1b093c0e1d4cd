"""A user with a local Qwen2 or Gemma folder: `init --base`, `train`, `serve` (a real uvicorn
process, the official openai client, the adapter picked per request), `push` to the test Hub and
`pull` back, all through the CLI, on tiny random models of those families."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import yaml
from server_harness import start_server
from tinymodels import build_tiny_folder


def cli(*args: str, home: Path, env: dict[str, str] | None = None) -> str:
    import os

    done = subprocess.run(
        [sys.executable, "-m", "adapterhub.cli", *args, "--home", str(home)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("model_type", ["qwen2", "gemma"])
def test_init_train_serve_push_with_a_local_folder(
    model_type: str, tmp_path: Path, hub: object, request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "home"
    folder = build_tiny_folder(tmp_path / f"my-{model_type}", model_type)
    cli("init", "--base", str(folder), "--precision", "fp32", home=home)

    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"capital {i}?"}, {"role": "assistant", "content": a}]}) + "\n"
        for i, a in enumerate(["Paris.", "Rome.", "Madrid.", "Berlin."] * 3)
    ))
    recipe = tmp_path / "capitals.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "sft", "name": "capitals", "dataset": {"path": str(data)}, "lora": {"r": 4, "mlp": True},
        "training": {"precision": "nf4", "batch_size": 4, "max_steps": 3},
    }))
    assert cli("train", str(recipe), home=home).splitlines()[-1] == "capitals@1"

    server = start_server(home, tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        models = [m.id for m in client.models.list().data]
        assert "capitals@1" in models or "capitals" in models, models
        answers = {
            model: client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "capital 2?"}], max_tokens=6, temperature=0,
            )
            for model in ("capitals@1", models[0])
        }
        assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers.values())
        assert answers["capitals@1"].model == "capitals@1"
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()

    repo = f"alice/{model_type}-capitals"
    assert f"pushed {repo}@v1" in cli("push", "capitals@1", repo, home=home)
    assert cli("pull", f"{repo}@v1", "--name", "parrot", home=home).splitlines()[-1] == "parrot@1"
