"""Which adapters are resident: fixed slots in front, an LRU cache behind, loads off the decode path.

A request's adapter goes through three places, as in vLLM's ``LRUCacheLoRAModelManager``:

1. the **registry** (disk): read, checksum-verified and validated by a loader thread, so the
   engine thread keeps decoding while it happens;
2. the **cache**: prepared adapters (weights in the engine's dtype, scaling folded in) in an LRU
   of ``max_cpu_adapters`` entries, so a slot is refilled by a copy, not a registry read;
3. a **slot** of the stacked buffers in :mod:`.lora`, where rows of a batch can use it.

Design choices:

* Slots are taken lowest-free-first, so the slots in use stay a prefix and a step's LoRA width
  (which grows with the highest slot in use) stays small. A full table evicts the least recently
  used slot that no running row holds and nobody pinned.
* Compatibility is checked when a ref is resolved, on the caller's thread, so an unknown or
  incompatible adapter fails the request before it is queued; checksums and shapes are checked
  by the loader, and a failure fails every request waiting for that adapter.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adapterhub.engine.lora import LoraSlots, PreparedAdapter
from adapterhub.engine.threads import single_threaded
from adapterhub.engine.types import ResidentAdapter
from adapterhub.errors import AdapterNotFoundError, CapacityError
from adapterhub.models.adapters import LoraAdapter
from adapterhub.registry.store import Version, ensure_compatible


class AdapterSource(Protocol):
    """Where adapters come from: :class:`adapterhub.registry.Registry` is one."""

    def resolve(self, ref: str) -> Version: ...

    def load_adapter(self, ref: str | Version) -> LoraAdapter: ...


@dataclass
class _Slot:
    key: str | None = None
    adapter: PreparedAdapter | None = None
    pinned: bool = False
    active_rows: int = 0
    last_used: float = 0.0


class AdapterResidency:
    """Slots, cache and loads of one engine. Resolve is thread-safe; the rest is engine-thread only."""

    def __init__(
        self,
        source: AdapterSource | None,
        base: Any,
        slots: LoraSlots,
        *,
        max_cpu_adapters: int,
        on_loaded: Callable[[], None],
        loader_threads: int = 1,
    ) -> None:
        """Args:
        source: the registry (None: the engine serves the base only).
        base: the :class:`~adapterhub.models.base.LoadedBase`.
        slots: the stacked buffers adapters are installed into.
        max_cpu_adapters: entries of the LRU cache behind the slots.
        on_loaded: called on the loader thread when a load finishes (wakes the engine).
        loader_threads: loads that may run at once.
        """
        self.source = source
        self.base = base
        self.slots = slots
        self.max_cpu_adapters = max_cpu_adapters
        self._on_loaded = on_loaded
        self._table = [_Slot() for _ in range(slots.num_slots)]
        self._cache: OrderedDict[str, PreparedAdapter] = OrderedDict()
        # loaded for a waiting request, not yet in a slot: kept whatever the cache size
        self._ready: OrderedDict[str, PreparedAdapter] = OrderedDict()
        self._loading: dict[str, Future[PreparedAdapter]] = {}
        # Every loader starts now and goes single-threaded before the engine's decode thread
        # sets its own count (torch also keeps the last value set as new threads' default).
        started = threading.Barrier(loader_threads + 1)

        def start_loader() -> None:
            single_threaded()
            started.wait()

        self._loader = ThreadPoolExecutor(
            max_workers=loader_threads, thread_name_prefix="adapterhub-loader", initializer=start_loader
        )
        for _ in range(loader_threads):  # each waits in the barrier, so each submit adds a thread
            self._loader.submit(int)
        started.wait()
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        self._loader.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ any thread

    def resolve(self, ref: str | Version) -> Version:
        """Resolve a ref to its version (a version is only checked), checking it fits the base.

        Callers keep the version with their request: nothing is remembered here, so the engine
        thread never reads the registry's database and no map grows with every version served.

        Raises:
            AdapterNotFoundError: unknown ref, or the engine has no registry.
            IncompatibleAdapterError: trained on another base or chat template.
        """
        if isinstance(ref, Version):
            ensure_compatible(ref, self.base.info.fingerprint, self.base.info.template_hash)
            return ref
        if self.source is None:
            raise AdapterNotFoundError(
                f"adapter {ref!r} cannot be served: this engine was started without a registry; "
                "pass one to Engine(base, registry)",
                ref=ref,
            )
        version = self.source.resolve(ref)
        info = self.base.info
        ensure_compatible(version, info.fingerprint, info.template_hash)
        return version

    # ------------------------------------------------------------------ engine thread

    def slot_of(self, key: str) -> int | None:
        for index, slot in enumerate(self._table):
            if slot.key == key:
                return index
        return None

    def prefetch(self, version: Version) -> None:
        """Count a hit or a miss for a newly queued request and start its load if needed."""
        key = version.ref
        if self.slot_of(key) is not None or key in self._cache or key in self._ready:
            self.hits += 1
            return
        self.misses += 1
        self._start_load(version)

    def _start_load(self, version: Version) -> None:
        key = version.ref
        if key in self._loading or key in self._cache or key in self._ready:
            return
        if self.slot_of(key) is not None:
            return
        future = self._loader.submit(self._load, version)
        future.add_done_callback(lambda _: self._on_loaded())
        self._loading[key] = future

    def _load(self, version: Version) -> PreparedAdapter:
        """Loader thread: registry read (checksums verified), validation, layout."""
        assert self.source is not None  # resolve() refused refs without a source
        adapter = self.source.load_adapter(version)
        with torch.inference_mode():
            return self.slots.prepare(adapter, version.ref)

    def poll(self) -> dict[str, BaseException]:
        """Move finished loads into the cache; return the keys whose load failed."""
        failed: dict[str, BaseException] = {}
        for key, future in list(self._loading.items()):
            if not future.done():
                continue
            del self._loading[key]
            error = future.exception()
            if error is not None:
                failed[key] = error
            else:
                self._ready[key] = future.result()
        while len(self._ready) > 2 * len(self._table):  # nobody took them: let the LRU decide
            self._remember(*self._ready.popitem(last=False))
        return failed

    @property
    def loads_in_flight(self) -> int:
        return len(self._loading)

    def _remember(self, key: str, adapter: PreparedAdapter) -> None:
        self._cache[key] = adapter
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cpu_adapters:
            self._cache.popitem(last=False)

    def acquire(self, versions: Mapping[str, Version], *, hold: bool = True) -> dict[str, int] | None:
        """Make every key resident and (with ``hold``) hold its slot for one more row.

        Returns:
            ``key -> slot``, or None when some key is not loaded yet or no slot can be freed
            (nothing is held then; loads are started for missing keys).
        """
        placed: dict[str, int] = {}
        missing: list[str] = []
        for key in versions:
            slot = self.slot_of(key)
            if slot is None:
                missing.append(key)
            else:
                placed[key] = slot
        for key in missing:
            if key not in self._ready and key not in self._cache:
                self._start_load(versions[key])
                return None
        for key in missing:
            slot = self._free_slot(exclude=placed.values())
            if slot is None:
                return None
            adapter = self._ready.pop(key, None) or self._cache.pop(key)
            self._install(slot, key, adapter)
            placed[key] = slot
        now = time.perf_counter()
        for slot in placed.values():
            self._table[slot].active_rows += int(hold)
            self._table[slot].last_used = now
        return placed

    def release(self, slots: Iterable[int]) -> None:
        """A row that held these slots finished."""
        for slot in slots:
            self._table[slot].active_rows -= 1

    def _free_slot(self, exclude: Iterable[int] = ()) -> int | None:
        taken = set(exclude)
        idle = [
            i for i, s in enumerate(self._table)
            if i not in taken and s.active_rows == 0 and not s.pinned
        ]
        empty = [i for i in idle if self._table[i].key is None]
        if empty:
            return empty[0]
        if not idle:
            return None
        return min(idle, key=lambda i: self._table[i].last_used)

    def _install(self, slot: int, key: str, adapter: PreparedAdapter) -> None:
        old = self._table[slot]
        if old.key is not None and old.adapter is not None:
            self._remember(old.key, old.adapter)  # evicted to the cache, not forgotten
        self.slots.install(slot, adapter)
        self._table[slot] = _Slot(key=key, adapter=adapter, last_used=time.perf_counter())

    # ------------------------------------------------------------------ admin (engine thread)

    def can_ever_fit(self, count: int) -> bool:
        """Whether ``count`` more adapters could be resident at once, given the pinned slots."""
        return count <= sum(1 for s in list(self._table) if not s.pinned)

    def set_pinned(self, key: str, pinned: bool) -> ResidentAdapter | None:
        slot = self.slot_of(key)
        if slot is None:
            return None
        self._table[slot].pinned = pinned
        return self._describe(slot, self._table[slot])

    def unload(self, key: str) -> bool:
        """Forget ``key``: drop it from the cache, and from its slot unless rows still use it.

        Raises:
            CapacityError: rows are decoding with it; retry when they finish.
        """
        self._cache.pop(key, None)
        self._ready.pop(key, None)
        slot = self.slot_of(key)
        if slot is None:
            return False
        if self._table[slot].active_rows:
            raise CapacityError(
                f"adapter {key!r} is in use by {self._table[slot].active_rows} running rows; "
                "unload it when they finish (or cancel them)"
            )
        self.slots.clear(slot)
        self._table[slot] = _Slot()
        return True

    def resident(self) -> list[ResidentAdapter]:
        """Adapters in slots (safe to call from another thread: entries are replaced whole)."""
        return [
            self._describe(i, entry) for i, entry in enumerate(list(self._table))
            if entry.key is not None
        ]

    @staticmethod
    def _describe(slot: int, entry: _Slot) -> ResidentAdapter:
        assert entry.key is not None and entry.adapter is not None
        return ResidentAdapter(
            ref=entry.key,
            slot=slot,
            pinned=entry.pinned,
            active_rows=entry.active_rows,
            rank=entry.adapter.rank,
            num_bytes=entry.adapter.num_bytes,
        )

    @property
    def cached(self) -> int:
        return len(self._cache)
