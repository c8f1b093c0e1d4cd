"""``Hub.evaluate``: lm-evaluation-harness over our own engine, recorded on the version; gated
aliases that run the evaluations they need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tinymodels import make_lora_folder

from adapterhub import Hub
from adapterhub.errors import ConfigError, GateError

REPO = Path(__file__).resolve().parents[1]
CAPITALS = REPO / "recipes" / "evals" / "capitals"
SUMS = REPO / "recipes" / "evals" / "sums"
TASK = "adapterhub_capitals"


@pytest.fixture
def hub(home: Path, tiny_base_dir: Path, tmp_path: Path) -> Hub:
    hub = Hub(home, compute_dtype="float32")
    hub.init(str(tiny_base_dir), precision="fp32")
    hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "a", seed=1), "pirate")
    return hub


def test_in_process_evaluation_matches_lm_evals_hf_model_and_is_recorded(
    hub: Hub, tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    events = []
    report = hub.evaluate("pirate", [CAPITALS], log_samples=True, progress=events.append)

    adapter = hub.registry.export("pirate@1", tmp_path / "export")
    monkeypatch.chdir(CAPITALS)  # lm-eval's own run reads the task's relative data_files from the cwd
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_base_dir},peft={adapter},dtype=float32,device=cpu",
        tasks=[TASK], batch_size=1, task_manager=TaskManager(include_path=str(CAPITALS)),
        log_samples=True,
    )
    assert _loglikelihoods(report.results) == pytest.approx(_loglikelihoods(theirs), abs=1e-3)
    for metric in ("acc", "acc_norm"):
        assert report.value(TASK, metric) == pytest.approx(theirs["results"][TASK][f"{metric},none"], abs=1e-3)

    recorded = hub.registry.evaluations("pirate@1", latest=True)
    assert [(e.subject, e.samples) for e in recorded] == [(f"{TASK}:acc", 12), (f"{TASK}:acc_norm", 12)]
    first = recorded[0]
    assert first.stderr is not None and first.stderr > 0
    assert first.harness.startswith("lm-eval 0.4")
    assert first.setup["engine"] == "adapterhub" and first.setup["compute_dtype"] == "float32"
    assert first.setup["tasks"] == {TASK: str(CAPITALS / "capitals.yaml")}
    assert events[0].kind == "start" and events[-1].kind == "done"
    assert any(e.kind == "step" and e.step == e.total_steps == 48 for e in events)  # 12 questions x 4 choices

    base = hub.evaluate(None, [CAPITALS], limit=3)  # the base alone: measured, never recorded
    assert base.ref is None and {e.samples for e in base.evaluations} == {3}
    assert len(hub.registry.evaluations("pirate@1")) == 2


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_generation_tasks_answer_as_lm_evals_hf_model_does(
    hub: Hub, tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chat: bool
) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    report = hub.evaluate("pirate", [SUMS], chat=chat, log_samples=True)
    adapter = hub.registry.export("pirate@1", tmp_path / "export")
    monkeypatch.chdir(SUMS)
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_base_dir},peft={adapter},dtype=float32,device=cpu",
        tasks=["adapterhub_sums"], batch_size=1, task_manager=TaskManager(include_path=str(SUMS)),
        log_samples=True, apply_chat_template=chat,
    )
    ours_text = _answers(report.results)
    assert ours_text == _answers(theirs) and len(ours_text) == 12
    assert any(ours_text)  # greedy decoding said something before a stop string
    assert report.value("adapterhub_sums", "exact_match") == pytest.approx(
        theirs["results"]["adapterhub_sums"]["exact_match,none"], abs=1e-3)
    (recorded,) = hub.registry.evaluations("pirate@1")
    assert recorded.setup["chat"] is chat


def _answers(results: Any) -> list[str]:
    return [sample["resps"][0][0] for sample in results["samples"]["adapterhub_sums"]]


def test_bad_tasks_are_named_before_anything_loads(hub: Hub, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as info:
        hub.evaluate("pirate", [tmp_path / "empty", "no/such/folder"])
    message = str(info.value)
    assert "holds no task YAML" in message and "'no/such/folder' looks like a path but does not exist" in message
    with pytest.raises(ConfigError, match="name at least one task"):
        hub.evaluate("pirate", [])


def test_a_gated_alias_runs_the_parents_missing_evaluation_then_decides(
    hub: Hub, tiny_base_dir: Path, tmp_path: Path
) -> None:
    child = hub.registry.register(
        "pirate", {name: path for name, path in _files(make_lora_folder(tiny_base_dir, tmp_path / "b", seed=2))},
        base_fingerprint=hub.base_info.fingerprint, template_hash=hub.base_info.template_hash,
        method="sft", parent="pirate@1",
    )
    hub.evaluate(child.ref, [CAPITALS], limit=4)
    assert hub.registry.evaluations("pirate@1") == []

    with pytest.raises(GateError, match=r"pirate@2 has [0-9.]+, bound [0-9.]+ \(pirate@1\): fails"):
        hub.tag(child.ref, "prod", gates=[f"{TASK}:acc>=parent+1.01"])  # no accuracy beats its parent's by 1.01
    parent_runs = hub.registry.evaluations("pirate@1")  # the gate ran what it needed, as the child was run
    assert {(e.subject, e.samples) for e in parent_runs} == {(f"{TASK}:acc", 4), (f"{TASK}:acc_norm", 4)}
    assert hub.registry.gates("pirate", "prod") == []

    moved = hub.tag(child.ref, "prod", gates=[f"{TASK}:acc>=parent-1"])
    assert moved.aliases == ("prod",)
    assert len(hub.registry.evaluations("pirate@1")) == 2  # read, not run again


def _loglikelihoods(results: Any) -> list[float]:
    scores = [float(resp[0]) for sample in results["samples"][TASK] for resp in sample["filtered_resps"]]
    assert len(scores) == 12 * 4  # every choice of every question
    return scores


def _files(folder: Path) -> list[tuple[str, Path]]:
    return [(p.name, p) for p in folder.iterdir() if p.is_file()]
