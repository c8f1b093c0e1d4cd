"""Materialising, fingerprinting and loading a base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterhub.core.hardware import detect_platform
from adapterhub.errors import BaseModelError, ConfigError
from adapterhub.models.base import (
    BaseInfo,
    fingerprint_folder,
    load_base,
    materialize_base,
    template_hash,
)


def test_materialise_records_fingerprints(tiny_base_dir: Path) -> None:
    info = BaseInfo.read(tiny_base_dir)
    record = json.loads((tiny_base_dir / "base.json").read_text())
    assert record["architecture"] == "LlamaForCausalLM"
    tokenizer_template = (
        json.loads((tiny_base_dir / "tokenizer_config.json").read_text()).get("chat_template")
        or (tiny_base_dir / "chat_template.jinja").read_text()
    )
    assert info.template_hash == template_hash(tokenizer_template)
    assert fingerprint_folder(tiny_base_dir, tokenizer_template) == info.fingerprint


def test_fingerprint_changes_with_weights_and_template(
    tiny_base_dir: Path, other_tiny_base_dir: Path
) -> None:
    a, b = BaseInfo.read(tiny_base_dir), BaseInfo.read(other_tiny_base_dir)
    assert a.fingerprint != b.fingerprint
    template = (tiny_base_dir / "chat_template.jinja").read_text()
    assert fingerprint_folder(tiny_base_dir, template + " ") != a.fingerprint


def test_materialise_is_idempotent_and_atomic(tiny_base_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = materialize_base(home, str(tiny_base_dir))
    again = materialize_base(home, str(tiny_base_dir))
    assert first == again
    assert not list((home / "bases").glob(".staging-*"))


def test_unknown_source_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="could not materialise base 'nobody/nothing'"):
        materialize_base(tmp_path, "nobody/nothing")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "nf4", "int8"])
def test_load_every_precision_frozen(tiny_base_dir: Path, precision: str) -> None:
    base = load_base(tiny_base_dir, precision, platform=detect_platform(nf4="kernel"))
    assert not any(p.requires_grad for p in base.model.parameters())
    ids = base.render_chat([{"role": "user", "content": "hello"}])
    with torch.inference_mode():
        logits = base.model(torch.tensor([ids])).logits
    assert torch.isfinite(logits.float()).all()
    if precision == "nf4":
        import bitsandbytes as bnb

        assert isinstance(base.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
        assert base.dequantized_bytes == 0


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_nf4_dequantized_at_load_computes_what_nf4_layers_compute(tiny_base_dir: Path, compute_dtype: str) -> None:
    """The dense copy holds bitsandbytes' own dequantization: the same logits, with plain Linear layers."""
    platform = detect_platform(compute_dtype=compute_dtype)
    # bitsandbytes' generic NF4 path (dequantize, then matmul); its packed AVX512-BF16 kernel,
    # which computes in bf16 whatever the compute dtype, is kept out by for_training
    kernel = load_base(tiny_base_dir, "nf4", platform=platform.with_overrides(nf4="kernel"), for_training=True)
    dense = load_base(tiny_base_dir, "nf4", platform=platform.with_overrides(nf4="dequantize"))
    q_proj = dense.model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == getattr(torch, compute_dtype)
    assert not q_proj.weight.requires_grad
    linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in dense.model.model.layers.modules()
                       if isinstance(m, torch.nn.Linear))
    assert dense.dequantized_bytes == linear_bytes > 0
    assert "dequantized once at load" in dense.summary() and "dequantized" not in kernel.summary()
    ids = torch.tensor([kernel.render_chat([{"role": "user", "content": "hello there"}])] * 3)  # several rows: not gemv
    with torch.inference_mode():
        expected = kernel.model(ids).logits.float()
        got = dense.model(ids).logits.float()
    # fp32: bit-for-bit the same products; bf16: rounding of the products may differ
    tolerance = 0.0 if compute_dtype == "float32" else 0.05
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)


def test_bad_precision_and_folder(tiny_base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        load_base(tiny_base_dir, "fp8")
    with pytest.raises(BaseModelError, match="not a materialised base"):
        load_base(tmp_path, "fp32")
