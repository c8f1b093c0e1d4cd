"""The HTTP backend: the TUI over a running ``adapterhub serve``.

Generation goes through the server's OpenAI-compatible API with the official ``openai`` client
(streamed chat completions, usage in the last chunk, the resolved version from the
``X-Adapter-Version`` header); registry reads and writes go through the admin API with ``httpx``,
parsed with the library's wire schemas (:mod:`adapterhub.protocol`). The TUI never imports the
server package: the wire is the only contract.

Design choices:

* **Errors come back as the library's types.** The server answers OpenAI's error shape with the
  ``code`` its library error class declares; :func:`adapterhub.errors.error_class` maps it back,
  so an unknown adapter is an :class:`~adapterhub.errors.AdapterNotFoundError` here exactly as
  in-process. Transport failures and refused keys become
  :class:`~adapterhub.errors.ServerError` saying what to do. Message text is never parsed.
* **Capabilities follow the key.** With an admin key the registry screen can tag, delete and
  read step logs and recorded evaluations, and training, evaluation, push and pull run as the
  server's jobs (``POST /admin/jobs``, progress from its SSE stream, cancel by ``DELETE``); with
  an inference key (403 on ``/admin``) it lists adapters from ``/v1/models`` only. Reading an
  alias's gates needs the in-process backend (the server has no route for it) and says so.
* **Votes go to the server** (``POST /v1/preferences``, :class:`RemotePreferences`), into its
  hub's preference dataset, so the DPO offer's training job on the server reads them there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from adapterhub.core.progress import CancelToken, ProgressCallback, ProgressEvent
from adapterhub.core.refs import AdapterRef
from adapterhub.engine.types import GenerationChunk, SamplingParams, Usage
from adapterhub.errors import (
    AdapterHubError,
    AdapterNotFoundError,
    ConfigError,
    ServerError,
    TrainingCancelled,
    TrainingError,
    error_class,
)
from adapterhub.protocol import (
    DeleteResponse,
    EvaluationInfo,
    JobInfo,
    ServerInfo,
    VersionInfo,
    VersionList,
)
from adapterhub.registry import Evaluation, Version
from adapterhub.training.votes import (
    Answer,
    PreferencePair,
    check_thumb,
    check_vote,
    count_thumbs,
    parse_pairs,
    preferred_adapter,
)
from adapterhub_tui.backend import BackendInfo, Capability, ChatMessages, TrainRequest


def library_error(status: int | None, body: Any, url: str) -> AdapterHubError:
    """Turn one error answer (OpenAI's shape) into the library error it stands for."""
    detail = body.get("error", body) if isinstance(body, dict) else {}
    detail = detail if isinstance(detail, dict) else {}
    message = str(detail.get("message") or body or f"HTTP {status}")
    code = str(detail.get("code") or "")
    kind = error_class(code)
    if kind is not None:
        return kind(message)
    if status in (401, 403):
        return ServerError(
            f"{url} refused the API key (HTTP {status}): {message}; pass an admin key with "
            "--api-key or ADAPTERHUB_API_KEY",
            status=status,
        )
    if status in (400, 422):
        return ConfigError(message)
    return ServerError(f"{url} answered HTTP {status}: {message}", status=status)


class HttpBackend:
    """A :class:`~adapterhub_tui.backend.Backend` over an adapterhub server.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        home: the local hub home (the DPO offer's recipe is written there; votes go to the server).
        api_key: sent as ``Authorization: Bearer``; an admin key enables the registry actions.
        timeout: seconds for registry calls (streams wait as long as tokens keep coming).
    """

    def __init__(
        self, url: str, *, home: Path, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        from openai import AsyncOpenAI, Timeout

        self.url = url.rstrip("/")
        self._home = Path(home)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        self._openai = AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=0,
            # openai's own Timeout: the client may run on httpx or httpx2 (openai >= 3.63), which
            # refuse each other's Timeout
            timeout=Timeout(timeout, read=None),
        )
        self._admin = True
        self._base_name: str | None = None
        self._preferences: RemotePreferences | None = None

    @property
    def home(self) -> Path:
        return self._home

    def preference_store(self) -> RemotePreferences:
        if self._preferences is None:
            self._preferences = RemotePreferences(self.url, self._http.headers.get("Authorization"), local=self._home)
        return self._preferences

    # ------------------------------------------------------------------ plumbing

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ServerError(
                f"cannot reach the adapterhub server at {self.url!r} ({type(e).__name__}: {e}); "
                "start it with `adapterhub serve` or check --server"
            ) from e
        if response.is_error:
            raise _error_of(response, self.url)
        return response.json()

    def _ref_path(self, ref: str) -> str:
        return quote(ref, safe="")

    async def _models(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/models"))["data"])

    # ------------------------------------------------------------------ registry

    async def describe(self) -> BackendInfo:
        try:
            info = ServerInfo.model_validate(await self._call("GET", "/admin/info"))
        except ServerError as e:
            if e.status not in (401, 403):
                raise
            self._admin = False  # an inference key: list through /v1/models only
            base = next((m["id"] for m in await self._models() if m.get("parent") is None), "base")
            self._base_name = base
            return BackendInfo(f"{self.url} (inference key)", base, frozenset())
        self._admin, self._base_name = True, info.base_name
        capabilities = frozenset({Capability.TAG, Capability.DELETE, Capability.STEP_LOG, Capability.EVALUATIONS,
                                  Capability.TRAIN, Capability.PUSH, Capability.PULL})
        return BackendInfo(self.url, info.base_name, capabilities)

    async def list_versions(self) -> list[Version]:
        if self._admin:
            found = VersionList.model_validate(await self._call("GET", "/admin/versions"))
            return [v.to_version() for v in found.data]
        return [_card_version(card) for card in await self._models()
                if card.get("version") and card["id"] == card["version"]]

    async def lineage(self, ref: str) -> list[Version]:
        if self._admin:
            path = f"/admin/versions/{self._ref_path(ref)}/lineage"
            return [v.to_version() for v in VersionList.model_validate(await self._call("GET", path)).data]
        for version in await self.list_versions():
            if version.ref == ref:
                return [version]
        raise AdapterNotFoundError(f"adapter {ref!r} is not served by {self.url}", ref=ref)

    async def step_log(self, ref: str) -> list[ProgressEvent]:
        data = await self._call("GET", f"/admin/versions/{self._ref_path(ref)}/step_log")
        return [ProgressEvent.from_dict(item) for item in data if isinstance(item, dict)]

    async def evaluations(self, ref: str) -> list[Evaluation]:
        data = await self._call("GET", f"/admin/versions/{self._ref_path(ref)}")
        found = [_evaluation(e) for e in VersionInfo.model_validate(data).evaluations]
        return sorted(found, key=lambda e: e.subject)

    async def gates(self, ref: str) -> dict[str, list[str]]:
        raise ConfigError(
            f"reading an alias's gates is not available through the server at {self.url} yet; "
            f"`adapterhub show {ref}` on the server's hub home lists them"
        )

    async def evaluate(
        self, ref: str, tasks: Sequence[str], *, limit: int | None = None,
        progress: ProgressCallback,
    ) -> list[Evaluation]:
        job = await self._run_job({"kind": "eval", "ref": ref, "tasks": list(tasks), "limit": limit},
                                  progress, None)
        measured = set(job.result.get("evaluations", {}))
        return [e for e in await self.evaluations(ref) if e.subject in measured]

    async def tag(self, ref: str, alias: str) -> Version:
        data = await self._call("POST", f"/admin/versions/{self._ref_path(ref)}/tag",
                                json={"alias": alias})
        return VersionInfo.model_validate(data).to_version()

    async def delete(self, ref: str) -> list[Version]:
        before = {v.ref: v for v in await self.list_versions()}
        data = await self._call("DELETE", f"/admin/versions/{self._ref_path(ref)}")
        gone = DeleteResponse.model_validate(data).deleted
        return [before[r] for r in gone if r in before]

    async def push(self, ref: str, repo_id: str) -> str:
        job = await self._run_job({"kind": "push", "ref": ref, "repo_id": repo_id}, None, None)
        return job.message

    async def pull(self, repo_id: str, name: str | None = None) -> Version:
        repo, _, revision = repo_id.partition("@")
        job = await self._run_job({"kind": "pull", "repo_id": repo, "revision": revision or None, "name": name},
                                  None, None)
        return (await self.lineage(str(job.version_ref)))[0]

    async def check_training(self, request: TrainRequest) -> list[str]:
        return []  # the server checks the recipe when the job is submitted, and refuses it with every problem

    async def train(
        self, request: TrainRequest, *, progress: ProgressCallback, cancel: CancelToken
    ) -> Version:
        body = {"kind": "train", "recipe": _recipe_body(request.recipe), "overrides": dict(request.overrides)}
        job = await self._run_job(body, progress, cancel)
        return (await self.lineage(str(job.version_ref)))[0]

    # ------------------------------------------------------------------ jobs

    async def _run_job(
        self, body: dict[str, Any], progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> JobInfo:
        """Submit a job, forward its events to ``progress`` until it ends, cancel it when
        ``cancel`` is set; the finished job.

        Raises:
            TrainingCancelled: it was cancelled or interrupted (a training job keeps its checkpoint).
            TrainingError: a training job failed.
            ServerError: another job failed, or the stream ended before the job did.
        """
        job = JobInfo.model_validate(await self._call("POST", "/admin/jobs", json=body))
        stopper = asyncio.create_task(self._cancel_when(cancel, job.id)) if cancel is not None else None
        final: JobInfo | None = None
        try:
            async with self._http.stream("GET", f"/admin/jobs/{job.id}/events",
                                         timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.is_error:
                    await response.aread()
                    raise _error_of(response, self.url)
                name = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: ") and name == "job":
                        final = JobInfo.model_validate_json(line.removeprefix("data: "))
                    elif line.startswith("data: ") and progress is not None:
                        progress(ProgressEvent.from_dict(json.loads(line.removeprefix("data: "))))
        except httpx.HTTPError as e:
            raise ServerError(f"lost the job {job.id} on {self.url!r} ({type(e).__name__}: {e}); "
                              "GET /admin/jobs shows how it ended") from e
        finally:
            if stopper is not None:
                stopper.cancel()
        if final is None:
            raise ServerError(f"the server at {self.url!r} ended the events of job {job.id} before the job ended")
        if final.state == "done":
            return final
        if final.state in ("cancelled", "interrupted"):
            raise TrainingCancelled(final.message)
        if final.kind == "train":
            raise TrainingError(final.message)
        raise ServerError(f"{final.kind} job {final.id} failed on {self.url}: {final.message}")

    async def _cancel_when(self, cancel: CancelToken, job_id: str) -> None:
        while not cancel.cancelled:
            await asyncio.sleep(0.2)
        await self._call("DELETE", f"/admin/jobs/{job_id}")

    # ------------------------------------------------------------------ generation

    async def stream(
        self, ref: str | None, messages: ChatMessages, sampling: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        import openai

        if self._base_name is None:
            await self.describe()
        model = ref if ref is not None else self._base_name
        extra: dict[str, Any] = {"top_k": sampling.top_k}
        if sampling.min_tokens:
            extra["min_tokens"] = sampling.min_tokens
        if sampling.ignore_eos:
            extra["ignore_eos"] = True
        finish: str | None = None
        try:
            chunks = await self._openai.chat.completions.create(
                model=str(model),
                messages=[dict(m) for m in messages],  # type: ignore[misc]
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                stop=list(sampling.stop) or None,
                extra_body=extra,
            )
            resolved = chunks.response.headers.get("x-adapter-version") if ref is not None else None
            async for chunk in chunks:
                usage = chunk.usage
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    text = choice.delta.content or ""
                    if text:
                        yield GenerationChunk(chunk.id, text, (), adapter_version=resolved)
                if usage is not None:
                    yield GenerationChunk(
                        chunk.id, "", (), finish_reason=_finish(finish),
                        usage=Usage(usage.prompt_tokens, usage.completion_tokens),
                        adapter_version=resolved,
                    )
                    return
        except openai.APIStatusError as e:
            raise library_error(e.status_code, e.body if isinstance(e.body, dict) else
                                {"message": e.message}, self.url) from e
        except openai.APIConnectionError as e:
            raise ServerError(
                f"lost the adapterhub server at {self.url!r} ({e.message}); is it still running?"
            ) from e
        except openai.APIError as e:  # an error event inside the stream
            raise library_error(None, {"error": e.body} if isinstance(e.body, dict) else
                                {"message": e.message}, self.url) from e
        yield GenerationChunk("", "", (), finish_reason=_finish(finish), adapter_version=None)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._openai.close()
        if self._preferences is not None:
            self._preferences.close()


class RemotePreferences:
    """Compare's votes on the server (``/v1/preferences``), so a DPO job there trains on them.

    Compare votes from the event loop and the offer reads the pairs there, so this client is a
    blocking one: a vote is one small request (milliseconds on a nearby server). The DPO recipe
    is written to ``<local home>/preferences`` and names the server's file by its path.
    """

    def __init__(self, url: str, authorization: str | None, *, local: Path) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=30.0,
                                  headers={"Authorization": authorization} if authorization else {})
        self._local = Path(local)
        self._path: Path | None = None
        self._total: int | None = None
        self._thumbs: int | None = None
        self._thumbs_readable = True  # False once the server refused to list them (a vote-only key)

    @property
    def path(self) -> Path:
        """The pairs' file on the server (as the server's training jobs read it)."""
        if self._path is None:
            self._path = Path(self._call("GET", "/v1/preferences").headers["X-Preference-Dataset"])
        return self._path

    @property
    def recipe_folder(self) -> Path:
        return self._local / "preferences"

    def vote(self, prompt: str, best: Answer, others: Sequence[Answer]) -> list[PreferencePair]:
        body = {"prompt": prompt, "chosen": {"model": best.ref, "content": best.text},
                "rejected": [{"model": o.ref, "content": o.text} for o in others]}
        check_vote(prompt, best, others)  # refused here as in-process, before a request
        stored = self._call("POST", "/v1/preferences", json=body).json()
        self._total = int(stored["total"])
        if stored.get("dataset"):
            self._path = Path(stored["dataset"])
        now = time.time()
        return [PreferencePair(prompt, Answer(stored["chosen_ref"], best.text), Answer(ref, other.text), now)
                for ref, other in zip(stored["rejected_refs"], others, strict=True)]

    def pairs(self) -> list[PreferencePair]:
        response = self._call("GET", "/v1/preferences")
        self._path = Path(response.headers["X-Preference-Dataset"])
        pairs = parse_pairs(response.text)
        self._total = len(pairs)
        return pairs

    def preferred_adapter(self) -> str | None:
        return preferred_adapter(self.pairs())

    def count(self) -> int | None:
        if self._total is None:
            try:
                self._total = len(self.pairs())
            except AdapterHubError:  # unreachable, or a key that may vote but not read the votes
                return None
        return self._total

    def thumb(self, prompt: str, answer: Answer, label: bool) -> dict[str, Any]:
        check_thumb(prompt, answer)  # refused here as in-process, before a request
        body = {"prompt": prompt, "completion": {"model": answer.ref, "content": answer.text}, "label": label}
        stored = self._call("POST", "/v1/preferences", json=body).json()
        total = stored.get("total")  # a server older than the field: counted on the next status
        self._thumbs = int(total) if total is not None else None
        return {"prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": answer.text}],
                "label": bool(stored["label"]), "ref": stored["ref"]}

    def thumbs_count(self) -> int | None:
        if self._thumbs is None and self._thumbs_readable:
            try:
                response = self._call("GET", "/v1/preferences", params={"kind": "thumbs"})
            except AdapterHubError:  # unreachable, or a key that may vote but not read the votes
                self._thumbs_readable = False  # not asked again on every status line
                return None
            self._thumbs = count_thumbs(response.text)
        return self._thumbs

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the adapterhub server at {self.url!r} ({type(e).__name__}: {e})") from e
        if response.is_error:
            raise _error_of(response, self.url)
        return response


def _error_of(response: httpx.Response, url: str) -> AdapterHubError:
    """The library error an error answer (read) stands for; a body that is not JSON (a proxy's
    HTML page) is kept as text."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return library_error(response.status_code, body, url)


def _recipe_body(recipe: Path | Mapping[str, Any]) -> dict[str, Any]:
    """A recipe as a job's body: a file's YAML with its dataset files named by absolute path (the
    server reads them from there, so a server on this machine, or one sharing the path, finds them)."""
    from adapterhub.training.loading import with_absolute_data_paths

    if not isinstance(recipe, Path):
        return dict(recipe)
    try:
        body = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"recipe {str(recipe)!r} cannot be read: {e}") from None
    if not isinstance(body, dict):
        raise ConfigError(f"recipe {str(recipe)!r} is not a mapping of fields")
    return with_absolute_data_paths(body, recipe.parent)


def _finish(reason: str | None) -> Any:
    return reason if reason in ("stop", "length", "cancelled", "error") else "stop"


def _evaluation(info: EvaluationInfo) -> Evaluation:
    """The library's record from its wire form (the ref carries name and number)."""
    ref = AdapterRef.parse(info.ref)
    return Evaluation(
        name=ref.name, number=ref.version or 0, task=info.task, metric=info.metric,
        value=info.value, stderr=info.stderr, samples=info.samples, harness=info.harness,
        created_at=info.created_at, setup=dict(info.setup),
    )


def _card_version(card: dict[str, Any]) -> Version:
    """A minimal version from a ``/v1/models`` card (what an inference key may see)."""
    name, _, number = str(card["version"]).partition("@")
    return Version(
        name=name, number=int(number or 0), created_at=float(card.get("created", 0)),
        method=str(card.get("method") or "?"), base_fingerprint="", template_hash="",
        files={}, aliases=tuple(card.get("aliases") or ()),
    )
