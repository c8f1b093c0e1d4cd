"""``pip install adapterhub`` without extras: a real virtual environment holding only the core.

The environment is built from this one's installed distributions: adapterhub's core requirements
and their requirements, transitively (no extras), each linked into a fresh venv's site-packages.
That is exactly what pip would install from the registry, without downloading it again; fastapi,
uvicorn, textual and the other extras' packages are simply not there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib.metadata import Distribution, distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXTRA_ONLY = {"fastapi", "uvicorn", "starlette", "textual", "prometheus-client", "lm-eval", "openai"}


def _core_closure(site: Path) -> list[Distribution]:
    """adapterhub and everything its core install pulls in (markers evaluated with no extra), as
    installed in ``site`` (not an ``adapterhub.egg-info`` a build left in the working directory)."""
    seen: dict[str, Distribution] = {}
    todo = ["adapterhub"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = next(iter(distributions(name=name, path=[str(site)])), None)
        if dist is None:
            continue  # an optional platform dependency this machine does not have
        seen[name] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(seen.values())


def _top_level_entries(dist: Distribution) -> set[str]:
    """The names at site-packages' root that belong to ``dist`` (packages, modules, .libs, dist-info)."""
    return {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}


@pytest.fixture(scope="module")
def core_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"])
    dists = _core_closure(here)
    names = {canonicalize_name(d.metadata["Name"]) for d in dists}
    assert not names & EXTRA_ONLY, f"the core install pulls in an extra's package: {names & EXTRA_ONLY}"
    for dist in dists:
        for entry in _top_level_entries(dist):
            source, link = here / entry, target / entry
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return python


def _cli(python: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["ADAPTERHUB_HOME"] = str(home)
    return subprocess.run([str(python), "-m", "adapterhub.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=home)


def test_the_core_venv_lacks_the_extras(core_python: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('fastapi', 'textual', 'uvicorn', 'lm_eval') if u.find_spec(m)])"
    result = subprocess.run([str(core_python), "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_library_commands_run_and_extras_are_named(core_python: Path, tiny_base_dir: Path,
                                                    tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    init = _cli(core_python, "init", "--base", str(tiny_base_dir), "--precision", "fp32", home=home)
    assert init.returncode == 0, init.stderr
    listed = _cli(core_python, "list", home=home)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    for command, extra in (("serve", "server"), ("tui", "tui")):
        result = _cli(core_python, command, home=home)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"pip install 'adapterhub[{extra}]'" in result.stderr
        assert "Traceback" not in result.stderr
