"""Every exception and warning adapterhub raises, and nothing else.

The tree::

    AdapterHubError
    ├── ConfigError(ValueError)              bad user input; lists every problem at once
    ├── RegistryError
    │   ├── AdapterNotFoundError(LookupError)   unknown name, version or alias
    │   ├── VersionExistsError                  versions are immutable
    │   ├── IncompatibleAdapterError            wrong base fingerprint / template / shapes
    │   ├── CorruptBlobError                    checksum mismatch, truncated file
    │   ├── GateError                           a gated alias refused a version, with the numbers
    │   ├── UnsafeAdapterError                  pickles, NaN weights, lying headers, too big
    │   └── RegistrySchemaError                 the database's schema is newer than this code
    ├── BaseModelError(OSError)              the base cannot be materialised or loaded
    ├── HubError(OSError)                    raised ``from`` the huggingface_hub error
    │   ├── HubAuthError(PermissionError)
    │   └── HubNotFoundError(LookupError)
    ├── ServerError(OSError)                 an adapterhub server (HTTP client side) unreachable,
    │                                        key refused, or an answer of no library type
    ├── TrainingError(RuntimeError)
    │   └── TrainingCancelled
    ├── EngineError(RuntimeError)
    │   ├── PromptTooLongError(ValueError)
    │   └── ReplicaError(OSError)            no healthy replica, or a replica failed mid-request
    ├── CapacityError                        no free slot, queue full
    └── JobNotFoundError(LookupError)        no job with this id in the hub's job queue

    AdapterHubWarning(UserWarning)
    └── BaseMismatchWarning                  pulled adapter names another base

A message says what failed, shows the offending value with ``!r`` and says how to fix it.

Each class states how it travels over HTTP, in one place, as three class attributes: ``code``
(the wire code a client maps back with :func:`error_class`), ``http_status`` and ``openai_type``
(OpenAI's error ``type``). A class that states none answers as its parent (``HubAuthError`` is
``hub_unavailable``); one that states a code states all three, and no two classes share a code.
The server answers with them and never reads message text; the TUI's HTTP backend turns a code
back into the class.

pydantic's problems (settings, keys files, request bodies, manifests, forms) become lines through
one formatter, :func:`describe_validation_error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar


class AdapterHubError(Exception):
    """Root of every error adapterhub raises on purpose; answered as an internal error."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"


class ConfigError(AdapterHubError, ValueError):
    """User-written configuration is invalid.

    Carries every problem found, so a user fixes them all in one go.
    """

    code = "invalid_value"
    http_status = 400
    openai_type = "invalid_request_error"

    def __init__(self, problems: str | Iterable[str], *, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{head}{len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class RegistryError(AdapterHubError):
    """The adapter registry cannot do what was asked."""

    code = "registry_conflict"
    http_status = 409
    openai_type = "invalid_request_error"


class AdapterNotFoundError(RegistryError, LookupError):
    """A ref names no adapter, version or alias."""

    code = "model_not_found"
    http_status = 404
    openai_type = "not_found_error"

    def __init__(self, message: str, *, ref: str = "", close_matches: Iterable[str] = ()) -> None:
        self.ref = ref
        self.close_matches = list(close_matches)
        if self.close_matches:
            message += f" Did you mean: {', '.join(self.close_matches)}?"
        super().__init__(message)


class VersionExistsError(RegistryError):
    """A version with this name and number is already registered; versions are immutable."""

    code = "version_exists"
    http_status = 409
    openai_type = "invalid_request_error"


class IncompatibleAdapterError(RegistryError):
    """An adapter was trained for another base, chat template or shape."""

    code = "incompatible_adapter"
    http_status = 409
    openai_type = "invalid_request_error"


class CorruptBlobError(RegistryError):
    """A stored file no longer matches the checksum recorded at registration."""

    code = "corrupt_adapter"
    http_status = 500
    openai_type = "server_error"


class GateError(RegistryError):
    """A gated alias refused to move: a rule failed, or its evaluations are missing.

    ``checks`` holds every rule's outcome (:class:`adapterhub.registry.gates.GateCheck`).
    """

    code = "gate_failed"
    http_status = 409
    openai_type = "invalid_request_error"

    def __init__(self, message: str, *, checks: Iterable[object] = ()) -> None:
        super().__init__(message)
        self.checks = list(checks)


class UnsafeAdapterError(RegistryError):
    """Adapter files are refused: pickles, non-finite weights, lying headers, over the limits."""

    code = "unsafe_adapter"
    http_status = 422
    openai_type = "invalid_request_error"


class RegistrySchemaError(RegistryError):
    """The registry database has a schema revision this code does not know: a newer adapterhub
    wrote it. Older code refuses it rather than write into a schema it does not understand."""

    code = "registry_schema_unknown"
    http_status = 503
    openai_type = "service_unavailable"

    def __init__(self, message: str, *, revision: str = "") -> None:
        self.revision = revision
        super().__init__(message)


class BaseModelError(AdapterHubError, OSError):
    """The base model cannot be materialised or loaded."""

    code = "base_unavailable"
    http_status = 503
    openai_type = "service_unavailable"


class HubError(AdapterHubError, OSError):
    """Talking to the Hugging Face Hub failed; raised ``from`` the huggingface_hub error."""

    code = "hub_unavailable"
    http_status = 502
    openai_type = "server_error"


class HubAuthError(HubError, PermissionError):
    """The Hub refused the token (401/403)."""


class HubNotFoundError(HubError, LookupError):
    """The Hub has no such repository, revision or file."""


class ServerError(AdapterHubError, OSError):
    """Talking to an adapterhub server over HTTP failed: it cannot be reached, it refused the
    API key, or it answered an error that carries no library error type. The TUI's HTTP backend
    raises it ``from`` the transport's error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TrainingError(AdapterHubError, RuntimeError):
    """A training run failed; nothing was registered."""

    code = "training_failed"
    http_status = 500
    openai_type = "server_error"


class TrainingCancelled(TrainingError):
    """A training run was cancelled; nothing was registered."""


class EngineError(AdapterHubError, RuntimeError):
    """The inference engine cannot serve a request."""

    code = "engine_unavailable"
    http_status = 503
    openai_type = "service_unavailable"


class PromptTooLongError(EngineError, ValueError):
    """The prompt plus ``max_tokens`` does not fit the base's context."""

    code = "context_length_exceeded"
    http_status = 400
    openai_type = "invalid_request_error"


class ReplicaError(EngineError, OSError):
    """A router in front of replicas (``adapterhub serve --engine vllm``) has no healthy replica
    for a request, or the replicas it tried failed before answering."""

    code = "replica_unavailable"
    http_status = 503
    openai_type = "service_unavailable"


class CapacityError(AdapterHubError):
    """No free adapter slot or the request queue is full; try again later."""

    code = "capacity_exceeded"
    http_status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class JobNotFoundError(AdapterHubError, LookupError):
    """No job with this id in the hub home's job queue (:mod:`adapterhub.jobs`)."""

    code = "job_not_found"
    http_status = 404
    openai_type = "not_found_error"


def error_class(code: str) -> type[AdapterHubError] | None:
    """The class that declares wire ``code``, so a client raises what the server raised.

    None for the root's ``internal_error`` (no library type to raise) and for a code this
    version does not know.
    """
    for cls in _subclasses(AdapterHubError):
        if cls.__dict__.get("code") == code:
            return cls
    return None


def _subclasses(cls: type[AdapterHubError]) -> Iterator[type[AdapterHubError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


class AdapterHubWarning(UserWarning):
    """Root of adapterhub's warnings."""


class BaseMismatchWarning(AdapterHubWarning):
    """An adapter names a different base model than the one loaded, but its shapes fit."""


def describe_validation_error(problems: Iterable[Mapping[str, Any]], *, root: str) -> list[tuple[str, str]]:
    """``(field path, "path: message (got value)")`` for each of pydantic's problems (``errors()``
    of a ``ValidationError`` or of a request), the path without ``root``, or ``root`` itself when
    empty. The value is left out when it is no help (missing, null, a whole object) or may be a
    secret (any path naming a key); pydantic's ``Value error, `` prefix goes."""
    described = []
    for item in problems:
        loc = [str(p) for p in item.get("loc", ()) if p != root]
        if item.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # e.g. a message's role
            loc.append(str(item.get("ctx", {}).get("discriminator", "")).strip("'"))
        where = ".".join(loc) or root
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        got = item.get("input")
        hidden = item.get("type") == "missing" or got is None or isinstance(got, dict) or "key" in where
        shown = "" if hidden else f" (got {short_repr(got)})"
        described.append((where, f"{where}: {message}{shown}"))
    return described


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 80 characters, for messages that show what was sent."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
