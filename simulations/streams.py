"""Independent random streams derived from one master seed.

Every purpose (arrivals, sizes, latencies, each fault kind, users, faker …)
draws from its own `random.Random`, seeded by hashing (seed, stream name), so a
change that consumes more or fewer draws in one stream (a different refund
policy, say) leaves every other stream's draws untouched: common random numbers.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(seed: int, *names: object) -> int:
    return _seed_of(":".join([str(int(seed)), *map(str, names)]).encode())


def _seed_of(text: bytes) -> int:
    """The seed of a derivation's text `seed:name:...`: the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


class Streams:
    """`streams.get("arrivals")` is the same Random object on every call;
    `streams.keyed("latency", task_ref)` is a fresh Random for one key, so a
    job's draws do not depend on how many jobs came before it."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._named: dict[str, random.Random] = {}
        self._prefix: dict[str, bytes] = {}  # name -> derive_seed's text up to the key, encoded

    def get(self, name: str) -> random.Random:
        rng = self._named.get(name)
        if rng is None:
            rng = self._named[name] = random.Random(derive_seed(self.seed, name))
        return rng

    def keyed(self, name: str, key: object) -> random.Random:
        """`random.Random(derive_seed(self.seed, name, key))`, hashing the same bytes without
        rebuilding the seed's and the name's part for every key (one keyed Random per job)."""
        prefix = self._prefix.get(name)
        if prefix is None:
            prefix = self._prefix[name] = f"{self.seed}:{name}:".encode()
        return random.Random(_seed_of(prefix + str(key).encode()))
