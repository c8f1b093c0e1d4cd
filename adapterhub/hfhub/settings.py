"""Where the Hub is, how to authenticate, and what its errors mean to us.

Design choices:

* **Tokens and endpoint** come from the usual places: an explicit argument, else ``HF_TOKEN`` or
  the ``hf auth login`` token (huggingface_hub reads them per request); an explicit endpoint, else
  ``HF_ENDPOINT`` read at call time, else huggingface.co.
* **Errors translated in one place.** :func:`hub_errors` turns huggingface_hub and transport
  errors into :class:`HubAuthError`, :class:`HubNotFoundError` or :class:`HubError`, raised ``from``
  the original; push and pull make their Hub calls inside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapterhub.errors import ConfigError, HubAuthError, HubError, HubNotFoundError

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubSettings(BaseModel):
    """Where the Hub is and how to authenticate; from arguments, else the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(default=DEFAULT_ENDPOINT, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """Base URL of the Hub (``--endpoint``, else ``HF_ENDPOINT``, else huggingface.co)."""

    token: str | None = Field(default=None, min_length=1, max_length=4096, repr=False)
    """Access token; None lets huggingface_hub use ``HF_TOKEN`` or the ``hf auth login`` token."""

    @classmethod
    def resolve(cls, endpoint: str | None = None, token: str | None = None) -> HubSettings:
        """Build settings from explicit values, falling back to ``HF_ENDPOINT``.

        Raises:
            ConfigError: the endpoint is not an http(s) URL.
        """
        chosen = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        try:
            return cls(endpoint=chosen, token=token or None)
        except ValidationError as e:
            raise ConfigError(
                f"Hub endpoint {chosen!r} is not an http(s) URL; pass --endpoint https://host "
                f"or set HF_ENDPOINT ({e.error_count()} problem(s))"
            ) from None


@contextmanager
def hub_errors(what: str, *, repo_id: str = "", revision: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub and transport errors into ours, raised ``from`` the original."""
    import httpx2
    from huggingface_hub import errors as hf

    where = f" {repo_id!r}" if repo_id else ""
    token_hint = "set HF_TOKEN or run `hf auth login` with a token that may access it"
    try:
        yield
    except hf.GatedRepoError as e:
        raise HubAuthError(
            f"{what}: repo{where} is gated; request access on the Hub, then {token_hint}"
        ) from e
    except hf.RevisionNotFoundError as e:
        raise HubNotFoundError(
            f"{what}: revision {revision!r} does not exist in{where}; use a branch, a tag such as "
            "'v1', or a full commit sha"
        ) from e
    except hf.RepositoryNotFoundError as e:
        raise HubNotFoundError(
            f"{what}: repo{where} does not exist or is private; check the id, or {token_hint}"
        ) from e
    except hf.RemoteEntryNotFoundError as e:
        raise HubNotFoundError(f"{what}: a file is missing in{where} at {revision!r}: {e}") from e
    except hf.LocalTokenNotFoundError as e:
        raise HubAuthError(f"{what}: no Hub token found; {token_hint}") from e
    except hf.OfflineModeIsEnabled as e:
        raise HubError(f"{what}: HF_HUB_OFFLINE is set; unset it to talk to the Hub") from e
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise HubAuthError(
                f"{what}: the Hub refused the token ({status}) for{where or ' this request'}; "
                f"{token_hint} (write access is needed to push)"
            ) from e
        raise HubError(f"{what}: the Hub answered {status} for{where}: {_first_line(e)}") from e
    except hf.HFValidationError as e:
        raise ConfigError(
            f"repo id {repo_id!r} is not valid: {e}; write it as namespace/name"
        ) from e
    except httpx2.TransportError as e:
        raise HubError(
            f"{what}: cannot reach the Hub ({type(e).__name__}: {e}); check the network, "
            "HF_ENDPOINT or --endpoint"
        ) from e


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
