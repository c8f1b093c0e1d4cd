"""``adapterhub.Hub``: the library's front door.

One ``Hub`` is one hub home (``ADAPTERHUB_HOME``, default ``~/.adapterhub``): its current base, its
registry, and — loaded lazily, once — the frozen base model itself. The CLI, the server and the TUI
are thin layers over this class.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.core.hardware import Platform, detect_platform
from adapterhub.core.progress import (
    STEP_LOG,
    ProgressCallback,
    ProgressEvent,
    no_progress,
    parse_step_log,
)
from adapterhub.core.refs import validate_name
from adapterhub.errors import BaseModelError, ConfigError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE, check_fits, load_lora_folder
from adapterhub.models.base import (
    BaseInfo,
    LoadedBase,
    Progress,
    load_base,
    load_skeleton,
    materialize_base,
)
from adapterhub.registry import Evaluation, Gate, Registry, Version, parse_gates

if TYPE_CHECKING:
    from collections.abc import Mapping

    from adapterhub.core.progress import CancelToken
    from adapterhub.engine.config import EngineConfig
    from adapterhub.engine.simple import ReferencePath
    from adapterhub.engine.types import SamplingParams
    from adapterhub.evaluation import EvaluationReport
    from adapterhub.hfhub import PullResult, PushResult
    from adapterhub.training.recipe import RecipeBase
    from adapterhub.training.run import ExampleView, RunPlan, TrainingContext

HOME_ENV = "ADAPTERHUB_HOME"
_SETTINGS_FILE = "hub.json"


def default_home() -> Path:
    """``$ADAPTERHUB_HOME``, else ``~/.adapterhub``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".adapterhub").expanduser()


class Hub:
    """One hub home: its base, its registry and the base model loaded once.

    Args:
        home: the hub home; ``$ADAPTERHUB_HOME`` or ``~/.adapterhub`` when None.
        precision: how to store the base's weights (``nf4``, ``int8``, ``bf16``, ``fp32``); the
            precision chosen at ``init`` when None.
        device: ``cpu``, ``cuda`` or ``cuda:N``; CUDA when torch sees one, else the CPU.
        compute_dtype: ``bfloat16``, ``float16`` or ``float32``; the hardware's best when None
            (see :mod:`adapterhub.core.hardware`).
        registry: the registry's database URL (``sqlite:///path``, ``postgresql://user@host/db``)
            or an open :class:`Registry`; ``$ADAPTERHUB_REGISTRY_URL``, else the home's
            ``registry.db``, when None.
        blobs: where the registry's files live (a folder or ``s3://bucket/prefix``);
            ``$ADAPTERHUB_BLOBS``, else beside an SQLite database, when None.
    """

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        precision: str | None = None,
        device: str | None = None,
        compute_dtype: str | None = None,
        registry: str | Registry | None = None,
        blobs: str | Path | None = None,
    ) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        if isinstance(registry, Registry):
            self.registry = registry
        else:
            self.registry = Registry(self.home, url=registry, blobs=blobs)
        self._precision = precision
        self._device = device
        self._compute_dtype = compute_dtype
        self._platform: Platform | None = None
        self._base: LoadedBase | None = None
        self._base_info: BaseInfo | None = None
        self._reference: ReferencePath | None = None
        self._loading = threading.Lock()  # the base and the reference path load once, whoever asks

    # ------------------------------------------------------------------ base

    def init(
        self,
        base: str | None = None,
        *,
        precision: str = "nf4",
        force: bool = False,
        progress: Progress | None = None,
    ) -> BaseInfo:
        """Materialise a base into this home (once) and make it the current base."""
        from adapterhub.models.base import PRECISIONS

        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        info = materialize_base(self.home, base, force=force, progress=progress)
        settings = {"base": str(info.path.relative_to(self.home)), "precision": precision}
        (self.home / _SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        with self._loading:
            self._base, self._base_info, self._reference = None, info, None
        return info

    def choices(self) -> dict[str, str | None]:
        """What this hub was told rather than found (``precision``, ``device``, ``compute_dtype``;
        None where it decides), so another process can open the same hub the same way."""
        return {"precision": self._precision, "device": self._device, "compute_dtype": self._compute_dtype}

    def _settings(self) -> dict[str, str]:
        try:
            return dict(json.loads((self.home / _SETTINGS_FILE).read_text()))
        except FileNotFoundError:
            raise BaseModelError(
                f"no base in {str(self.home)!r}; run `adapterhub init` first"
            ) from None

    @property
    def base_info(self) -> BaseInfo:
        """The current base (without loading it); read once, then kept (``init`` replaces it)."""
        if self._base_info is None:
            self._base_info = BaseInfo.read(self.home / self._settings()["base"])
        return self._base_info

    @property
    def precision(self) -> str:
        return self._precision or self._settings().get("precision", "nf4")

    @property
    def platform(self) -> Platform:
        """Where and in which dtype this hub runs models (detected once; see :mod:`adapterhub.core.hardware`)."""
        if self._platform is None:
            self._platform = detect_platform(device=self._device, compute_dtype=self._compute_dtype)
        return self._platform

    @property
    def base(self) -> LoadedBase:
        """The frozen base model, loaded on first use (by whichever thread asks first) and kept."""
        with self._loading:
            if self._base is None:
                self._base = load_base(self.base_info.path, self.precision, platform=self.platform)
            return self._base

    # ------------------------------------------------------------------ registry

    def import_adapter(self, path: Path | str, name: str) -> Version:
        """Register a PEFT LoRA folder trained elsewhere as the next version of ``name``.

        Checks that its target modules exist in the current base and their shapes match;
        accepts safetensors only.
        """
        validate_name(name, field="adapter name")
        folder = Path(path).expanduser()
        adapter = load_lora_folder(folder)
        info = self.base_info
        check_fits(adapter, load_skeleton(info.path))
        return self.registry.register(
            name,
            {CONFIG_FILE: folder / CONFIG_FILE, WEIGHTS_FILE: folder / WEIGHTS_FILE},
            base_fingerprint=info.fingerprint,
            template_hash=info.template_hash,
            method="imported",
            source={"path": str(folder.resolve())},
            metrics={
                "r": adapter.r,
                "alpha": adapter.alpha,
                "target_modules": list(adapter.target_modules),
            },
        )

    def import_or_reuse_adapter(self, path: Path | str, name: str) -> Version:
        """The latest version of ``name`` when its files are the folder's (equal sha256s, this
        base), else :meth:`import_adapter`. A replica gets the same folder again under a router's
        digest name after unloading it for room; importing it each time would add a version per
        reload. Only the latest counts: ``name`` must then mean the folder's weights."""
        validate_name(name, field="adapter name")
        folder = Path(path).expanduser()
        try:
            files = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in (CONFIG_FILE, WEIGHTS_FILE)}
        except OSError:
            return self.import_adapter(folder, name)  # it says what is missing or unsafe
        fingerprint = self.base_info.fingerprint
        versions = self.registry.list_versions(name)
        if versions and versions[-1].files == files and versions[-1].base_fingerprint == fingerprint:
            return versions[-1]
        return self.import_adapter(folder, name)

    def resolve(self, ref: str) -> Version:
        return self.registry.resolve(ref)

    def list(self, name: str | None = None) -> list[Version]:
        return self.registry.list_versions(name)

    def tag(
        self,
        ref: str,
        alias: str,
        *,
        gates: list[str] | None = None,
        evaluate_missing: bool = True,
        progress: ProgressCallback | None = None,
    ) -> Version:
        """Point ``name:alias`` at version ``ref``; a gated alias moves only if every rule passes.

        Args:
            gates: rules the alias holds from now on (see :mod:`adapterhub.registry.gates`),
                replacing its old ones; ``[]`` removes them; None keeps them.
            evaluate_missing: run the evaluations a rule needs and the version or its parent
                lacks (the task as recorded on the other side, with the same limit) before
                checking; otherwise a missing number fails the rule.

        Raises:
            GateError: a rule fails; the alias and its rules are unchanged.
        """
        version = self.registry.resolve(ref)
        rules = parse_gates(gates) if gates is not None else self.registry.gates(version.name, alias)
        if evaluate_missing and rules:
            self._evaluate_for(version, rules, progress or no_progress)
        return self.registry.tag(version.ref, alias, gates=gates)

    def _evaluate_for(self, version: Version, rules: list[Gate], progress: ProgressCallback) -> None:
        """Run what ``rules`` read and is not recorded yet, for ``version`` and its parent."""
        refs = [version.ref] + ([version.parent] if version.parent and any(r.relative for r in rules) else [])
        recorded = {ref: {e.subject: e for e in self.registry.evaluations(ref, latest=True)} for ref in refs}
        for ref in refs:
            todo: dict[str, dict[str, Any]] = {}  # task source -> the setup it was run with elsewhere
            for rule in rules:
                if rule.task is None or rule.subject in recorded[ref] or (ref != version.ref and not rule.relative):
                    continue
                known = next((r[rule.subject] for r in recorded.values() if rule.subject in r), None)
                setup = dict(known.setup) if known else {}
                source = (setup.get("tasks") or {}).get(rule.task, rule.task)
                todo.setdefault(source, setup)
            for source, setup in todo.items():
                self.evaluate(ref, [source], limit=setup.get("limit"), num_fewshot=setup.get("num_fewshot"),
                              chat=bool(setup.get("chat")), progress=progress)

    def evaluate(
        self,
        ref: str | None,
        tasks: list[str | Path],
        *,
        server: str | None = None,
        api_key: str | None = None,
        chat: bool = False,
        limit: int | None = None,
        num_fewshot: int | None = None,
        record: bool = True,
        log_samples: bool = False,
        engine_config: EngineConfig | None = None,
        progress: ProgressCallback | None = None,
    ) -> EvaluationReport:
        """Run lm-evaluation-harness on version ``ref`` (None: the base alone) and record it.

        Args:
            tasks: lm-eval task names, or task folders / YAML files (``recipes/evals/capitals``).
            server: evaluate through a running OpenAI-compatible server at this URL instead of
                this process's engine (``api_key`` is its key).
            chat: render prompts with the chat template (generation tasks).
            limit: score only the first ``limit`` documents of each task.
            record: store the numbers as evaluations of the version (never for the base).
            log_samples: keep every document's requests and answers in ``report.results["samples"]``.

        See :mod:`adapterhub.evaluation`.
        """
        from adapterhub.evaluation import evaluate, resolve_tasks

        version = self.registry.resolve(ref) if ref is not None else None
        task_list = resolve_tasks(tasks)
        info = self.base_info
        setup = {"base": info.name, "base_fingerprint": info.fingerprint}
        options: dict[str, Any] = {
            "version": version, "chat": chat, "limit": limit, "num_fewshot": num_fewshot,
            "log_samples": log_samples, "progress": progress or no_progress,
        }
        if server is not None:
            report = evaluate(task_list, server=server, api_key=api_key, tokenizer_path=str(info.path),
                              setup=setup, **options)
        else:
            from adapterhub.engine import Engine

            platform = self.platform
            setup.update(device=platform.device, compute_dtype=platform.compute_dtype, isa=platform.isa,
                         precision=self.precision)
            with Engine(self.base, self.registry, engine_config) as engine:
                report = evaluate(task_list, engine=engine, setup=setup, **options)
        if record and version is not None and report.evaluations:
            self.registry.record_evaluations(report.evaluations)
        return report

    def delete(self, ref: str, *, force: bool = False) -> list[Version]:
        return self.registry.delete(ref, force=force)

    # ------------------------------------------------------------------ Hugging Face Hub

    def push(
        self,
        ref: str,
        repo_id: str,
        *,
        private: bool = False,
        revision: str = "main",
        endpoint: str | None = None,
        token: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> PushResult:
        """Push version ``ref`` to Hub repo ``repo_id``: one commit on ``revision``, tagged ``vN``.

        Pushing a version that is already there is a no-op. See :func:`adapterhub.hfhub.push_version`.
        """
        from adapterhub.hfhub import HubSettings, push_version

        try:
            base: BaseInfo | None = self.base_info
        except BaseModelError:
            base = None  # no base here: push without tokenizer files
        return push_version(
            self.registry,
            ref,
            repo_id,
            base=base,
            private=private,
            branch=revision,
            settings=HubSettings.resolve(endpoint, token),
            progress=progress or no_progress,
        )

    def pull(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        name: str | None = None,
        endpoint: str | None = None,
        token: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> PullResult:
        """Pull a PEFT LoRA repo at ``revision`` (branch, tag or sha) and register it.

        Pulling a commit already registered returns that version. See
        :func:`adapterhub.hfhub.pull_version`.
        """
        from adapterhub.hfhub import HubSettings, pull_version

        return pull_version(
            self.registry,
            repo_id,
            base=self.base_info,
            revision=revision,
            name=name,
            settings=HubSettings.resolve(endpoint, token),
            progress=progress or no_progress,
        )

    # ------------------------------------------------------------------ training

    def train(
        self,
        recipe: str | Path | Mapping[str, Any] | RecipeBase,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        resume: bool = False,
        overrides: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Version:
        """Train a recipe on this hub's base and register the adapter as a new version.

        Args:
            recipe: a recipe YAML path, a mapping, or a recipe object.
            progress: receives every :class:`~adapterhub.core.progress.ProgressEvent`.
            cancel: set it from another thread to stop at the next step (nothing is registered).
            resume: continue this recipe's interrupted run from its last checkpoint.
            overrides: recipe fields to override by dotted path (``{"training.max_steps": 20}``),
                as ``--set`` takes them (for keys that are not Python names).
            **fields: recipe fields to override, nested (``training={"max_steps": 20}``) or
                ``__``-joined (``training__max_steps=20``).

        Raises:
            ConfigError: bad recipe, data or chat template. TrainingError / TrainingCancelled:
                the run failed or was cancelled; nothing registered.

        See :func:`adapterhub.training.run.train`.
        """
        from adapterhub.training.run import train

        return train(self._training(), recipe, overrides={**(overrides or {}), **fields} or None,
                     progress=progress, cancel=cancel, resume=resume)

    def plan_run(
        self, recipe: str | Path | Mapping[str, Any] | RecipeBase, *, overrides: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> RunPlan:
        """Check a recipe against this hub's base, its parent and its data, as :meth:`train`
        does first (``overrides`` and ``fields`` as there); nothing heavy is loaded or trained.

        Raises:
            ConfigError: every problem found (``problems`` lists them).
            AdapterNotFoundError: the parent does not resolve.
        """
        from adapterhub.training.run import plan_run

        return plan_run(self._training(), recipe, {**(overrides or {}), **fields} or None)

    def show_example(
        self, recipe: str | Path | Mapping[str, Any] | RecipeBase, *, index: int = 0, **overrides: Any
    ) -> ExampleView:
        """Training example ``index`` rendered as the trainer will see it, with its loss mask."""
        from adapterhub.training.run import show_example

        return show_example(self._training(), recipe, overrides=overrides or None, index=index)

    def _training(self) -> TrainingContext:
        from adapterhub.training.run import TrainingContext

        return TrainingContext(base=self.base_info, registry=self.registry, runs=self.home / "runs",
                               platform=self.platform)

    # ------------------------------------------------------------------ generate

    def generate(
        self,
        ref: str | None,
        prompt: str | list[dict[str, str]],
        sampling: SamplingParams | None = None,
        **sampling_fields: Any,
    ) -> str:
        """One chat turn through the base's chat template, with adapter ``ref`` (None = base).

        Args:
            prompt: the user's message, or a whole list of chat messages.
            sampling: sampling settings; or pass their fields as keywords
                (``max_tokens=64, temperature=0``).
        """
        from adapterhub.engine.types import SamplingParams

        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        sampling = sampling or SamplingParams(**sampling_fields)
        base = self.base
        with self._loading:
            if self._reference is None:
                from adapterhub.engine.simple import ReferencePath

                self._reference = ReferencePath(base, self.registry)
            reference = self._reference
        return reference.generate(ref, base.render_chat(messages), sampling)

    # ---- registry views

    def lineage(self, ref: str) -> list[Version]:
        """Version ``ref`` and its parent chain, newest first."""
        return self.registry.lineage(ref)

    def evaluations(self, ref: str | Version, *, latest: bool = False) -> list[Evaluation]:
        """A version's recorded evaluations, oldest first; with ``latest``, the newest per task
        and metric."""
        return self.registry.evaluations(ref, latest=latest)

    def gates(self, name: str, alias: str) -> list[Gate]:
        """The rules alias ``name:alias`` holds (none for an ungated or unknown alias)."""
        return self.registry.gates(name, alias)

    def step_log(self, ref: str) -> list[ProgressEvent]:
        """The progress events recorded while version ``ref`` trained (none for an imported or
        pulled version that has no :data:`~adapterhub.core.progress.STEP_LOG`)."""
        version = self.registry.resolve(ref)
        if STEP_LOG not in version.files:
            return []
        return parse_step_log(self.registry.read_file(version, STEP_LOG).decode("utf-8"))
