"""Adapter input safety: pickles, lying headers, NaN/Inf, wrong shapes, over the limits."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from adapterhub.errors import IncompatibleAdapterError, UnsafeAdapterError
from adapterhub.models.adapters import (
    LoraLimits,
    check_fits,
    load_lora_bytes,
    load_lora_folder,
)
from adapterhub.models.base import load_skeleton

KEY = "base_model.model.model.layers.0.self_attn.q_proj"
CONFIG = json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}).encode()


def _weights(a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> bytes:
    return save(
        {
            f"{KEY}.lora_A.weight": a if a is not None else torch.randn(4, 64),
            f"{KEY}.lora_B.weight": b if b is not None else torch.randn(64, 4),
        }
    )


def test_valid_adapter_loads_and_fits(tiny_base_dir: Path) -> None:
    adapter = load_lora_bytes(CONFIG, _weights())
    assert adapter.r == 4 and adapter.scaling == 2.0
    assert list(adapter.pairs()) == ["model.layers.0.self_attn.q_proj"]
    check_fits(adapter, load_skeleton(tiny_base_dir))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (lambda: _weights(a=torch.full((4, 64), float("nan"))), "NaN or Inf"),
        (lambda: _weights(b=torch.full((64, 4), float("inf"))), "NaN or Inf"),
        (lambda: _weights(a=torch.randn(3, 64)), "expected A=[r, in]"),
        (lambda: _weights(a=torch.randint(0, 3, (4, 64))), "expected floats"),
        (lambda: b"\x00" * 3, "not a valid safetensors file"),
        (lambda: _lying_header(), "not a valid safetensors file"),
        (lambda: save({f"{KEY}.lora_A.weight": torch.randn(4, 64)}), "has no matching"),
        (lambda: save({"score.weight": torch.randn(1, 64)}), "holds no lora_A/lora_B"),
    ],
)
def test_bad_weights_are_refused(weights, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsafeAdapterError, match=message.replace("[", r"\[")):
        load_lora_bytes(CONFIG, weights())


def test_one_bad_value_among_many_is_found_and_named() -> None:
    """Finiteness is checked over the file's whole data section at once: one NaN in the last
    tensor of a bf16 file, or values whose sum overflows (finite, so accepted), are told apart."""
    a = torch.randn(4, 64, dtype=torch.bfloat16)
    b = torch.randn(64, 4, dtype=torch.bfloat16)
    b[63, 3] = float("nan")
    with pytest.raises(UnsafeAdapterError, match=r"lora_B.weight' holds NaN or Inf"):
        load_lora_bytes(CONFIG, _weights(a, b))
    huge = torch.full((4, 64), 3e38)  # finite, but its sum is infinite
    assert load_lora_bytes(CONFIG, _weights(a=huge)).r == 4
    mixed = _weights(a=torch.randn(4, 64, dtype=torch.float16), b=torch.full((64, 4), float("-inf")))
    with pytest.raises(UnsafeAdapterError, match=r"lora_B.weight' holds NaN or Inf"):
        load_lora_bytes(CONFIG, mixed)


def _lying_header() -> bytes:
    """A header that claims more bytes than the file holds."""
    header = json.dumps(
        {f"{KEY}.lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1 << 30]}}
    )
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + b"\x00" * 16


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"peft_type": "IA3", "r": 4}).encode(), "peft_type 'IA3' is not supported"),
        (json.dumps({"r": 0}).encode(), "r=0"),
        (json.dumps({"r": 999}).encode(), "over the limit of 256"),
    ],
)
def test_bad_configs_are_refused(config: bytes, message: str) -> None:
    with pytest.raises(UnsafeAdapterError, match=message):
        load_lora_bytes(config, _weights())


def test_size_limit_names_the_limit() -> None:
    with pytest.raises(UnsafeAdapterError, match="over the limit of 100"):
        load_lora_bytes(CONFIG, _weights(), limits=LoraLimits(max_weights_bytes=100))


def test_pickles_are_refused_in_folders(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_bytes(CONFIG)
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeAdapterError, match="pickled weights"):
        load_lora_folder(tmp_path)


def test_shape_mismatch_lists_modules(tiny_base_dir: Path) -> None:
    adapter = load_lora_bytes(CONFIG, _weights(a=torch.randn(4, 32), b=torch.randn(64, 4)))
    with pytest.raises(
        IncompatibleAdapterError, match="is 64->64 in the base but the adapter is 32->64"
    ):
        check_fits(adapter, load_skeleton(tiny_base_dir))
