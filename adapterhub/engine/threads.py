"""Which threads may run multi-threaded torch ops: only the engine's decode thread.

torch's CPU ops fork onto a GNU OpenMP team per calling thread, and a thread that has once used
more than one intra-op thread keeps its team for life. When the process holds more team threads
than CPUs, libgomp stops spin-waiting between parallel regions, so each of the hundreds of small
ops in a decode step pays a sleep and a wake-up: an idle team, kept by the thread that loaded
the base, slows every decode step (measured: see bench/README.md, "Figures behind design
choices").

So the engine gives its decode thread ``EngineConfig.num_threads`` (default: the constructing
thread's count), its adapter loaders run on one, and a process that serves (``adapterhub
serve``) calls :func:`single_threaded` in its main thread before it loads the base. A library
user after the same speed does the same::

    threads = torch.get_num_threads()
    single_threaded()                      # before the base loads
    engine = Engine(load_base(path, "bf16"), registry, EngineConfig(num_threads=threads))
"""

from __future__ import annotations

import torch


def use_threads(count: int) -> None:
    """Run the calling thread's torch ops on ``count`` intra-op threads.

    torch also keeps the value as the default of threads that have not run an op yet.
    """
    # A thread takes the process-wide default at its first op, and that would undo a setting
    # made before it: the get forces that first initialisation, then the set sticks.
    torch.get_num_threads()
    torch.set_num_threads(count)


def single_threaded() -> None:
    """Run the calling thread's torch ops on one intra-op thread (so it holds no OpenMP team)."""
    use_threads(1)
