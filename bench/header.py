"""The first lines every bench prints: where it ran (device, ISA, dtypes, threads, load).

A figure without its machine is not a figure: the same code runs 30x apart on CPUs with and
without native bf16 (see ``bench/README.md``).
"""

from __future__ import annotations

import os
from typing import Any


def auto_precision(platform: Any) -> str:
    """The dense storage a user would pick here: bf16 where it is native (CPU or GPU), else fp32."""
    return "bf16" if platform.native_bf16 else "fp32"


def print_header(bench: str, platform: Any, **dtypes: str) -> None:
    """Print the bench's name, the platform, the dtypes it runs in and the load, then a rule."""
    import torch

    import adapterhub

    fields = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dtypes.items())
    print(f"{bench} | adapterhub {adapterhub.__version__}, torch {torch.__version__}", flush=True)
    print(f"  device  {platform.summary()}", flush=True)
    print(f"  dtypes  {fields}", flush=True)
    print(f"  threads {platform.threads} (torch), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; bitsandbytes {platform.as_dict()['bitsandbytes']}", flush=True)
    print("-" * 78, flush=True)
