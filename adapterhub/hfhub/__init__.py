"""The Hugging Face Hub client: push versions and pull them back; the only huggingface_hub user.

One module per job; each imports its siblings, never this package:

* ``settings``: :class:`HubSettings` (endpoint, token) and ``hub_errors``, the one place where
  huggingface_hub and transport errors become ours.
* ``manifest``: ``adapterhub.json``, the record in each pushed commit that a pull verifies.
* ``card``: the model card (README.md), a pure function of the manifest.
* ``push``: :func:`push_version`, one version as one commit and one tag, in a repo that plain
  PEFT and vLLM load.
* ``pull``: :func:`pull_version`, one commit downloaded, checked and registered.
"""

from adapterhub.hfhub.manifest import MANIFEST_FILE, HubManifest
from adapterhub.hfhub.pull import PullResult, pull_version
from adapterhub.hfhub.push import PushResult, push_version
from adapterhub.hfhub.settings import HubSettings

__all__ = [
    "MANIFEST_FILE",
    "HubManifest",
    "HubSettings",
    "PullResult",
    "PushResult",
    "pull_version",
    "push_version",
]
