"""Evaluate a version with lm-evaluation-harness, through our engine or a running server.

We do not write a harness: ``lm-eval`` (the ``eval`` extra) owns tasks, prompts, few-shot
sampling, metrics and their standard errors. This module gives it a model and keeps the numbers:

* **In process**, :class:`EngineLM` is an lm-eval ``TemplateLM`` over our batching
  :class:`~adapterhub.engine.Engine`, so what is measured is what is served: the same base (as
  quantised and dequantised for serving), the same LoRA path, a whole task's requests in one
  continuous batch. Log-likelihoods come from prompt log-probabilities (``max_tokens=0``);
  tokenisation is lm-eval's own (``TemplateLM._encode_pair``), as its ``hf`` model does.
* **Against a server** (``server=URL``), lm-eval's own ``local-completions`` (or, with ``chat``,
  ``local-chat-completions``) model talks to ``/v1``: any OpenAI-compatible server works.
* **Tasks** are lm-eval task names or task folders (one or more task YAMLs with local data, as
  under ``recipes/evals/``). A folder's relative ``data_files`` are resolved against the folder,
  not the working directory.

The numbers become :class:`~adapterhub.registry.Evaluation` records of the version (task, metric,
value, stderr, samples, harness version, setup); the version itself never changes.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.core.progress import ProgressCallback, ProgressEvent, no_progress
from adapterhub.errors import ConfigError
from adapterhub.registry import Evaluation, Version

if TYPE_CHECKING:
    from adapterhub.engine import Engine

HARNESS = "lm-eval"
_INSTALL_HINT = "evaluation needs lm-evaluation-harness: pip install 'adapterhub[eval]'"


@dataclass(frozen=True)
class EvalTask:
    """One task to run: an lm-eval task name, or a config read from a task YAML."""

    name: str
    source: str  # what the user named: a task name, or the YAML's path
    config: Mapping[str, Any] | None = None  # None: a task lm-eval knows by name


@dataclass(frozen=True)
class EvaluationReport:
    """What one evaluation run measured."""

    ref: str | None  # the version, or None for the base alone
    evaluations: list[Evaluation]  # one per task and metric (name "" for the base: not recorded)
    results: Mapping[str, Any] = field(default_factory=dict)  # lm-eval's results, configs, versions

    def value(self, task: str, metric: str) -> float:
        """The measured ``metric`` of ``task``.

        Raises:
            KeyError: the run did not measure it.
        """
        for e in self.evaluations:
            if (e.task, e.metric) == (task, metric):
                return e.value
        raise KeyError(f"{task}:{metric} was not measured; measured {[e.subject for e in self.evaluations]}")


# ---------------------------------------------------------------------------------------- tasks


def resolve_tasks(specs: Sequence[str | Path]) -> list[EvalTask]:
    """Turn what the user named into tasks: folders and YAML files are read, names pass through.

    Raises:
        ConfigError: no task named, a path holds no task YAML, or a YAML has no ``task`` name.
    """
    if not specs:
        raise ConfigError("name at least one task: an lm-eval task name or a task folder "
                          "such as recipes/evals/capitals", source="task")
    tasks: list[EvalTask] = []
    problems: list[str] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if not path.exists():
            if os.sep in str(spec) or str(spec).endswith((".yaml", ".yml")):
                problems.append(f"task {str(spec)!r} looks like a path but does not exist")
            else:
                tasks.append(EvalTask(str(spec), str(spec)))
            continue
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        found = [task for task in (_read_task(f, problems) for f in files) if task is not None]
        if not found and not problems:
            problems.append(f"task folder {str(path)!r} holds no task YAML (a file with `task: NAME`)")
        tasks.extend(found)
    if problems:
        raise ConfigError(problems, source="task")
    return tasks


def _read_task(path: Path, problems: list[str]) -> EvalTask | None:
    # lm-eval's own loader: it follows `include:` and `!function` as lm-eval itself would.
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = load_yaml(path)
    except Exception as e:  # a YAML error, a missing include or !function module
        problems.append(f"task file {str(path)!r} does not load: {e}")
        return None
    name = config.get("task")
    if not isinstance(name, str):
        if "group" not in config:  # a group file beside its tasks is not a task itself
            problems.append(f"task file {str(path)!r} has no `task: NAME`")
        return None
    kwargs = dict(config.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _absolute(kwargs["data_files"], path.parent)
        config = {**config, "dataset_kwargs": kwargs}
    return EvalTask(name, str(path.resolve()), config)


def _absolute(files: Any, folder: Path) -> Any:
    """``data_files`` (a path, a list, or a split -> path(s) mapping) resolved against ``folder``."""
    if isinstance(files, str):
        return files if "://" in files or Path(files).is_absolute() else str(folder / files)
    if isinstance(files, list):
        return [_absolute(f, folder) for f in files]
    if isinstance(files, dict):
        return {split: _absolute(f, folder) for split, f in files.items()}
    return files


# ----------------------------------------------------------------------------------- the runner


def evaluate(
    tasks: Sequence[EvalTask],
    *,
    version: Version | None,
    engine: Engine | None = None,
    server: str | None = None,
    api_key: str | None = None,
    tokenizer_path: str | None = None,
    chat: bool = False,
    limit: int | None = None,
    num_fewshot: int | None = None,
    setup: Mapping[str, Any] | None = None,
    log_samples: bool = False,
    progress: ProgressCallback = no_progress,
) -> EvaluationReport:
    """Run lm-eval on ``tasks`` for ``version`` (None: the base) and collect its numbers.

    Exactly one of ``engine`` (in process) and ``server`` (a base URL such as
    ``http://127.0.0.1:8000``) says where the model runs.

    Args:
        tokenizer_path: the base's tokenizer, for a server (lm-eval tokenises log-likelihood
            requests itself).
        chat: render prompts with the base's chat template (generation tasks).
        limit: score only the first ``limit`` documents of each task.
        setup: extra facts stored with each record (base, dtype...).
        log_samples: keep lm-eval's per-document requests and answers in ``results["samples"]``.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(_INSTALL_HINT) from e
    if (engine is None) == (server is None):
        raise ConfigError("evaluate runs either in process (an engine) or against a server, not both")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit!r} must be at least 1 document per task", source="eval")

    by_name = all(t.config is None for t in tasks)
    manager = TaskManager(include_defaults=any(t.config is None for t in tasks))
    requested: list[str | dict[str, Any]] = [t.name if t.config is None else dict(t.config) for t in tasks]
    model_setup: dict[str, Any]
    if engine is not None:
        model: Any = EngineLM(engine, version, progress=progress)
        model_setup = {"engine": "adapterhub"}
        model_args = None
    else:
        assert server is not None
        model, model_args = _server_model(server, version, tokenizer_path, chat)
        model_setup = {"engine": "server", "server": server, "model": model_args["model"]}
    progress(ProgressEvent("start", message=f"evaluating {version.ref if version else 'the base'} "
                           f"on {', '.join(t.name for t in tasks)}"))
    started = time.monotonic()
    with _api_key(api_key):
        try:
            results = lm_eval.simple_evaluate(
                model=model, model_args=model_args, tasks=requested, task_manager=manager,
                limit=limit, num_fewshot=num_fewshot, apply_chat_template=chat,
                log_samples=log_samples, batch_size=1, bootstrap_iters=1000,
            )
        except (KeyError, ValueError) as e:
            if by_name and "task" in str(e).lower():
                raise ConfigError(f"lm-eval does not know task(s) {[t.name for t in tasks]}: {e}",
                                  source="task") from e
            raise
    harness = f"{HARNESS} {importlib.metadata.version('lm_eval')}"
    facts = {**model_setup, **(setup or {}), "limit": limit, "num_fewshot": num_fewshot, "chat": chat,
             "tasks": {t.name: t.source for t in tasks}, "seconds": round(time.monotonic() - started, 1)}
    evaluations = _records(results or {}, version, harness, facts)
    progress(ProgressEvent(
        "done", message=", ".join(f"{e.subject}={e.value:.4g}" for e in evaluations),
        metrics={e.subject: e.value for e in evaluations}, version_ref=version.ref if version else None,
    ))
    kept = {k: (results or {}).get(k) for k in ("results", "configs", "versions", "n-samples", "samples")
            if k in (results or {})}
    return EvaluationReport(version.ref if version else None, evaluations, kept)


def _server_model(server: str, version: Version | None, tokenizer: str | None, chat: bool) -> tuple[str, dict[str, Any]]:
    base_url = server.rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"
    args: dict[str, Any] = {
        "model": version.ref if version else "base",
        "base_url": f"{base_url}/chat/completions" if chat else f"{base_url}/completions",
        "num_concurrent": 4, "max_retries": 2,
    }
    if not chat:
        if tokenizer is None:
            raise ConfigError("a server evaluation needs the base's tokenizer (tokenizer_path)")
        args.update(tokenizer=tokenizer, tokenizer_backend="huggingface", tokenized_requests=True)
    return ("local-chat-completions" if chat else "local-completions"), args


@contextmanager
def _api_key(key: str | None) -> Iterator[None]:
    """lm-eval's API models read the key from ``OPENAI_API_KEY`` only."""
    if key is None:
        yield
        return
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = key
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old


def _records(results: Mapping[str, Any], version: Version | None, harness: str,
             setup: Mapping[str, Any]) -> list[Evaluation]:
    """lm-eval's ``results`` (``{"acc,none": 0.5, "acc_stderr,none": 0.1, ...}`` per task) as records."""
    name, number = (version.name, version.number) if version else ("", 0)
    now = time.time()
    records = []
    for task, values in sorted((results.get("results") or {}).items()):
        samples = ((results.get("n-samples") or {}).get(task) or {}).get("effective")
        for key, value in sorted(values.items()):
            metric, _, filt = key.partition(",")
            if not filt or "_stderr" in metric or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if not math.isfinite(value):
                continue
            stderr = values.get(f"{metric}_stderr,{filt}")
            records.append(Evaluation(
                name, number, task, metric if filt == "none" else f"{metric},{filt}", float(value),
                stderr=float(stderr) if isinstance(stderr, int | float) and math.isfinite(stderr) else None,
                samples=samples, harness=harness, created_at=now, setup=dict(setup),
            ))
    return records


# ------------------------------------------------------------------------- lm-eval over our engine


def _engine_lm_class() -> type:
    from lm_eval.api.model import TemplateLM

    class EngineLM(TemplateLM):  # type: ignore[misc]
        """lm-eval's model interface over our :class:`~adapterhub.engine.Engine` and one adapter."""

        def __init__(self, engine: Engine, version: Version | None, *,
                     progress: ProgressCallback = no_progress, max_gen_toks: int = 256) -> None:
            super().__init__()
            self.engine = engine
            self.version = version
            self.tokenizer = engine.tokenizer
            self.max_length = engine.max_seq_len
            self.max_gen_toks = max_gen_toks
            self._progress = progress

        # -- what TemplateLM asks of a model

        @property
        def eot_token_id(self) -> int:
            return int(self.tokenizer.eos_token_id)

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name_or_path", "adapterhub")).replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
            # As lm-eval's hf model: the tokenizer's own default, unless the string has its BOS.
            bos = self.tokenizer.bos_token
            if add_special_tokens is None and bos and string.startswith(bos):
                add_special_tokens = False
            extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            return list(self.tokenizer.encode(string, **extra))

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return str(self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            ))

        def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False,
                                  **kwargs: Any) -> list[tuple[float, bool]]:
            pairs = [(list(context), list(continuation)) for _, context, continuation in requests]
            scored = self._score(pairs, "log-likelihood")
            for (strings, _, _), answer in zip(requests, scored, strict=True):
                self.cache_hook.add_partial("loglikelihood", strings, answer)
            return scored

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            windows: list[tuple[int, list[int], list[int]]] = []
            for i, (string,) in enumerate(r.args for r in requests):
                for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                        token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length, context_len=1)):
                    windows.append((i, context, continuation))
            scored = self._score([(c, t) for _, c, t in windows], "rolling log-likelihood")
            totals = [0.0] * len(requests)
            for (i, _, _), (logprob, _) in zip(windows, scored, strict=True):
                totals[i] += logprob
            for request, total in zip(requests, totals, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
            return totals

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

            from adapterhub.engine.types import GenerationRequest, SamplingParams

            eos = self.tokenizer.decode([self.eot_token_id])
            batch = []
            for context, gen_kwargs in (r.args for r in requests):
                options = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
                until = handle_stop_sequences(options.pop("until", None), eos=eos)
                max_tokens = int(options.pop("max_gen_toks"))
                prompt = self.tok_encode(context)[-(self.max_length - max_tokens):]
                sampling = SamplingParams(
                    max_tokens=max_tokens, temperature=float(options.get("temperature") or 0.0),
                    top_p=float(options.get("top_p") or 1.0), stop=tuple(s for s in until if s),
                )
                batch.append(GenerationRequest(tuple(prompt), adapter=self.version, sampling=sampling))
            texts = [r.text for r in self._run(batch, "generation")]
            for request, text in zip(requests, texts, strict=True):
                self.cache_hook.add_partial("generate_until", request.args, text)
            return texts

        # -- our engine

        def _score(self, pairs: list[tuple[list[int], list[int]]], what: str) -> list[tuple[float, bool]]:
            """(log-probability of the continuation, whether greedy decoding picks it) per pair."""
            from adapterhub.engine.types import GenerationRequest, SamplingParams

            sampling = SamplingParams(max_tokens=0, prompt_logprobs=1)
            batch, scored = [], []
            for context, continuation in pairs:
                whole = (context + continuation)[-self.max_length:]  # left-truncated, as lm-eval's hf
                scored.append(min(len(continuation), len(whole) - 1))
                batch.append(GenerationRequest(tuple(whole), adapter=self.version, sampling=sampling))
            answers = []
            for n, result in zip(scored, self._run(batch, what), strict=True):
                tail = result.prompt_logprobs[-n:] if n else ()
                logprob = sum(t.logprob for t in tail if t is not None)
                greedy = all(t is not None and t.top and t.top[0][0] == t.token_id for t in tail)
                answers.append((logprob, greedy))
            return answers

        def _run(self, batch: list[Any], what: str) -> list[Any]:
            """Every request through the engine, a window at a time (the engine's queue is bounded)."""
            window = max(1, self.engine.config.max_rows * 2)
            results: list[Any] = []
            for start in range(0, len(batch), window):
                results.extend(self.engine.generate_many(batch[start:start + window]))
                self._progress(ProgressEvent("step", step=len(results), total_steps=len(batch), message=what))
            return results

    return EngineLM


def EngineLM(engine: Engine, version: Version | None, **kwargs: Any) -> Any:  # noqa: N802 (a class, built lazily)
    """lm-eval's model over our engine (the class is built on first use: lm-eval is an extra)."""
    global _ENGINE_LM
    if _ENGINE_LM is None:
        _ENGINE_LM = _engine_lm_class()
    return _ENGINE_LM(engine, version, **kwargs)


_ENGINE_LM: type | None = None
