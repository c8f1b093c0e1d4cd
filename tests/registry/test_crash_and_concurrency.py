"""Crash safety and multi-process writers, with real subprocesses and SIGKILL.

``ADAPTERHUB_KILL_POINTS`` sets how many random kill points the crash test tries (default 8;
``make fuzz`` runs it with many more).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry

# A writer that registers, tags and deletes versions forever, printing after each commit.
_WRITER = r"""
import os, random, sys
from adapterhub.registry import Registry
registry = Registry(sys.argv[1])
name, seed = sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
config = open(sys.argv[4], "rb").read()
while True:
    op = rng.random()
    if op < 0.7 or not registry.names():
        payload = rng.randbytes(rng.randint(1, 3) * 1_000_000)
        v = registry.register(name, {"adapter_config.json": config, "adapter_model.safetensors": payload},
                              base_fingerprint="fp", template_hash="th", method="sft")
    elif op < 0.85:
        v = registry.tag(rng.choice(registry.list_versions(name)).ref, "prod")
    else:
        versions = registry.list_versions(name)
        if len(versions) > 1:
            registry.delete(versions[0].ref, force=True)
    print("ok", flush=True)
"""


def _check_consistent(registry: Registry) -> int:
    """Every visible version is whole and every file verifies; returns the version count."""
    versions = registry.list_versions()
    for version in versions:
        assert set(version.files) == {CONFIG_FILE, WEIGHTS_FILE}, version
        for filename in version.files:
            registry.read_file(version, filename)  # raises CorruptBlobError if not whole
        for alias in version.aliases:
            assert registry.resolve(f"{version.name}:{alias}").ref == version.ref
    return len(versions)


def test_sigkill_at_random_points_leaves_no_partial_version(home: Path, lora_dir: Path) -> None:
    kill_points = int(os.environ.get("ADAPTERHUB_KILL_POINTS", "8"))
    rng = random.Random(1234)
    survived = 0
    for point in range(kill_points):
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(home),
                "crashy",
                str(point),
                str(lora_dir / CONFIG_FILE),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        writer.stdout.readline()  # let it commit at least once so there is history to protect
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        before = _check_consistent(Registry(home))
        assert before >= 1
        survived += 1
    assert survived == kill_points
    # The registry still takes writes after all that.
    registry = Registry(home)
    version = registry.register(
        "after",
        {CONFIG_FILE: b"{}", WEIGHTS_FILE: b"x"},
        base_fingerprint="f",
        template_hash="t",
        method="sft",
    )
    assert version.ref == "after@1"


def test_four_processes_registering_one_name_get_distinct_numbers(home: Path) -> None:
    Registry(home)  # create the schema before the race
    script = r"""
import sys
from adapterhub.registry import Registry
registry = Registry(sys.argv[1])
for i in range(10):
    registry.register("shared", {"adapter_config.json": b"{}", "adapter_model.safetensors": sys.argv[2].encode() + bytes([i])},
                      base_fingerprint="f", template_hash="t", method="sft")
"""
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(home), tag]) for tag in ("a", "b", "c", "d")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    numbers = [v.number for v in Registry(home).list_versions("shared")]
    assert numbers == list(range(1, 41))
    assert _check_consistent(Registry(home)) == 40
