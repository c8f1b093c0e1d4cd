"""Experiment tracking: a run logged to trackio (local files, nothing sent anywhere) and linked
both ways with the version it registered; a tracker that is not installed is refused first."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adapterhub import Hub
from adapterhub.errors import ConfigError

READ_RUN = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project, run = sys.argv[1:]
print(json.dumps({"runs": SQLiteStorage.get_runs(project), "config": SQLiteStorage.get_run_config(project, run),
                  "logs": SQLiteStorage.get_logs(project, run)}, default=str))
"""


def recipe(data: Path, **training: object) -> dict:  # type: ignore[type-arg]
    return {"method": "sft", "name": "capitals", "dataset": {"path": str(data), "eval_fraction": 0},
            "forgetting_check": False,
            "training": {"precision": "fp32", "batch_size": 4, "max_steps": 3, "learning_rate": 1e-3, **training}}


def test_a_trackio_run_and_its_version_name_each_other(hub: Hub, capitals_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "ADAPTERHUB_HOME": str(hub.home)}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(capitals_data, report_to=["trackio"], project="capitals-test")))
    done = subprocess.run([sys.executable, "-m", "adapterhub.cli", "train", str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    version = hub.resolve("capitals")
    tracking = version.metrics["tracking"]
    assert tracking["report_to"] == ["trackio"] and tracking["project"] == "capitals-test"
    assert tracking["run"].startswith("capitals-")

    read = subprocess.run([sys.executable, "-c", READ_RUN, "capitals-test", tracking["run"]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    logged = json.loads(read.stdout.strip().splitlines()[-1])
    assert tracking["run"] in logged["runs"]
    assert logged["config"]["adapterhub_version"] == version.ref  # the run names the version
    assert [row["train/loss"] for row in logged["logs"] if "train/loss" in row]  # the steps were logged
    assert not (tmp_path / "trackio").parent.joinpath("hf-home").exists()  # nothing outside TRACKIO_DIR


def test_a_tracker_that_is_not_installed_is_refused_before_loading(hub: Hub, capitals_data: Path) -> None:
    absent = [t for t in ("wandb", "mlflow", "tensorboard") if importlib.util.find_spec(t) is None]
    if not absent:
        pytest.skip("wandb, mlflow and tensorboard are all installed here: none to refuse")
    with pytest.raises(ConfigError, match=rf"training.report_to: \['{absent[0]}'\] are not installed; pip install"):
        hub.plan_run(recipe(capitals_data, report_to=[absent[0]]))
