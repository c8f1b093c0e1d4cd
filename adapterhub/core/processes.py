"""Small process and file primitives that the job queue and the multi-process launcher share.

POSIX (Linux, macOS) is what they are written for: process groups, ``kill(pid, 0)`` and, on
Linux, a child that dies with its parent. :func:`require_posix` turns their absence into a clear
error instead of an ``AttributeError`` deep in a shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError


def require_posix(what: str) -> None:
    """Raises: ConfigError: not on a POSIX system (``what`` names the feature)."""
    if os.name != "posix":
        raise ConfigError(f"{what} needs a POSIX system (Linux or macOS); this is {sys.platform!r}")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process group ``proc`` leads (started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL it."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()


def die_with_parent() -> None:
    """For ``preexec_fn``: on Linux, the child gets SIGTERM when the thread that started it ends
    (its parent crashed or was killed), so nothing is left running unowned. Elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file renamed over it)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)
