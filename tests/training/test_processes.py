"""Training on several processes (torchrun + DDP on gloo), with real ranks on this CPU: the same
losses as one process with the same global batch, one registration, cancel and resume, and a
killed rank that registers nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from adapterhub import Hub
from adapterhub.core.progress import STEP_LOG, CancelToken, ProgressEvent, parse_step_log
from adapterhub.errors import ConfigError, TrainingCancelled

ANSWERS = ["Paris.", "Rome.", "Madrid.", "Berlin.", "Lisbon.", "Vienna."]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "capitals.jsonl"
    rows = [  # answers of different lengths, so the ranks' batches hold different token counts
        {"messages": [{"role": "user", "content": f"capital {i}?"}, {"role": "assistant", "content": a * (1 + i % 3)}]}
        for i, a in enumerate(ANSWERS * 4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(data: Path, **training: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "sft",
        "name": "capitals",
        "dataset": {"path": str(data)},
        "lora": {"dropout": 0.0},  # dropout draws differ per rank; the comparison needs none
        "forgetting_check": False,
        "training": {"precision": "fp32", "learning_rate": 5e-3, **training},
    }


def step_losses(events: list[ProgressEvent]) -> list[tuple[int, float]]:
    return [(e.step, e.loss) for e in events if e.kind == "step" and e.loss is not None]


def cli(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "adapterhub.cli", *args, "--home", str(home)]


def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(
    hub: Hub, data: Path, tmp_path: Path
) -> None:
    one = hub.train(recipe(data, batch_size=4, max_steps=4))

    # the same run on two ranks of two examples each, through the CLI as users start it
    other = Hub(tmp_path / "home-two")
    other.init(str(hub.base_info.path), precision="fp32")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(data, batch_size=2, max_steps=4)))
    done = subprocess.run(cli("train", str(path), "--processes", "2", home=other.home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "capitals@1"

    [two] = other.list("capitals")  # registered once, by the launcher
    assert two.metrics["processes"] == 2 and two.recipe["training"]["processes"] == 2
    assert one.metrics["effective_batch_size"] == two.metrics["effective_batch_size"] == 4
    assert two.metrics["train_tokens"] == one.metrics["train_tokens"]  # summed over the ranks
    logs = [parse_step_log(h.registry.read_file(v, STEP_LOG).decode()) for h, v in ((hub, one), (other, two))]
    (steps_one, losses_one), (steps_two, losses_two) = (zip(*step_losses(log), strict=True) for log in logs)
    assert steps_one == steps_two == (1, 2, 3, 4)
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    assert losses_one[-1] != losses_one[0]  # it trained
    assert two.metrics["eval_loss"] == pytest.approx(one.metrics["eval_loss"], rel=1e-5)
    weights = [h.registry.load_adapter(v) for h, v in ((hub, one), (other, two))]
    for name, tensor in weights[0].tensors.items():
        assert weights[1].tensors[name].allclose(tensor, rtol=1e-4, atol=1e-6), name
    assert "2 processes" in done.stderr or "2 processes" in json.dumps([e.message for e in logs[1]])


def test_cancel_stops_every_rank_at_one_step_and_resume_finishes(hub: Hub, data: Path) -> None:
    spec = recipe(data, batch_size=2, max_steps=60, save_steps=1000, processes=2)
    cancel = CancelToken()
    events: list[ProgressEvent] = []

    def cancel_at_first_step(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "step":
            cancel.cancel()

    with pytest.raises(TrainingCancelled, match="nothing registered") as caught:
        hub.train(spec, progress=cancel_at_first_step, cancel=cancel)
    assert "--resume" in str(caught.value)
    stopped = max(step for step, _ in step_losses(events))
    assert 1 <= stopped < 60 and events[-1].kind == "cancelled"
    assert hub.list() == []
    [run_dir] = [d for d in (hub.home / "runs").iterdir() if d.is_dir()]
    assert (run_dir / "checkpoints" / f"checkpoint-{stopped}").is_dir()  # one checkpoint, at the common step

    resumed: list[ProgressEvent] = []
    version = hub.train(spec, progress=resumed.append, resume=True)
    start = next(e for e in resumed if e.kind == "start")
    assert start.step == stopped and [s for s, _ in step_losses(resumed)] == list(range(stopped + 1, 61))
    assert version.ref == "capitals@1" and version.metrics["train_steps"] == 60


def test_a_killed_rank_fails_the_run_and_registers_nothing(hub: Hub, data: Path, tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(data, batch_size=2, max_steps=5000, save_steps=10_000)))
    launcher = subprocess.Popen(cli("train", str(path), "--processes", "2", home=hub.home),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rank1 = _wait_for_training_rank(launcher.pid, rank=1, runs=hub.home / "runs")
        started = psutil.Process(launcher.pid).children(recursive=True)  # torchrun and its ranks
        os.kill(rank1.pid, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "nothing registered" in stderr and "Traceback" not in stderr
    assert hub.list() == []
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive  # torchrun stopped the other rank; nothing is left behind


def _wait_for_training_rank(launcher_pid: int, *, rank: int, runs: Path, timeout: float = 120) -> psutil.Process:
    """Rank ``rank`` of the launcher's run, once the run has logged a training step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list(runs.glob(f"*/{STEP_LOG}")) if runs.exists() else []
        if any('"kind": "step"' in log.read_text() for log in logs):
            for p in psutil.Process(launcher_pid).children(recursive=True):
                if p.environ().get("RANK") == str(rank) and "adapterhub.training.rank" in " ".join(p.cmdline()):
                    return p
        time.sleep(0.2)
    raise AssertionError("the run never reached a training step")



def test_ranks_continue_from_a_parent_the_launcher_exported_once(hub: Hub, data: Path, tmp_path: Path) -> None:
    from tinymodels import make_lora_folder

    parent = hub.import_adapter(make_lora_folder(hub.base_info.path, tmp_path / "p", targets=("q_proj", "v_proj")),
                                "sft").ref
    version = hub.train({**recipe(data, batch_size=2, max_steps=2, processes=2), "parent": parent})
    assert (version.parent, version.metrics["processes"]) == (parent, 2)
    assert hub.registry.load_adapter(version).target_modules == ("q_proj", "v_proj")  # the parent's shape


def test_a_method_that_trains_on_one_process_refuses_more_before_loading(hub: Hub, data: Path) -> None:
    ppo = {
        "method": "ppo", "name": "policy", "parent": "sft@1", "dataset": {"path": str(data)},
        "ppo": {"reward_model": "rm@1"}, "training": {"processes": 2},
    }
    with pytest.raises(ConfigError, match=r"training.processes: 2 is more than ppo supports: .*set it to 1"):
        hub.plan_run(ppo)
