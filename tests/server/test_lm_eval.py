"""lm-evaluation-harness itself, unchanged, against a real ``adapterhub serve``:

* its ``local-completions`` model (echo + logprobs, token-id prompts) on the bundled offline
  multiple-choice task gives the log-likelihoods and the accuracy of its own ``hf`` model running
  the same PEFT adapter;
* its ``local-chat-completions`` model (the chat template applied by the server, stop strings,
  greedy) on the bundled offline generation task gives, sample by sample, the strings its ``hf``
  model generates with the same adapter and the same chat template, and so the same exact match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from server_harness import start_server

from adapterhub import Hub

REPO = Path(__file__).resolve().parents[2]
EVALS = REPO / "recipes" / "evals"
SUMS = 12  # questions in recipes/evals/sums/sums.jsonl


def _evaluate(model: str, model_args: str, task: str, **options: Any) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of the bundled task ``adapterhub_<task>`` (its folder is
    ``recipes/evals/<task>``; the cwd must be that folder, its data_files are relative)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(  # type: ignore[no-any-return]
        model=model, model_args=model_args, tasks=[f"adapterhub_{task}"], batch_size=1,
        task_manager=TaskManager(include_path=str(EVALS / task)), log_samples=True, **options,
    )


def _samples(results: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return sorted(results["samples"][f"adapterhub_{task}"], key=lambda sample: sample["doc_id"])


def _loglikelihoods(results: dict[str, Any]) -> list[float]:
    return [float(resp[0]) for sample in _samples(results, "capitals") for resp in sample["filtered_resps"]]


def _generations(results: dict[str, Any], field: str) -> list[Any]:
    return [sample[field] for sample in _samples(results, "sums")]


def test_local_completions_matches_the_hf_model_with_the_same_adapter(
    served_home: Path, tmp_path: Path, server_loras: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EVALS / "capitals")  # the task's data_files are relative, and datasets reads them from the cwd
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    base_path = Hub(served_home).base_info.path
    server = start_server(served_home, tmp_path)
    try:
        ours = _evaluate("local-completions", (
            f"model=pirate,base_url={server.url}/v1/completions,tokenizer={base_path},"
            "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1"), "capitals")
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()
    theirs = _evaluate("hf", f"pretrained={base_path},peft={server_loras['pirate']},dtype=float32,device=cpu",
                       "capitals")

    assert _loglikelihoods(ours) == pytest.approx(_loglikelihoods(theirs), abs=1e-3)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["adapterhub_capitals"][metric] == pytest.approx(
            theirs["results"]["adapterhub_capitals"][metric], abs=1e-3)
    assert len(_loglikelihoods(ours)) == 12 * 4  # every choice of every question was scored


def test_local_chat_completions_generates_what_the_hf_model_with_the_same_adapter_does(
    served_home: Path, tmp_path: Path, server_loras: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EVALS / "sums")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    base_path = Hub(served_home).base_info.path
    server = start_server(served_home, tmp_path)
    try:
        ours = _evaluate("local-chat-completions", (
            f"model=pirate,base_url={server.url}/v1/chat/completions,num_concurrent=1,max_retries=1"),
            "sums", apply_chat_template=True)
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()
    theirs = _evaluate("hf", f"pretrained={base_path},peft={server_loras['pirate']},dtype=float32,device=cpu",
                       "sums", apply_chat_template=True)

    # the tiny base is random: the strings are gibberish, and their equality is the check
    assert _generations(ours, "resps") == _generations(theirs, "resps")
    assert _generations(ours, "filtered_resps") == _generations(theirs, "filtered_resps")
    assert len(_generations(ours, "resps")) == SUMS  # every question was answered
    assert any(resp[0] for resp in _generations(ours, "resps")), "every answer is empty: nothing was compared"
    assert ours["results"]["adapterhub_sums"]["exact_match,none"] == pytest.approx(
        theirs["results"]["adapterhub_sums"]["exact_match,none"], abs=1e-3)
