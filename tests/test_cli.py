"""The CLI as a user runs it: one clear line and a non-zero exit on errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapterhub.cli import main


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapterhub.cli", *args, "--home", str(home)]
        if args and args[0] not in {"--help"}
        else [sys.executable, "-m", "adapterhub.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def inited(home: Path, tiny_base_dir: Path) -> Path:
    from adapterhub import Hub

    Hub(home).init(str(tiny_base_dir), precision="fp32")
    return home


def test_import_list_show_tag_rm(
    inited: Path, lora_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(inited)
    main(["import", str(lora_dir), "--name", "pirate", "--home", home])
    assert capsys.readouterr().out.strip() == "pirate@1"
    main(["import", str(lora_dir), "--name", "pirate", "--home", home])
    main(["tag", "pirate@1", "prod", "--home", home])
    assert "pirate:prod -> pirate@1" in capsys.readouterr().out
    main(["list", "--home", home])
    listing = capsys.readouterr().out
    assert "pirate@1" in listing and "pirate@2" in listing and "prod" in listing
    main(["show", "pirate:prod", "--home", home])
    assert '"ref": "pirate@1"' in capsys.readouterr().out
    main(["rm", "pirate@2", "--home", home])
    assert "deleted pirate@2" in capsys.readouterr().out


def test_generate_with_adapter_differs_from_base(
    inited: Path, lora_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(inited)
    main(["import", str(lora_dir), "--name", "noisy", "--home", home])
    capsys.readouterr()
    main(["generate", "--base", "hello world", "--max-tokens", "8", "--home", home])
    base_text = capsys.readouterr().out
    main(["generate", "noisy", "hello world", "--max-tokens", "8", "--home", home])
    adapter_text = capsys.readouterr().out
    main(["generate", "--base", "hello world", "--max-tokens", "8", "--home", home])
    assert capsys.readouterr().out == base_text  # --base is untouched by a loaded adapter
    assert adapter_text != base_text


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (("show", "nope"), "adapter 'nope' does not exist", 1),
        (("show", "../etc"), "adapter name '../etc' is not allowed", 2),
        (("import", "/does/not/exist", "--name", "x"), "'/does/not/exist' does not exist", 1),
        (("generate", "ghost", "hi"), "adapter 'ghost' does not exist", 1),
        (("init", "--precision", "fp8"), "precision 'fp8' is not one of", 2),
    ],
)
def test_errors_are_one_line_without_traceback(
    inited: Path, args: tuple[str, ...], message: str, code: int
) -> None:
    result = run_cli(*args, home=inited)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_pickled_adapter_is_refused(inited: Path, lora_dir: Path) -> None:
    (lora_dir / "adapter_model.bin").write_bytes(b"not really a pickle")
    result = run_cli("import", str(lora_dir), "--name", "p", home=inited)
    assert result.returncode == 1
    assert "pickled weights ['adapter_model.bin']" in result.stderr


def test_adapter_for_another_base_is_refused(
    inited: Path, other_tiny_base_dir: Path, tmp_path: Path, lora_factory
) -> None:
    wide = lora_factory(other_tiny_base_dir, tmp_path / "wide")
    result = run_cli("import", str(wide), "--name", "wide", home=inited)
    assert result.returncode == 1
    assert "does not fit this base" in result.stderr
    assert "is 64->64 in the base but the adapter is 96->96" in result.stderr


def test_eval_records_results_that_list_show_and_gated_tags_read(
    inited: Path, lora_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(inited)
    capitals = str(Path(__file__).resolve().parents[1] / "recipes" / "evals" / "capitals")
    main(["import", str(lora_dir), "--name", "pirate", "--home", home])
    capsys.readouterr()
    main(["eval", "pirate", "--task", capitals, "--limit", "3", "--compute-dtype", "float32", "--json",
          "--home", home])
    measured = {e["metric"]: e["value"] for e in json.loads(capsys.readouterr().out)}
    assert set(measured) == {"acc", "acc_norm"}

    main(["list", "--metric", "adapterhub_capitals:acc", "--json", "--home", home])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["measured"] == {"adapterhub_capitals:acc": measured["acc"]}
    main(["show", "pirate", "--home", home])
    shown = json.loads(capsys.readouterr().out)
    assert [(e["task"], e["metric"], e["samples"]) for e in shown["evaluations"]] == [
        ("adapterhub_capitals", "acc", 3), ("adapterhub_capitals", "acc_norm", 3)]

    refused = run_cli("tag", "pirate@1", "prod", "--gate", "adapterhub_capitals:acc>1", home=inited)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"adapterhub_capitals:acc>1: pirate@1 has {measured['acc']:.4g}, bound 1: fails" in refused.stderr
    main(["tag", "pirate@1", "prod", "--gate", "adapterhub_capitals:acc>=0", "--home", home])
    assert "pirate:prod -> pirate@1" in capsys.readouterr().out
    main(["show", "pirate:prod", "--home", home])
    assert json.loads(capsys.readouterr().out)["gates"] == {"prod": ["adapterhub_capitals:acc>=0"]}
