"""Execution across devices: `parallel=none` (one device), `data` (the whole network on every device,
the batch split over them and gradients averaged with jax.shard_map + pmean, in every mode) and
`pipeline` (module i on device i, see sgrad/devices/pipeline.py)."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgrad.devices.chunk import ChunkRunner, chunk_fn, make_chunk_runner, placed, preprocess, zero_sums_fn
from sgrad.devices import conv_library
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import DATA_AXIS, make_pipeline_runner
from sgrad.core.step import TrainState, UpdateRule, make_train_step

def make_data_parallel_runner(net, tx, rule: UpdateRule, mean, std, devices: Sequence[jax.Device]) -> ChunkRunner:
    """jit(shard_map(chunk)): state, running sums and data replicated, each step's batch indices split over
    devices."""
    chunk = chunk_fn(make_train_step(net, tx, rule, axis_name=DATA_AXIS), mean, std)
    mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)
    specs = (P(), P(), P(), P(), P(None, DATA_AXIS), P(), P(), P(), P())
    sharded = conv_library.jit(jax.shard_map(chunk, mesh=mesh, in_specs=specs, out_specs=(P(), P(), P()),
                                             check_vma=False), donate_argnums=0)
    run = placed(sharded, [NamedSharding(mesh, spec) for spec in specs])
    # The metrics' shapes are those of the step on one device (its pmean leaves them as they are).
    return ChunkRunner(run, zero_sums_fn(make_train_step(net, tx, rule), mean, std))


def make_runner(parallel: str, net, tx, state: TrainState, rule: UpdateRule,
                input_shape: Sequence[int], batch: int, mean, std,
                devices: Sequence[jax.Device] | None = None, replicas: int = 1, sg_share: float = 0.0,
                per_device: int = 1, first_share: float = 0.0) -> tuple[ChunkRunner, Any, Callable]:
    """(runner, state in the runner's layout, view: that layout -> a plain TrainState for eval and probes).

    `replicas`, `sg_share`, `per_device`, `first_share`: with parallel=pipeline, copies of the pipeline over the
    batch, the share of each SG model's regression done on the device above, consecutive modules per device, and
    the share of each minibatch on which device 1 trains a copy of module 0 (sgrad/devices/pipeline.py).
    """
    devices = list(devices or jax.devices())
    if parallel == "pipeline":
        pipe, pstate = build_pipeline(net, tx, state, input_shape, batch, rule, replicas, sg_share, per_device,
                                      first_share)
        run = make_pipeline_runner(pipe, partial(preprocess, mean=mean, std=std), devices)
        return run, pstate, partial(to_train_state, pipe)
    if parallel == "data":
        if batch % len(devices):
            raise ValueError(f"parallel=data: trainer.batch_size={batch} must be divisible by the "
                             f"{len(devices)} devices")
        return make_data_parallel_runner(net, tx, rule, mean, std, devices), state, _same
    if parallel != "none":
        raise ValueError(f"parallel={parallel!r}: allowed values are none, data, pipeline")
    return (make_chunk_runner(make_train_step(net, tx, rule), mean, std),
            state, _same)


def _same(state):
    return state
