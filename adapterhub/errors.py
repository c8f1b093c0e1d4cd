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
    │   └── UnsafeAdapterError                  pickles, NaN weights, lying headers, too big
    ├── BaseModelError(OSError)              the base cannot be materialised or loaded
    ├── HubError(OSError)                    raised ``from`` the huggingface_hub error
    │   ├── HubAuthError(PermissionError)
    │   └── HubNotFoundError(LookupError)
    ├── ServerError(OSError)                 an adapterhub server (HTTP client side) unreachable,
    │                                        key refused, or an answer of no library type
    ├── TrainingError(RuntimeError)
    │   └── TrainingCancelled
    ├── EngineError(RuntimeError)
    │   └── PromptTooLongError(ValueError)
    └── CapacityError                        no free slot, queue full

    AdapterHubWarning(UserWarning)
    └── BaseMismatchWarning                  pulled adapter names another base

A message says what failed, shows the offending value with ``!r`` and says how to fix it.
The server maps these *types* to HTTP statuses in one table; it never reads message text.
"""

from __future__ import annotations

from collections.abc import Iterable


class AdapterHubError(Exception):
    """Root of every error adapterhub raises on purpose."""


class ConfigError(AdapterHubError, ValueError):
    """User-written configuration is invalid.

    Carries every problem found, so a user fixes them all in one go.
    """

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


class AdapterNotFoundError(RegistryError, LookupError):
    """A ref names no adapter, version or alias."""

    def __init__(self, message: str, *, ref: str = "", close_matches: Iterable[str] = ()) -> None:
        self.ref = ref
        self.close_matches = list(close_matches)
        if self.close_matches:
            message += f" Did you mean: {', '.join(self.close_matches)}?"
        super().__init__(message)


class VersionExistsError(RegistryError):
    """A version with this name and number is already registered; versions are immutable."""


class IncompatibleAdapterError(RegistryError):
    """An adapter was trained for another base, chat template or shape."""


class CorruptBlobError(RegistryError):
    """A stored file no longer matches the checksum recorded at registration."""


class GateError(RegistryError):
    """A gated alias refused to move: a rule failed, or its evaluations are missing.

    ``checks`` holds every rule's outcome (:class:`adapterhub.registry.gates.GateCheck`).
    """

    def __init__(self, message: str, *, checks: Iterable[object] = ()) -> None:
        super().__init__(message)
        self.checks = list(checks)


class UnsafeAdapterError(RegistryError):
    """Adapter files are refused: pickles, non-finite weights, lying headers, over the limits."""


class BaseModelError(AdapterHubError, OSError):
    """The base model cannot be materialised or loaded."""


class HubError(AdapterHubError, OSError):
    """Talking to the Hugging Face Hub failed; raised ``from`` the huggingface_hub error."""


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


class TrainingCancelled(TrainingError):
    """A training run was cancelled; nothing was registered."""


class EngineError(AdapterHubError, RuntimeError):
    """The inference engine cannot serve a request."""


class PromptTooLongError(EngineError, ValueError):
    """The prompt plus ``max_tokens`` does not fit the base's context."""


class CapacityError(AdapterHubError):
    """No free adapter slot or the request queue is full; try again later."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class AdapterHubWarning(UserWarning):
    """Root of adapterhub's warnings."""


class BaseMismatchWarning(AdapterHubWarning):
    """An adapter names a different base model than the one loaded, but its shapes fit."""
