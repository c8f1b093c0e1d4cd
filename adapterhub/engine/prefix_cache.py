"""Prefix caching: keys and values of prompt prefixes, kept for later prompts that start alike.

A system prompt, a few-shot preamble or the compare screen's one prompt asked again is prefilled
once; later requests that start with the same tokens, for the same adapters, copy its keys and
values into their row and prefill only what follows.

Design choices (vLLM's automatic prefix caching, shrunk to one process and a dense KV cache):

* **Blocks named by a chained hash.** A prompt is cut into blocks of :data:`BLOCK_TOKENS`
  tokens; block i is named by a hash over the row's adapter key (which versions, by the digest
  of their files, with which mix weights; nothing for the base) and every token up to the end of
  block i. A position's keys and values depend on exactly those, so an equal name means an equal
  block, and a prompt's cached prefix is the longest run of its names that are present.
* **Full blocks only, never the last token.** A partly filled block is not stored, and a
  prompt reuses at most everything but its last token, whose position must run for its logits.
* **Copies, not pages.** The running rows' cache is dense (the decode kernels read each row
  contiguously), so a hit copies its blocks into the row: ``layers x 2 x kv_heads x 16 x
  head_dim`` floats a block, far cheaper than the prefill of 16 tokens it replaces.
* **LRU within a byte budget** (``EngineConfig.prefix_cache_mib``; 0 turns caching off). A
  lookup or a store refreshes a block; the least recently used ones go first.
* **Where every position must run, nothing is reused:** a row that asks for prompt
  log-probabilities, and a base whose rotary tables depend on the whole length (LongRoPE), where
  a prefix's keys would differ once the prompt grows past the short window.

Engine thread only, like the cache rows it copies from and into.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch

from adapterhub.registry import Version

BLOCK_TOKENS = 16
"""Tokens per cached block (vLLM's default block size)."""


def adapter_key(adapters: Mapping[str, float], versions: Mapping[str, Version]) -> bytes:
    """What besides the tokens decides a row's keys and values: each adapter's files and weight.

    The base alone (no adapters) is the empty key.
    """
    parts = []
    for ref in sorted(adapters):
        files = ",".join(f"{name}={digest}" for name, digest in sorted(versions[ref].files.items()))
        parts.append(f"{ref}|{files}|{float(adapters[ref])!r}")
    return ";".join(parts).encode()


def block_hashes(key: bytes, tokens: Sequence[int]) -> tuple[bytes, ...]:
    """The chained name of each full block of ``tokens`` for a row with adapter ``key``."""
    names = []
    name = hashlib.blake2b(key, digest_size=16, person=b"adapterhub-kv").digest()
    ids = array("q", tokens)
    for end in range(BLOCK_TOKENS, len(ids) + 1, BLOCK_TOKENS):
        name = hashlib.blake2b(name + ids[end - BLOCK_TOKENS : end].tobytes(), digest_size=16).digest()
        names.append(name)
    return tuple(names)


def reusable(names: Sequence[bytes], prompt_len: int) -> Sequence[bytes]:
    """The names of the blocks a prompt of ``prompt_len`` tokens may reuse: all but the block
    that would hold its last token, whose position must run for its logits."""
    return names[: (prompt_len - 1) // BLOCK_TOKENS]


class PrefixCache:
    """Blocks of keys and values by name, least recently used evicted first past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.queried_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # of them, found cached
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def cached_blocks(self, names: Sequence[bytes]) -> int:
        """How many leading blocks of ``names`` are cached (no refresh, no counting)."""
        count = 0
        for name in names:
            if name not in self._blocks:
                break
            count += 1
        return count

    def lookup(self, names: Sequence[bytes], prompt_len: int) -> list[torch.Tensor]:
        """The cached leading blocks of a prompt of ``prompt_len`` tokens named ``names``,
        refreshed, stopping short of the prompt's last token."""
        usable = reusable(names, prompt_len)
        found = [self._blocks[name] for name in usable[: self.cached_blocks(usable)]]
        for name in usable[: len(found)]:
            self._blocks.move_to_end(name)
        self.queried_tokens += prompt_len
        self.hit_tokens += len(found) * BLOCK_TOKENS
        return found

    def store(self, names: Sequence[bytes], read: Callable[[int, int], torch.Tensor]) -> None:
        """Keep every block of ``names``; ``read(start, end)`` gives a block's keys and values
        (a view of the row it was prefilled in: it is copied)."""
        for index, name in enumerate(names):
            if name in self._blocks:
                self._blocks.move_to_end(name)
                continue
            block = read(index * BLOCK_TOKENS, (index + 1) * BLOCK_TOKENS).clone()
            size = block.numel() * block.element_size()
            if size > self.max_bytes:
                return
            self._blocks[name] = block
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._blocks.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()
