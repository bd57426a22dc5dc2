"""model.partition=profiled: the split measured once per machine and network, then reused, so that reruns,
resumes and every job of a sweep build the same modules (a split that moved with timing noise would no longer
match a run's checkpoints, and would make the jobs of one sweep different networks)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Hashable

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger("sgrad")

# What a cached split was measured with; a change to how costs are measured (sgrad/models/partition.py)
# measures every split again. 2: an SG model's regression counts its own forward pass.
COSTS = 2


def cache_dir() -> Path:
    """$SGRAD_CACHE/partitions, else ~/.cache/sgrad/partitions."""
    root = os.environ.get("SGRAD_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "sgrad") / "partitions"


def profiled_sizes(key: Hashable, modules: int, measure: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
    """Layers per module for the network `key` describes: read from the cache, or `measure()`d and stored.
    Process 0 decides and every process of a jax.distributed run takes its answer (one SPMD program needs one
    split)."""
    device = jax.devices()[0]
    described = repr((key, device.platform, device.device_kind, COSTS))
    path = cache_dir() / f"{hashlib.sha256(described.encode()).hexdigest()[:20]}.json"
    sizes = np.zeros(modules, np.int32)
    if jax.process_index() == 0:
        found = _read(path)
        if found is None:
            found = tuple(int(n) for n in measure())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"sizes": found, "network": described}) + "\n")
            tmp.replace(path)
            how = "measured"
        else:
            how = "measured earlier"
        log.info("model.partition=profiled: %s layers per module (%s on %s; kept in %s)",
                 "+".join(map(str, found)), how, device.device_kind, path)
        sizes[:] = found
    if jax.process_count() > 1:
        sizes = multihost_utils.broadcast_one_to_all(sizes)
    return tuple(int(n) for n in sizes)


def _read(path: Path) -> tuple[int, ...] | None:
    """The cached split, or None when absent or unreadable (it is measured again)."""
    try:
        return tuple(int(n) for n in json.loads(path.read_text())["sizes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
