"""SIGKILL at random points in register/tag/delete, with ``adapterhub doctor`` after every kill.

``test_crash_and_concurrency.py`` checks that every visible version is whole after each kill.
This loop adds the doctor's view: after a kill there may be leftovers (a ``.tmp-*`` file, a blob
whose version never committed), but never a corrupt version or a database problem; and
``adapterhub doctor --repair`` (the real CLI, in a subprocess) then leaves a healthy registry
that takes writes. ``ADAPTERHUB_KILL_POINTS`` sets the kill points (4 here by default;
``make fuzz`` runs 50). The figures are printed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_crash_and_concurrency import _WRITER, _check_consistent

from adapterhub.models.adapters import CONFIG_FILE
from adapterhub.registry import Registry
from adapterhub.registry.doctor import diagnose

KILL_POINTS = int(os.environ.get("ADAPTERHUB_KILL_POINTS", "4"))


def _doctor(home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adapterhub.cli", "doctor", "--home", str(home), *flags],
                          capture_output=True, text=True, timeout=300)


def test_doctor_after_every_kill_finds_only_leftovers_and_repairs_them(
        home: Path, lora_dir: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(4321)
    leftovers = 0
    for point in range(KILL_POINTS):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(home), f"kill{point % 3}", str(1000 + point),
             str(lora_dir / CONFIG_FILE)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        writer.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        report = diagnose(home)
        assert report.corrupt == [] and report.database == [], (point, report.lines())
        leftovers += len(report.temp_files) + len(report.dangling_blobs)
    versions = _check_consistent(Registry(home))

    repaired = _doctor(home, "--repair")
    assert repaired.returncode == 0 and "healthy" in repaired.stdout, repaired.stdout + repaired.stderr
    again = _doctor(home)
    assert again.returncode == 0 and "leftover" not in again.stdout and "unreferenced" not in again.stdout
    assert _check_consistent(Registry(home)) == versions
    assert Registry(home).register("after", {CONFIG_FILE: b"{}", "adapter_model.safetensors": b"x"},
                                   base_fingerprint="f", template_hash="t", method="sft").ref == "after@1"

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"kill loop: {KILL_POINTS} SIGKILLs survived, {versions} whole versions, "
                                f"{leftovers} leftovers seen by doctor (cumulative), repaired to healthy")
