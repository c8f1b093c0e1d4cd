"""Adapter input safety where the harness found gaps: refs and names, and Hub pulls.

``tests/test_adapters.py`` covers the weights themselves (pickles, NaN/Inf, lying headers,
shapes, limits); the server's load routes are covered in ``tests/server/test_server_hardening.py``.
Here: names and refs that only *look* valid (a trailing newline, digits that are not ASCII, a
version past SQLite's integers), and a Hub pull that must refuse path-, URL- and shell-like names
and pickles listed by a manifest before anything is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from adapterhub import Hub
from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import AdapterNotFoundError, ConfigError, UnsafeAdapterError
from adapterhub.hfhub import MANIFEST_FILE
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry

LOOKS_FINE = ["pirate\n", "pirate\r", "pirate\t", "pirate\u00a0", "pira\u0074e\u200b", "pirate\x00"]


@pytest.mark.parametrize("name", LOOKS_FINE)
def test_names_with_invisible_tails_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        validate_name(name)


@pytest.mark.parametrize("ref", ["p@\u00b2", "p@\u0663", "p@\uff11", "p@99999999999999999999999",
                                 "p@2147483648", "p@-1", "p@+1", "p@ 1"])
def test_versions_are_small_ascii_numbers(ref: str) -> None:
    with pytest.raises(ConfigError, match="version"):
        AdapterRef.parse(ref)


def test_resolving_odd_refs_is_a_config_error_or_not_found(registry: Registry) -> None:
    assert AdapterRef.parse("p@2147483647").version == 2**31 - 1
    with pytest.raises(AdapterNotFoundError):
        registry.resolve("p@2147483647")
    for ref in ("p@\u00b2", "p@99999999999999999999999"):
        with pytest.raises(ConfigError):
            registry.resolve(ref)


def test_register_refuses_a_name_with_a_newline(registry: Registry, lora_dir: Path) -> None:
    files = {CONFIG_FILE: lora_dir / CONFIG_FILE, WEIGHTS_FILE: lora_dir / WEIGHTS_FILE}
    with pytest.raises(ConfigError, match="not allowed"):
        registry.register("pirate\n", files, base_fingerprint="f", template_hash="t", method="sft")
    assert registry.list_versions() == []


# ---------------------------------------------------------------------------- Hub pull


@pytest.fixture
def carol(tmp_path: Path, tiny_base_dir: Path) -> Hub:
    hub = Hub(tmp_path / "carol")
    hub.init(str(tiny_base_dir), precision="fp32")
    return hub


@pytest.mark.parametrize("name", ["../evil", "a/b", "http://x.example/y", "a;rm -rf ~", "$(id)", "pirate\n"])
def test_pull_refuses_path_url_and_shell_names_before_downloading(hub, carol: Hub, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="adapter name"):
        carol.pull("alice/does-not-matter", name=name)  # refused before the Hub is asked
    assert carol.list() == []


@pytest.mark.parametrize("repo_id", ["https://evil.example/alice/x", "../../etc/passwd", "alice/x;rm -rf ~",
                                     "alice/$(id)", "alice/x\n"])
def test_pull_refuses_repo_ids_that_are_urls_paths_or_shell(hub, carol: Hub, repo_id: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        carol.pull(repo_id, name="fine")
    assert carol.list() == []


def test_pull_refuses_pickles_that_a_manifest_lists(hub, carol: Hub, lora_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A crafted manifest naming a pickle next to the PEFT pair: refused, nothing registered."""
    import hashlib

    info = carol.base_info
    files = {CONFIG_FILE: (lora_dir / CONFIG_FILE).read_bytes(),
             WEIGHTS_FILE: (lora_dir / WEIGHTS_FILE).read_bytes(), "extra.pt": b"\x80\x04K\x01."}
    manifest = {
        "format": "adapterhub.manifest/1", "name": "sneaky", "number": 1, "method": "sft",
        "created_at": 0.0, "files": {f: hashlib.sha256(b).hexdigest() for f, b in files.items()},
        "base": {"name": info.name, "fingerprint": info.fingerprint, "template_hash": info.template_hash},
    }
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo("alice/sneaky")
    for filename, data in {**files, MANIFEST_FILE: json.dumps(manifest).encode()}.items():
        api.upload_file(path_or_fileobj=data, path_in_repo=filename, repo_id="alice/sneaky")
    with pytest.raises(UnsafeAdapterError, match=r"pickled weights \['extra.pt'\]"):
        carol.pull("alice/sneaky")
    assert carol.list() == []


# ---------------------------------------------------------------------------- remote code


@pytest.mark.parametrize("model_type", ["llama", "evil_llama"])
def test_a_base_with_its_own_code_never_runs_it_even_if_the_user_says_yes(
        tmp_path: Path, model_type: str, request: pytest.FixtureRequest) -> None:
    """transformers asks "Do you wish to run the custom code? [y/N]" when ``trust_remote_code`` is
    left unset; a user typing y would run the folder's Python. adapterhub always passes False:
    nothing asks, nothing runs, and a base that needs its code is refused in one line."""
    import subprocess
    import sys

    from tinymodels import build_tiny_llama_folder

    folder = build_tiny_llama_folder(tmp_path / "custom")
    marker = tmp_path / "code-ran"
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "custom_code.CustomConfig",
                          "AutoModelForCausalLM": "custom_code.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "custom_code.CustomTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "custom_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'evil_llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "adapterhub.cli", "init", "--base", str(folder), "--precision", "fp32",
         "--home", str(tmp_path / "home")],
        input="y\n" * 8, capture_output=True, text=True, timeout=300,
    )
    assert not marker.exists(), result.stdout + result.stderr
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if model_type != "llama":  # needs its own code: refused, saying so
        assert result.returncode != 0 and "never runs" in result.stderr, result.stderr


def test_no_source_file_enables_remote_code() -> None:
    """No call or kwargs dict anywhere in the library, server or TUI sets ``trust_remote_code``
    to anything but the literal False."""
    import ast

    def is_false(node: ast.expr | None) -> bool:
        return isinstance(node, ast.Constant) and node.value is False

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("adapterhub", "server", "tui"):
        for path in root.joinpath(folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                settings: list[tuple[ast.AST, ast.expr | None]] = []
                if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                    settings.append((node, node.value))
                elif isinstance(node, ast.Dict):
                    settings += [(k, v) for k, v in zip(node.keys, node.values, strict=True)
                                 if isinstance(k, ast.Constant) and k.value == "trust_remote_code"]
                offenders += [f"{path.relative_to(root)}:{getattr(k, 'lineno', '?')}"
                              for k, v in settings if not is_false(v)]
    assert offenders == [], f"trust_remote_code must stay False: {offenders}"
