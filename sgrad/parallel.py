"""Execution across devices. `parallel=data`: the whole network on every device, the batch split
over them and gradients averaged (jax.shard_map with pmean), in every mode."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_data_parallel_runner(chunk: Callable, devices: Sequence[jax.Device]) -> Callable:
    """jit(shard_map(chunk)): state and data replicated, each step's batch indices split over devices."""
    mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)
    specs = (P(), P(), P(), P(None, DATA_AXIS), P())
    sharded = jax.jit(jax.shard_map(chunk, mesh=mesh, in_specs=specs, out_specs=(P(), P()), check_vma=False),
                      donate_argnums=0)
    placements = [NamedSharding(mesh, spec) for spec in specs]

    def run(*args):
        # A no-op for arguments already placed (the state after the first chunk, the data).
        return sharded(*(jax.device_put(a, s) for a, s in zip(args, placements)))

    return run
