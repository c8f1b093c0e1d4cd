"""One place decides device, compute dtype and NF4 handling (adapterhub.core.hardware)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from adapterhub.core.hardware import detect_platform
from adapterhub.errors import ConfigError

_PROBE = "import json; from adapterhub.core.hardware import detect_platform; print(json.dumps(detect_platform().as_dict()))"


def _probe(**env: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_cpu_computes_in_bf16_only_where_bf16_is_native() -> None:
    platform = detect_platform(device="cpu")
    native = bool(torch.cpu._is_avx512_bf16_supported()) and torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert platform.native_bf16 == native
    assert platform.compute_dtype == ("bfloat16" if native else "float32")
    assert platform.fast_nf4_kernel == native  # bitsandbytes' packed CPU kernel needs AVX512-BF16
    assert platform.threads == torch.get_num_threads()


def test_a_cpu_capped_to_avx2_is_treated_as_one() -> None:
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA make torch emulate bf16: the platform follows torch."""
    capped = _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert capped["native_bf16"] is False and capped["compute_dtype"] == "float32"
    assert capped["fast_nf4_kernel"] is False and str(capped["isa"]).startswith("AVX2")
    assert "dequantize-then-matmul" in str(capped["bitsandbytes"])


def test_choices_from_arguments_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert detect_platform(compute_dtype="fp32").compute_dtype == "float32"
    assert detect_platform(compute_dtype="bf16").dtype_reason == "chosen by the user"
    monkeypatch.setenv("ADAPTERHUB_COMPUTE_DTYPE", "float32")
    monkeypatch.setenv("ADAPTERHUB_NF4", "dequantize")
    platform = detect_platform()
    assert (platform.compute_dtype, platform.nf4) == ("float32", "dequantize")
    assert platform.should_dequantize_nf4(10**15)  # asked for: even past the memory budget
    assert not platform.with_overrides(nf4="kernel").should_dequantize_nf4(1)
    auto = platform.with_overrides(nf4="auto")
    assert auto.should_dequantize_nf4(1) == (not auto.uses_fast_nf4_kernel)
    assert not auto.should_dequantize_nf4(10**15)  # a dense copy that cannot fit is never made
    assert "float32 compute" in platform.summary()
    assert not auto.uses_fast_nf4_kernel  # the packed CPU kernel computes in bf16: not for fp32
    assert detect_platform(device="cpu", compute_dtype="fp32").with_overrides(
        device="cpu").compute_dtype == "float32"


def test_bad_choices_name_the_field_and_the_value() -> None:
    with pytest.raises(ConfigError, match="compute_dtype: 'fp8' is not one of bfloat16, float16, float32"):
        detect_platform(compute_dtype="fp8")
    with pytest.raises(ConfigError, match="device 'tpu'"):
        detect_platform(device="tpu")
    with pytest.raises(ConfigError, match="nf4: 'sometimes'"):
        detect_platform(nf4="sometimes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="torch sees no CUDA device.*--device cpu"):
        detect_platform(device="cuda")
