"""The library never imports the server or UI frameworks (checked in a clean interpreter)."""

import subprocess
import sys


def test_import_adapterhub_pulls_in_no_server_or_ui() -> None:
    code = (
        "import sys, adapterhub, adapterhub.cli, adapterhub.registry, adapterhub.base;"
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
