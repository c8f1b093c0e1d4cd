"""``adapterhub registry copy``: a laptop's home into PostgreSQL + S3 and back, equal in every
version, alias, gate, evaluation and byte; again (nothing to do); after a SIGKILL mid-copy
(finishes what is missing); and into a destination that disagrees (left alone, reported)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from adapterhub.cli import main
from adapterhub.errors import RegistryError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Evaluation, Registry
from adapterhub.registry.copy import copy_registry
from adapterhub.registry.doctor import diagnose


def _register(registry: Registry, name: str, size: int = 2000, **kw: Any):  # type: ignore[no-untyped-def]
    files = {CONFIG_FILE: b'{"r": 4}', WEIGHTS_FILE: os.urandom(size), "step_log.jsonl": b"{}\n"}
    return registry.register(name, files, base_fingerprint="fp", template_hash="th", method="sft", **kw)


def _laptop(home: Path) -> Registry:
    """A home with lineage, a gated alias, a plain alias and evaluations."""
    registry = Registry(home)
    _register(registry, "pirate", metrics={"train_loss": 1.5}, recipe={"method": "sft"})
    _register(registry, "pirate", parent="pirate@1", metrics={"general_ppl_ratio": 1.1})
    _register(registry, "json")
    registry.record_evaluations([Evaluation("pirate", 2, "capitals", "acc", 0.75, stderr=0.1, samples=12,
                                            harness="lm-eval 0.4.13", setup={"limit": 12})])
    registry.record_evaluations([Evaluation("pirate", 1, "capitals", "acc", 0.5, harness="lm-eval 0.4.13")])
    registry.tag("pirate@2", "prod", gates=["capitals:acc>=parent", "forgetting<=1.2"])
    registry.tag("json@1", "candidate")
    return registry


def _snapshot(registry: Registry) -> dict[str, Any]:
    versions = registry.list_versions()
    return {
        "versions": [v.to_dict() for v in versions],
        "evaluations": {v.ref: [e.to_dict() for e in registry.evaluations(v)] for v in versions},
        "aliases": [(n, a, k, [str(g) for g in gates]) for n, a, k, gates in registry.aliases()],
        "bytes": {v.ref: {f: registry.read_file(v, f) for f in v.files} for v in versions},  # verified
        "sizes": {v.ref: registry.sizes(v) for v in versions},
    }


def test_a_home_moves_to_postgres_and_s3_and_back(
        tmp_path: Path, postgres_url: str, s3_blobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    laptop = _laptop(tmp_path / "laptop")
    main(["registry", "copy", str(tmp_path / "laptop"), postgres_url, "--dst-blobs", s3_blobs])
    assert "copied 3 versions (5 blobs" in capsys.readouterr().out  # 3 weights; config, log shared
    team = Registry(url=postgres_url, blobs=s3_blobs)
    assert _snapshot(team) == _snapshot(laptop)
    assert team.resolve("pirate:prod").ref == "pirate@2"
    assert [str(g) for g in team.gates("pirate", "prod")] == ["capitals:acc>=parent", "general_ppl_ratio<=1.2"]

    main(["registry", "copy", str(tmp_path / "laptop"), postgres_url, "--dst-blobs", s3_blobs])
    out = capsys.readouterr().out
    assert "copied 0 versions (0 blobs, 0 bytes), 3 already there" in out
    assert "0 evaluations copied" in out
    assert _snapshot(team) == _snapshot(laptop)  # idempotent: nothing doubled

    main(["registry", "copy", postgres_url, f"sqlite:///{tmp_path / 'back' / 'registry.db'}",
          "--src-blobs", s3_blobs])
    assert _snapshot(Registry(tmp_path / "back")) == _snapshot(laptop)
    # the registry keeps going on both sides: numbers continue after the copied ones
    assert _register(team, "pirate").ref == "pirate@3"


def test_new_evaluations_on_the_source_follow_on_the_next_copy(tmp_path: Path) -> None:
    laptop = _laptop(tmp_path / "laptop")
    team = Registry(tmp_path / "team")
    copy_registry(laptop, team)
    laptop.record_evaluations([Evaluation("json", 1, "sums", "exact_match", 0.25, harness="lm-eval 0.4.13")])
    laptop.tag("json@1", "prod")
    report = copy_registry(laptop, team)
    assert (report.copied, report.evaluations_copied) == ([], 1)
    assert _snapshot(team) == _snapshot(laptop)


_COPIER = r"""
import sys
from adapterhub.registry import Registry
from adapterhub.registry.copy import copy_registry
src = Registry(sys.argv[1])
dst = Registry(url=sys.argv[2], blobs=sys.argv[3])
copy_registry(src, dst, progress=lambda e: print(e.kind, e.step, flush=True))
print("finished", flush=True)
"""


def test_a_copy_killed_midway_resumes_to_an_equal_registry(
        tmp_path: Path, postgres_url: str, s3_blobs: str) -> None:
    laptop = Registry(tmp_path / "laptop")
    for i in range(12):
        _register(laptop, f"a{i % 3}", size=300_000)
    laptop.tag("a0@2", "prod")
    copier = subprocess.Popen([sys.executable, "-c", _COPIER, str(tmp_path / "laptop"), postgres_url, s3_blobs],
                              stdout=subprocess.PIPE, text=True)
    assert copier.stdout is not None
    while not copier.stdout.readline().startswith("step"):  # at least one version is across
        pass
    time.sleep(random.Random(3).uniform(0.0, 0.3))
    copier.send_signal(signal.SIGKILL)
    copier.wait()
    team = Registry(url=postgres_url, blobs=s3_blobs)
    partial = team.list_versions()
    assert 1 <= len(partial) <= 12
    report = diagnose(team)
    assert report.corrupt == [] and report.database == [], report.lines()  # whole versions only
    again = copy_registry(laptop, team)
    assert len(again.copied) + len(again.present) == 12 and len(again.present) >= len(partial)
    assert _snapshot(team) == _snapshot(laptop)
    assert diagnose(team, repair=True).corrupt == []
    assert diagnose(team).healthy


def test_a_destination_that_disagrees_is_left_alone(tmp_path: Path) -> None:
    laptop = _laptop(tmp_path / "laptop")
    team = Registry(tmp_path / "team")
    theirs = _register(team, "pirate")  # pirate@1 exists there with other weights
    with pytest.raises(RegistryError, match=r"1 version\(s\) exist on the destination with other contents: "
                       r"\['pirate@1'\]; they were left alone"):
        copy_registry(laptop, team)
    assert team.resolve("pirate@1") == theirs
    assert [v.ref for v in team.list_versions()] == ["json@1", "pirate@1", "pirate@2"]  # the rest came
    assert team.resolve("json:candidate").ref == "json@1"
