"""Materialising, fingerprinting and loading a base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterhub.base import BaseInfo, fingerprint_folder, load_base, materialize_base, template_hash
from adapterhub.errors import BaseModelError, ConfigError


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
    base = load_base(tiny_base_dir, precision)
    assert not any(p.requires_grad for p in base.model.parameters())
    ids = base.render_chat([{"role": "user", "content": "hello"}])
    with torch.inference_mode():
        logits = base.model(torch.tensor([ids])).logits
    assert torch.isfinite(logits.float()).all()
    if precision == "nf4":
        import bitsandbytes as bnb

        assert isinstance(base.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)


def test_bad_precision_and_folder(tiny_base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        load_base(tiny_base_dir, "fp8")
    with pytest.raises(BaseModelError, match="not a materialised base"):
        load_base(tmp_path, "fp32")
