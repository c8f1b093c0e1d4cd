"""The library never imports the server or UI frameworks (checked in a clean interpreter)."""

import subprocess
import sys


def test_import_adapterhub_pulls_in_no_server_or_ui() -> None:
    code = (
        "import sys, adapterhub, adapterhub.cli, adapterhub.registry, adapterhub.models.base;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'starlette', 'textual', 'uvicorn', 'adapterhub_server', 'adapterhub_tui'});"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_public_api() -> None:
    import adapterhub

    assert adapterhub.__all__ == ["Hub", "__version__"]
    assert callable(adapterhub.Hub)


_WITHOUT_EXTRAS = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "starlette", "uvicorn", "textual"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
from adapterhub.cli import main
main(sys.argv[1:])
"""


def test_the_cli_works_without_the_server_and_tui_extras(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A core-only install: library commands run; serve and tui say which extra to install."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, *args, "--home", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)

    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    for command, extra in (("serve", "server"), ("tui", "tui")):
        result = run(command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"pip install 'adapterhub[{extra}]'" in result.stderr and "Traceback" not in result.stderr
