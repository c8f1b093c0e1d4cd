"""SFT end to end on the tiny base: registration with lineage and metrics, learning, resume, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub import Hub
from adapterhub.core.progress import CancelToken, ProgressEvent
from adapterhub.errors import ConfigError, TrainingCancelled, TrainingError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.training.run import STEP_LOG

ANSWERS = ["Paris.", "Rome.", "Madrid.", "Berlin.", "Lisbon.", "Vienna."]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "capitals.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"capital {i}?"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(ANSWERS * 2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(data: Path, **training: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "sft",
        "name": "capitals",
        "dataset": {"path": str(data)},
        "training": {"precision": "fp32", "batch_size": 4, "learning_rate": 5e-3, **training},
    }


def steps(events: list[ProgressEvent]) -> list[int]:
    return [e.step for e in events if e.kind == "step"]


def test_three_steps_register_a_version_with_lineage_and_metrics(hub: Hub, data: Path) -> None:
    events: list[ProgressEvent] = []
    spec = recipe(data, max_steps=3, precision="nf4")  # the QLoRA path, as users run it
    first = hub.train(spec, progress=events.append)

    assert first.ref == "capitals@1" and first.method == "sft" and first.parent is None
    info = hub.base_info
    assert (first.base_fingerprint, first.template_hash) == (info.fingerprint, info.template_hash)
    assert first.recipe["training"]["max_steps"] == 3 and first.recipe["lora"]["r"] == 16
    assert first.dataset_fingerprint and first.metrics["data"]["fingerprint"] == first.dataset_fingerprint
    assert set(first.files) == {CONFIG_FILE, WEIGHTS_FILE, STEP_LOG}
    m = first.metrics
    assert m["train_steps"] == 3 and m["train_loss"] > 0 and m["train_tokens"] > 0
    assert m["eval_loss"] > 0 and m["data"]["eval_examples"] == 1  # 10% of 12 held out
    assert m["general_ppl_base"] > 1 and m["general_ppl_adapter"] > 1
    assert m["general_ppl_ratio"] == pytest.approx(m["general_ppl_adapter"] / m["general_ppl_base"], rel=1e-3)

    kinds = [e.kind for e in events]
    assert kinds.index("start") < kinds.index("step") and kinds[-1] == "done"
    assert steps(events) == [1, 2, 3] and events[-1].version_ref == "capitals@1"
    assert all(e.total_steps == 3 for e in events if e.kind == "step")
    logged = [json.loads(line) for line in hub.registry.read_file(first, STEP_LOG).decode().splitlines()]
    assert [e["step"] for e in logged if e["kind"] == "step"] == [1, 2, 3]
    assert not (hub.home / "runs").exists() or not any((hub.home / "runs").iterdir())
    adapter = hub.registry.load_adapter(first)
    assert adapter.r == 16 and adapter.target_modules == ("k_proj", "o_proj", "q_proj", "v_proj")

    # Continue from the first version: parent recorded, LoRA shape inherited.
    second = hub.train({**recipe(data, max_steps=2), "parent": "capitals", "lora": {"dropout": 0.0}})
    assert second.ref == "capitals@2" and second.parent == "capitals@1"
    assert [v.ref for v in hub.registry.lineage(second.ref)] == ["capitals@2", "capitals@1"]
    with pytest.raises(ConfigError, match=r"lora.r=4 \(parent has 16\)"):
        hub.train({**recipe(data, max_steps=1), "parent": "capitals@1", "lora": {"r": 4}})


@pytest.fixture(scope="module")
def sharp_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base with embeddings 6x larger (std 0.12 instead of 0.02).

    With the shared tiny base's tied embeddings at std 0.02, no logit can move far from uniform
    whatever the adapter does (the loss sits at ln(vocab)); a realistic scale lets LoRA learn.
    """
    from safetensors.torch import load_file, save_file
    from tinymodels import build_tiny_llama_folder

    from adapterhub.models.base import materialize_base

    src = build_tiny_llama_folder(tmp_path_factory.mktemp("sharp-src") / "tiny-sharp")
    weights = load_file(src / "model.safetensors")
    weights["model.embed_tokens.weight"] *= 6
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    return materialize_base(tmp_path_factory.mktemp("sharp-home"), str(src)).path


def test_loss_goes_down_on_a_memorisable_set(home: Path, sharp_base_dir: Path, data: Path) -> None:
    hub = Hub(home)
    hub.init(str(sharp_base_dir), precision="fp32")
    events: list[ProgressEvent] = []
    # 5e-3: at 1e-2 an AMD EPYC under AVX2 emulation diverged at step 23 (loss 3.9 -> 6.6) where
    # native bf16 CPUs did not; at 5e-3 both CPU kinds end near 0.52x the first steps' loss
    spec = recipe(data, max_steps=30, lr_scheduler="constant", warmup_ratio=0.0, learning_rate=5e-3)
    spec |= {"forgetting_check": False, "lora": {"alpha": 32, "dropout": 0.0}}
    version = hub.train(spec, progress=events.append)
    losses = [e.loss for e in events if e.kind == "step"]
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.65 * first, " ".join(f"{x:.2f}" for x in losses)
    assert version.metrics["train_loss_last"] == pytest.approx(losses[-1])
    assert version.metrics["eval_loss"] < first


def test_padding_free_batches_give_the_same_loss_as_padded_ones(hub: Hub, data: Path) -> None:
    """Packed examples must not attend to each other (block-diagonal mask from position ids)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from adapterhub.training.methods import PrepareContext
    from adapterhub.training.methods.sft import prepare
    plan = hub.plan_run(recipe(data))
    prepared = prepare(PrepareContext(plan.recipe, plan.tokenizer, plan.data, plan.eot_token_ids))
    rows = [prepared.train[i] for i in range(4)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # different lengths, so padding matters
    model = hub.base.model
    losses = []
    for padding_free in (False, True):
        collate = DataCollatorForLanguageModeling(pad_token_id=plan.tokenizer.pad_token_id, padding_free=padding_free)
        batch = collate(rows)
        with torch.no_grad():  # use_cache=False as in training: a cache turns packed masking off
            losses.append(float(model(**batch, use_cache=False).loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_resume_after_interruption_continues_from_the_checkpoint(hub: Hub, data: Path) -> None:
    spec = {**recipe(data, max_steps=6, save_steps=2), "forgetting_check": False}
    seen: list[ProgressEvent] = []

    def crash_at_step_5(event: ProgressEvent) -> None:
        seen.append(event)
        if event.kind == "step" and event.step == 5:
            raise RuntimeError("power cut")

    with pytest.raises(TrainingError, match="power cut") as caught:
        hub.train(spec, progress=crash_at_step_5)
    assert "nothing registered" in str(caught.value) and "--resume" in str(caught.value)
    assert hub.list() == [] and seen[-1].kind == "failed"

    resumed: list[ProgressEvent] = []
    version = hub.train(spec, progress=resumed.append, resume=True)
    start = next(e for e in resumed if e.kind == "start")
    assert start.step == 4 and "resumed at step 4" in start.message
    assert steps(resumed) == [5, 6]
    assert version.metrics["train_steps"] == 6
    logged = [json.loads(line) for line in hub.registry.read_file(version, STEP_LOG).decode().splitlines()]
    assert [e["step"] for e in logged if e["kind"] == "step"] == [1, 2, 3, 4, 5, 6]


def test_without_resume_an_old_checkpoint_is_discarded(hub: Hub, data: Path) -> None:
    spec = {**recipe(data, max_steps=4, save_steps=2), "forgetting_check": False}
    cancel = CancelToken()

    def cancel_at_3(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 3:
            cancel.cancel()

    with pytest.raises(TrainingCancelled):
        hub.train(spec, progress=cancel_at_3, cancel=cancel)
    events: list[ProgressEvent] = []
    hub.train(spec, progress=events.append)
    assert any("starting over" in e.message for e in events if e.kind == "message")
    assert steps(events) == [1, 2, 3, 4]


def test_cancel_registers_nothing_and_keeps_a_checkpoint(hub: Hub, data: Path) -> None:
    cancel = CancelToken()
    events: list[ProgressEvent] = []

    def cancel_at_2(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "step" and event.step == 2:
            cancel.cancel()

    with pytest.raises(TrainingCancelled, match="cancelled at step 2; nothing registered") as caught:
        hub.train(recipe(data, max_steps=10, save_steps=50), progress=cancel_at_2, cancel=cancel)
    assert isinstance(caught.value, TrainingError)
    assert hub.list() == []
    assert events[-1].kind == "cancelled" and steps(events) == [1, 2]
    assert list((hub.home / "runs").glob("capitals-*/checkpoints/checkpoint-2"))
    with pytest.raises(TrainingCancelled, match="before it started"):
        hub.train(recipe(data, max_steps=10), cancel=cancel)


def test_the_same_run_cannot_train_twice_at_once(hub: Hub, data: Path) -> None:
    import fcntl


    run_dir = hub.plan_run(recipe(data, max_steps=1)).run_dir
    run_dir.parent.mkdir(parents=True)
    with open(run_dir.with_name(run_dir.name + ".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running `adapterhub train` of this recipe holds it
        with pytest.raises(TrainingError, match="already training in another process"):
            hub.train(recipe(data, max_steps=1))
    assert hub.list() == []


def test_wrong_format_and_bad_targets_fail_before_training(hub: Hub, tmp_path: Path, data: Path) -> None:
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ConfigError, match=r"method 'sft' needs 'messages' \(columns: messages\)"):
        hub.train({**recipe(data), "dataset": {"path": str(prefs)}})
    with pytest.raises(ConfigError, match=r"lora.target_modules: \['qkv'\] are not linear layers"):
        hub.train({**recipe(data), "lora": {"target_modules": ["qkv"]}})
    with pytest.raises(ConfigError, match="written for 'some/other-model'"):
        hub.train({**recipe(data), "base": "some/other-model"})
    assert hub.list() == []


def test_show_example_renders_with_the_mask(hub: Hub, data: Path) -> None:
    view = hub.show_example({**recipe(data), "dataset": {"path": str(data), "eval_fraction": 0}}, index=1)
    assert "⟦Rome.<|im_end|>⟧" in view.text
    assert ("Rome.<|im_end|>", True) in view.segments


def test_cli_train_and_show_example(hub: Hub, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adapterhub.cli import main

    path = tmp_path / "capitals.yaml"
    path.write_text(
        "# adapterhub train capitals.yaml\nmethod: sft\nname: capitals\n"
        f"dataset:\n  path: {data.name}\ntraining:\n  precision: fp32\n  batch_size: 4\n"
    )
    main(["train", str(path), "--show-example", "--home", str(hub.home)])
    assert "⟦Paris.<|im_end|>⟧" in capsys.readouterr().out
    main(["train", str(path), "--set", "training.max_steps=2", "--set", "forgetting_check=false",
          "--home", str(hub.home)])
    captured = capsys.readouterr()
    assert captured.out.strip() == "capitals@1"
    assert "step 2/2" in captured.err and "registered capitals@1" in captured.err
    assert hub.resolve("capitals").recipe["training"]["max_steps"] == 2
    with pytest.raises(SystemExit) as exited:
        main(["train", str(path), "--set", "lora.r=0", "--home", str(hub.home)])
    assert exited.value.code == 2 and "lora.r" in capsys.readouterr().err


def test_ctrl_c_in_the_cli_stops_with_a_checkpoint_and_resume_finishes(hub: Hub, data: Path, tmp_path: Path) -> None:
    """A real `adapterhub train` process: SIGINT stops it cleanly, `--resume` continues the run."""
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "capitals.yaml"
    path.write_text(
        "method: sft\nname: capitals\nforgetting_check: false\n"
        f"dataset:\n  path: {data}\ntraining:\n  precision: fp32\n  batch_size: 2\n  max_steps: 40\n"
        "  save_steps: 1000\n"
    )
    command = [sys.executable, "-m", "adapterhub.cli", "train", str(path), "--home", str(hub.home)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # plain progress lines: stderr is a pipe, not a terminal
        if line.startswith("step 3/40"):
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 1, rest
    assert "cancelled at step" in rest and "nothing registered" in rest
    assert hub.list() == []

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "capitals@1"
    resumed_at = next(line for line in done.stderr.splitlines() if line.startswith("resumed at step"))
    assert int(resumed_at.split()[-1]) >= 3
