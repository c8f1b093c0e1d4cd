"""Where and how to run: device, compute dtype, how NF4 weights execute, and threads.

One :class:`Platform` answers these questions for the whole process, the way vLLM's
``platforms/`` objects do; loading the base, training, the engine and the benches ask it instead
of deciding for themselves.

Design choices:

* **Hardware decides the compute dtype.** CUDA with compute capability >= 8.0 computes in bf16,
  older GPUs in fp16. A CPU computes in bf16 only where bf16 is native (AVX512-BF16 or AMX);
  elsewhere torch emulates bf16, an order of magnitude slower than fp32 (``bench/README.md``
  has the figures), so the CPU computes in fp32. Storage precision (NF4 by default, as in
  QLoRA) is a separate choice and stays what the user asked for.
* **What torch will really dispatch, not only what CPUID says.** ``ATEN_CPU_CAPABILITY`` and
  ``ONEDNN_MAX_CPU_ISA`` cap the kernels torch and oneDNN use; ``torch.cpu`` reports the CPU's
  flags regardless, so a capped AVX512-BF16 machine is treated as the AVX2 machine it then
  behaves as.
* **NF4 without a fast kernel.** bitsandbytes has fast 4-bit kernels on CUDA and on CPUs with
  AVX512-BF16; elsewhere each forward dequantizes every weight again. There the frozen NF4
  weights may be dequantized once, at load, into the compute dtype
  (:meth:`Platform.should_dequantize_nf4`): exactly the values an NF4 forward multiplies by, at
  dense-matmul speed, for as long as the dense copy fits the memory budget.
* **Overridable, and said.** ``device``, ``compute_dtype`` and ``nf4`` come from the caller (CLI
  options, recipe fields, server settings) or ``ADAPTERHUB_DEVICE`` /
  ``ADAPTERHUB_COMPUTE_DTYPE`` / ``ADAPTERHUB_NF4``; :meth:`Platform.summary` is the one line
  every command that loads the base prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from adapterhub.errors import ConfigError

if TYPE_CHECKING:
    import torch

ComputeDtype = Literal["bfloat16", "float16", "float32"]
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)
Nf4Mode = Literal["auto", "kernel", "dequantize"]
NF4_MODES: tuple[str, ...] = get_args(Nf4Mode)

DEVICE_ENV = "ADAPTERHUB_DEVICE"
COMPUTE_DTYPE_ENV = "ADAPTERHUB_COMPUTE_DTYPE"
NF4_ENV = "ADAPTERHUB_NF4"

# A dense copy of the NF4 weights may take at most this share of the memory available at load.
DEQUANTIZE_MEMORY_SHARE = 0.5

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include native bf16 dot products.
_ONEDNN_BF16_ISAS = {
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "ALL",
    "DEFAULT",
}
_USER_CHOICE = "chosen by the user"  # the dtype_reason of a dtype the user picked
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


@dataclass(frozen=True)
class Platform:
    """How this process runs models: one answer, asked by everything that loads a base."""

    device: str
    """``cpu`` or ``cuda:N``."""
    name: str
    """The processor or GPU, as the system names it."""
    isa: str
    """What the kernels can use: ``AVX512_BF16+AMX``, ``AVX512``, ``AVX2``, ``sm_90``…"""
    native_bf16: bool
    """bf16 matmuls run in hardware (not emulated)."""
    compute_dtype: ComputeDtype
    """Dtype activations and dense weights compute in."""
    dtype_reason: str
    """Why ``compute_dtype`` was chosen, in a few words."""
    fast_nf4_kernel: bool
    """bitsandbytes has a fast 4-bit kernel here (CUDA, or a CPU with AVX512-BF16)."""
    nf4: Nf4Mode
    """``kernel`` keeps NF4 layers; ``dequantize`` makes dense copies at load; ``auto`` picks."""
    threads: int
    """torch intra-op threads (CPU)."""

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.compute_dtype)  # type: ignore[no-any-return]

    @property
    def uses_fast_nf4_kernel(self) -> bool:
        """NF4 layers would run on a fast kernel in this compute dtype (the packed CPU kernel
        computes in bf16 whatever it is given, so it only counts when bf16 is the compute dtype)."""
        return self.fast_nf4_kernel and (self.is_cuda or self.compute_dtype == "bfloat16")

    def should_dequantize_nf4(self, dense_bytes: int) -> bool:
        """Whether NF4 weights that take ``dense_bytes`` once dequantized should be dequantized at load."""
        if self.nf4 != "auto":
            return self.nf4 == "dequantize"
        return not self.uses_fast_nf4_kernel and dense_bytes <= DEQUANTIZE_MEMORY_SHARE * available_memory(self.device)

    def with_overrides(self, *, device: str | None = None, compute_dtype: str | None = None,
                       nf4: str | None = None) -> Platform:
        """This platform with the given fields chosen by the user (``None`` keeps the current ones,
        including a compute dtype the user chose before; ``cuda`` keeps a ``cuda:N`` already chosen)."""
        same_device = device is None or device == self.device or (device == "cuda" and self.is_cuda)
        if not same_device:
            kept = self.compute_dtype if self.dtype_reason == _USER_CHOICE else None
            return detect_platform(device=device, compute_dtype=compute_dtype or kept, nf4=nf4 or self.nf4)
        changes: dict[str, Any] = {}
        if compute_dtype is not None:
            changes["compute_dtype"] = _compute_dtype(compute_dtype, "compute_dtype")
            changes["dtype_reason"] = _USER_CHOICE
        if nf4 is not None:
            changes["nf4"] = _nf4_mode(nf4, "nf4")
        return replace(self, **changes)

    def summary(self) -> str:
        """The device in a few words: ``cpu (Intel Xeon, AVX2, no native bf16), float32 compute``."""
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        threads = f", {self.threads} threads" if not self.is_cuda else ""
        return (
            f"{self.device} ({self.name}, {self.isa}, {bf16}{threads}): "
            f"{self.compute_dtype} compute ({self.dtype_reason})"
        )

    def as_dict(self) -> dict[str, Any]:
        """Every field, for ``adapterhub doctor``, ``/health`` and bench headers."""
        return {
            "device": self.device,
            "name": self.name,
            "isa": self.isa,
            "native_bf16": self.native_bf16,
            "compute_dtype": self.compute_dtype,
            "dtype_reason": self.dtype_reason,
            "fast_nf4_kernel": self.fast_nf4_kernel,
            "nf4": self.nf4,
            "threads": self.threads,
            "bitsandbytes": bitsandbytes_backend(self),
        }


def detect_platform(
    *, device: str | None = None, compute_dtype: str | None = None, nf4: str | None = None
) -> Platform:
    """What this machine has, with the user's choices (arguments, else environment) on top.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``; CUDA when available otherwise.
        compute_dtype: ``bfloat16``, ``float16`` or ``float32`` (``bf16``/``fp16``/``fp32`` too);
            the hardware's best otherwise.
        nf4: ``auto``, ``kernel`` or ``dequantize`` (see :class:`Platform`).

    Raises:
        ConfigError: a value is not one of the choices, or CUDA was asked for and is absent.
    """
    import torch

    device = device or os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    compute_dtype = compute_dtype or os.environ.get(COMPUTE_DTYPE_ENV) or None
    mode = nf4 or os.environ.get(NF4_ENV) or "auto"
    if device == "cuda" or device.startswith("cuda:"):
        platform = _cuda_platform(device)
    elif device == "cpu":
        platform = _cpu_platform()
    else:
        raise ConfigError(f"device {device!r} is not 'cpu', 'cuda' or 'cuda:N'; pick one of those")
    return platform.with_overrides(compute_dtype=compute_dtype, nf4=mode)


def _cpu_platform() -> Platform:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()  # what ATen dispatches to (after any cap)
    name, flags = _cpuinfo()
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    cpu_bf16 = bool(torch.cpu._is_avx512_bf16_supported()) or "amx_bf16" in flags
    native_bf16 = cpu_bf16 and capability == "AVX512" and onednn_cap in _ONEDNN_BF16_ISAS
    if native_bf16:
        isa = "AVX512_BF16+AMX" if "amx_bf16" in flags else "AVX512_BF16"
        dtype, reason = "bfloat16", "the CPU has native bf16"
    else:
        isa = capability
        dtype, reason = "float32", "bf16 would be emulated on this CPU"
        if cpu_bf16:
            isa += " (capped)"
    return Platform(
        device="cpu",
        name=name,
        isa=isa,
        native_bf16=native_bf16,
        compute_dtype=dtype,  # type: ignore[arg-type]
        dtype_reason=reason,
        # bitsandbytes' packed NF4 kernel needs AVX512-BF16 (and torch's AVX512 dispatch)
        fast_nf4_kernel=native_bf16,
        nf4="auto",
        threads=torch.get_num_threads(),
    )


def _cuda_platform(device: str) -> Platform:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}: torch sees no CUDA device (torch {torch.__version__}); "
            "install a CUDA build of torch or use --device cpu"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    native_bf16 = major >= 8
    return Platform(
        device=f"cuda:{index}",
        name=torch.cuda.get_device_name(index),
        isa=f"sm_{major}{minor}",
        native_bf16=native_bf16,
        compute_dtype="bfloat16" if native_bf16 else "float16",
        dtype_reason=f"compute capability {major}.{minor}",
        fast_nf4_kernel=True,
        nf4="auto",
        threads=torch.get_num_threads(),
    )


def available_memory(device: str) -> int:
    """Bytes free for new weights on ``device`` (free GPU memory, or the OS's MemAvailable)."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def bitsandbytes_backend(platform: Platform) -> str:
    """Which bitsandbytes path NF4 layers take here, in words."""
    try:
        import bitsandbytes
    except ImportError:
        return "not installed"
    version = getattr(bitsandbytes, "__version__", "?")
    if platform.is_cuda:
        return f"{version}, CUDA kernels"
    if platform.uses_fast_nf4_kernel:
        return f"{version}, CPU packed 4-bit kernel (AVX512-BF16)"
    return f"{version}, CPU dequantize-then-matmul (no fast 4-bit kernel for {platform.isa})"


def _compute_dtype(value: str, field: str) -> ComputeDtype:
    name = _ALIASES.get(value.lower(), value.lower())
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(COMPUTE_DTYPES)} (or bf16, fp16, fp32)")
    return name  # type: ignore[return-value]


def _nf4_mode(value: str, field: str) -> Nf4Mode:
    if value not in NF4_MODES:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(NF4_MODES)}")
    return value  # type: ignore[return-value]


def _cpuinfo() -> tuple[str, set[str]]:
    """The processor's name and flags, from one read of ``/proc/cpuinfo``."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = " ".join(line.split(":", 1)[1].replace("(R)", "").replace("(TM)", "").split())
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not name:
        import platform as stdlib_platform

        name = stdlib_platform.processor() or stdlib_platform.machine() or "cpu"
    return name, flags
