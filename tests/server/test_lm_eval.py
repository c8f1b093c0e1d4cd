"""lm-evaluation-harness itself, unchanged, against a real ``adapterhub serve``: its
``local-completions`` model (echo + logprobs, token-id prompts) on the bundled offline task gives
the log-likelihoods and the accuracy of its own ``hf`` model running the same PEFT adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from server_harness import start_server

from adapterhub import Hub

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "recipes" / "evals" / "capitals"


def _evaluate(model: str, model_args: str) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(  # type: ignore[no-any-return]
        model=model, model_args=model_args, tasks=["adapterhub_capitals"], batch_size=1,
        task_manager=TaskManager(include_path=str(TASK_DIR)), log_samples=True,
    )


def _loglikelihoods(results: dict[str, Any]) -> list[float]:
    return [float(resp[0]) for sample in results["samples"]["adapterhub_capitals"]
            for resp in sample["filtered_resps"]]


def test_local_completions_matches_the_hf_model_with_the_same_adapter(
    served_home: Path, tmp_path: Path, server_loras: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(TASK_DIR)  # the task's data_files are relative, and datasets reads them from the cwd
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    base_path = Hub(served_home).base_info.path
    server = start_server(served_home, tmp_path)
    try:
        ours = _evaluate("local-completions", (
            f"model=pirate,base_url={server.url}/v1/completions,tokenizer={base_path},"
            "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1"))
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()
    theirs = _evaluate("hf", f"pretrained={base_path},peft={server_loras['pirate']},dtype=float32,device=cpu")

    assert _loglikelihoods(ours) == pytest.approx(_loglikelihoods(theirs), abs=1e-3)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["adapterhub_capitals"][metric] == pytest.approx(
            theirs["results"]["adapterhub_capitals"][metric], abs=1e-3)
    assert len(_loglikelihoods(ours)) == 12 * 4  # every choice of every question was scored
